"""What every kernel file shares: the implementation names, one dispatch policy, block sizes.

Each ``kernels_pallas/<name>.py`` holds, side by side (jax ``pallas/ops`` style): a pure-jnp
``reference``, a Pallas GPU (Triton) kernel, a Pallas TPU (Mosaic) kernel, frozen
``BlockSizes`` dataclasses with one table entry per ``(impl, regime)``, and a public function
taking ``impl=`` and ``block_sizes=``.

**Dispatch policy** (:func:`resolve_impl`), the same for every kernel:

* ``impl="auto"``: the current backend's Pallas kernel (``gpu`` -> ``pallas_gpu``,
  ``tpu`` -> ``pallas_tpu``) when that kernel supports the shapes; otherwise the reference,
  with one warning per kernel and reason (so a slow fallback is visible, never silent).
  On CPU: the reference.
* an explicit impl is used as it is; shapes it cannot run raise a ValueError that says why
  and what to use instead. (``interpret=True`` runs an explicit Pallas impl on CPU: tests.)

**Compiling for another target** (core/targets.py): the process's backend stays the CPU, so
``auto`` would pick the reference; ``with target_backend("tpu"):`` around the trace
(``jax.jit(f).lower(...)``) makes ``auto`` choose what that target would run.

**On a mesh** XLA cannot partition a Pallas call; :mod:`kernels_pallas.sharded` runs each
kernel per shard in ``shard_map`` under the same policy.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import jax
from absl import logging

IMPLS = ("auto", "reference", "pallas_gpu", "pallas_tpu")
BACKEND_IMPL = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "tpu": "pallas_tpu"}
REGIMES = ("decode", "prefill")

_warned: set[tuple[str, str]] = set()
_TARGET_BACKEND: contextvars.ContextVar = contextvars.ContextVar("effijax_kernel_backend",
                                                                 default=None)


@contextlib.contextmanager
def target_backend(platform: str | None, *, interpret: bool = False):
  """Within this context ``impl="auto"`` dispatches as on ``platform`` ("cuda", "gpu", "tpu";
  None: the real backend), for tracing a function that is compiled for that target.

  ``interpret=True`` also runs every Pallas kernel in interpret mode, so a whole model's
  GPU/TPU path (kernels, their shard_map wrappers) runs on the CPU: tests.
  """
  token = _TARGET_BACKEND.set((platform, interpret))
  try:
    yield
  finally:
    _TARGET_BACKEND.reset(token)


def interpret_kernels() -> bool:
  """Whether :func:`target_backend` asked for interpret mode (kernels OR it with their own
  ``interpret`` argument)."""
  active = _TARGET_BACKEND.get()
  return bool(active and active[1])


def backend() -> str:
  """The backend ``auto`` dispatches for: :func:`target_backend`'s, else jax's default."""
  active = _TARGET_BACKEND.get()
  return (active and active[0]) or jax.default_backend()


def resolve_impl(impl: str, *, kernel: str, why_not: Callable[[str], str | None]) -> str:
  """The implementation to run (see the module docstring).

  ``why_not(impl)`` returns None when ``impl`` can run the call's shapes, else the reason.
  """
  if impl not in IMPLS:
    raise ValueError(f"{kernel}: impl={impl!r} is not one of {IMPLS}.")
  if impl == "auto":
    candidate = BACKEND_IMPL.get(backend())
    if candidate is None:
      return "reference"
    reason = why_not(candidate)
    if reason is None:
      return candidate
    if (kernel, reason) not in _warned:
      _warned.add((kernel, reason))
      logging.warning("%s: using the jnp reference instead of %s: %s", kernel, candidate,
                      reason)
    return "reference"
  if impl != "reference":
    reason = why_not(impl)
    if reason is not None:
      raise ValueError(f"{kernel}: impl={impl!r} cannot run these shapes: {reason}")
  return impl


def check_block_sizes(block_sizes, expected_type, kernel: str):
  """``block_sizes`` must be None or an instance of the impl's BlockSizes dataclass."""
  if block_sizes is None or isinstance(block_sizes, expected_type):
    return block_sizes
  raise ValueError(
      f"{kernel}: block_sizes must be a {expected_type.__name__} (e.g. dataclasses.replace("
      f"BLOCK_SIZES[(impl, regime)], ...)), got {type(block_sizes).__name__}.")


def require_pow2(cls_name: str, name: str, value: int, minimum: int) -> None:
  if not isinstance(value, int) or value < minimum or value & (value - 1):
    raise ValueError(f"{cls_name}.{name}={value!r} must be a power of two >= {minimum}.")


def require_multiple(cls_name: str, name: str, value: int, multiple: int,
                     why: str = "") -> None:
  if not isinstance(value, int) or value <= 0 or value % multiple:
    raise ValueError(f"{cls_name}.{name}={value!r} must be a positive multiple of "
                     f"{multiple}{' (' + why + ')' if why else ''}.")

