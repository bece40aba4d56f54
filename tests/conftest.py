"""Test setup: 8 fake CPU devices, set before jax is imported anywhere.

Sharding code is exercised for real on a (data, fsdp, tensor) mesh of these devices.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

assert jax.device_count() == 8, f"tests expect 8 CPU devices, got {jax.devices()}"
