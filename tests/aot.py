"""Compile-only target devices for tests: fail (never skip) when a compiler extra is missing.

CI installs the ``[aot-gpu]`` / ``[aot-tpu]`` extras (scripts/test.sh); if pip could not, the
reason is in ``.venv/aot_extras_install.log`` and every AOT test fails showing it.
"""
import functools
import pathlib

import jax
import pytest
from jax.sharding import SingleDeviceSharding

from configs import targets
from core import targets as core_targets

_LOG = pathlib.Path(__file__).resolve().parents[1] / ".venv" / "aot_extras_install.log"


@functools.cache
def devices(name: str) -> list:
  """Compile-only devices of target ``name``, or ``pytest.fail`` with the install reason."""
  try:
    return core_targets.compile_devices(targets.get(name))
  except core_targets.MissingExtraError as e:
    why = _LOG.read_text()[-2000:] if _LOG.exists() else "(no install log)"
    pytest.fail(f"{e}\npip's output when scripts/test.sh installed the extras:\n{why}")


def on(device, tree):
  """``tree`` of arrays / ShapeDtypeStructs as ShapeDtypeStructs placed on ``device``."""
  sharding = SingleDeviceSharding(device)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
