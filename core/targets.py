"""Compile-only devices for accelerators we do not have (deviceless ahead-of-time compilation).

XLA's GPU and TPU compilers run on a CPU host: ``jax.experimental.topologies.get_topology_desc``
describes the target's devices, and ``jax.jit(f).lower(*ShapeDtypeStructs on a Mesh of those
devices).compile()`` runs the full XLA:GPU (Triton included) or XLA:TPU (Mosaic included)
pipeline. The result cannot run, but ``memory_analysis()`` gives the real per-device buffer
sizes, ``cost_analysis()`` XLA's FLOP count, the HLO shows the collectives, and a Pallas block
that overflows shared memory / VMEM fails here instead of on a rented machine. This is what
MaxText's ``train_compile.py`` and axlearn's AOT check do before a pod run.

The named targets (chip facts, topology names) are data in :mod:`configs.targets`; this module
turns one into devices:

    from configs import targets
    from core.targets import compile_devices
    devices = compile_devices(targets.get("v5e-8"))      # 8 compile-only TPU v5e devices
    mesh = jax.make_mesh((8,), ("x",), devices=devices)

The compilers come from pip extras installed next to the CPU jaxlib (the process keeps
``JAX_PLATFORMS=cpu`` as its default backend): ``pip install -e '.[aot-gpu]'`` (the CUDA PJRT
plugin + ``ptxas`` from ``nvidia-cuda-nvcc``; no CUDA runtime libraries are needed to compile)
and ``pip install -e '.[aot-tpu]'`` (``libtpu``).
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
from typing import Protocol

import jax
from jax.experimental import topologies

# What each platform's compiler needs, by distribution name; checked before jax tries to load
# it, so a missing extra is one clear line instead of a plugin traceback.
_NEEDS = {
    "cuda": ("aot-gpu", ("jax-cuda13-plugin", "jax-cuda13-pjrt", "nvidia-cuda-nvcc")),
    "tpu": ("aot-tpu", ("libtpu",)),
}
# Distributions whose version must equal jax's (the PJRT plugin ABI).
_PINNED_TO_JAX = ("jax-cuda13-plugin", "jax-cuda13-pjrt")


class MissingExtraError(ValueError):
  """The compiler for a target is not installed; the message names the pip extra."""


class TargetLike(Protocol):
  name: str
  platform: str
  topology: str
  num_devices: int
  extra: str

  def target_config_text(self) -> str | None: ...


def check_extra(platform: str) -> None:
  """Raises :class:`MissingExtraError` naming the pip extra when ``platform``'s compiler is
  not installed (or is a plugin built for another jax version)."""
  if platform not in _NEEDS:
    raise ValueError(f"platform {platform!r} has no AOT compiler here; use one of "
                     f"{sorted(_NEEDS)}.")
  extra, dists = _NEEDS[platform]
  fix = f"pip install -e '.[{extra}]'"
  for dist in dists:
    try:
      version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      raise MissingExtraError(f"compiling for {platform} needs {dist}, which is not installed; "
                              f"run {fix} (from the effijax checkout).") from None
    if dist in _PINNED_TO_JAX and version != jax.__version__:
      raise MissingExtraError(f"{dist} {version} does not match jax {jax.__version__}; run "
                              f"pip install 'jax[cuda13-local]=={jax.__version__}' "
                              f"(or {fix}).")


@functools.cache
def _devices(platform: str, topology: str, target_config: str | None) -> tuple:
  if platform == "cuda":
    # The plugin checks the CUDA runtime/cuDNN versions of a *local* GPU; there is none.
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    desc = topologies.get_topology_desc(platform="cuda", topology_name="",
                                        target_config=target_config, topology=topology)
  else:
    # libtpu takes /tmp/libtpu_lockfile so that two processes do not drive one TPU; compiling
    # drives none, and a second process (a test's subprocess, a parallel plan) must not fail.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    desc = topologies.get_topology_desc(topology_name=topology, platform=platform)
  return tuple(desc.devices)


def compile_devices(target: TargetLike) -> list:
  """The ``target.num_devices`` compile-only devices of ``target`` (a
  :class:`configs.targets.Target`), for ``jax.jit(...).lower(...).compile()`` only.

  Raises :class:`MissingExtraError` when the target's compiler extra is not installed.
  """
  check_extra(target.platform)
  devices = list(_devices(target.platform, target.topology, target.target_config_text()))
  if len(devices) != target.num_devices:  # the data in configs/targets disagrees with XLA
    raise ValueError(f"target {target.name}: topology {target.topology!r} has {len(devices)} "
                     f"devices, the target says {target.num_devices}; fix configs/targets.")
  return devices


def memory_stats(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled executable: arguments, outputs, temporaries, aliased
  (donated) buffers, code, and ``total = arguments + outputs + temporaries - aliased``."""
  mem = compiled.memory_analysis()
  out = {}
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    out[field] = int(getattr(mem, field, 0) or 0)
  out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                        + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out
