"""The largest batch that fits, found by compiling: no out-of-memory trials on a device.

A compiled step's peak memory per device (``memory_analysis()``: arguments + outputs +
temporaries - donated buffers) grows with the batch, so the largest batch ``b`` with
``bytes(b) <= budget`` is found by bisection over compiles (``log2(hi - lo)`` of them). On a
real-target compile (core/targets.py) this is the chip's real buffer plan; XLA:TPU even
refuses to compile a program over HBM (``RESOURCE_EXHAUSTED``), which counts as "does not fit".
NeMo's OOMptimizer finds the same bound by running steps on a GPU until one runs out of memory;
here the compiler answers, on any machine.

    from core.fit import fit_batch_size
    result = fit_batch_size(lambda b: jax.jit(step).lower(*specs(b)).compile(),
                            lo=8, hi=1024, budget=0.9 * hbm_bytes, multiple=8)
    result["batch"], result["bytes"], result["next_batch"], result["next_bytes"]

``build_step(b)`` returns a compiled executable (or directly its bytes per device, an int);
``multiple``: batches tried are multiples of it (the data-parallel size). The search assumes
memory does not decrease with the batch, and it reports the first candidate above the answer
(``next_batch``) with its bytes, or the compiler's error, so the bound can be checked.
"""
from __future__ import annotations

from typing import Any, Callable


def step_bytes(compiled) -> int:
  """Peak bytes per device of a compiled executable (what must fit in HBM)."""
  if isinstance(compiled, int):
    return compiled
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def fit_batch_size(build_step: Callable[[int], Any], lo: int, hi: int, budget: float, *,
                   multiple: int = 1, on_trial: Callable[[int, int | None], None] | None = None
                   ) -> dict:
  """The largest batch in ``[lo, hi]`` (a multiple of ``multiple``) whose step fits ``budget``
  bytes per device.

  Returns ``{"batch", "bytes", "next_batch", "next_bytes", "next_error", "trials"}``:
  ``next_batch`` is the smallest candidate above ``batch`` that was tried and does not fit
  (None when ``hi`` fits); ``next_bytes`` its bytes (None when the compiler refused it with an
  out-of-memory error, then in ``next_error``); ``trials`` every ``(batch, bytes or None)``.
  Raises ValueError when ``lo`` itself does not fit or the bounds are not multiples.
  """
  if multiple < 1 or lo < 1 or hi < lo or lo % multiple or hi % multiple:
    raise ValueError(f"fit_batch_size needs 1 <= lo <= hi, both multiples of multiple="
                     f"{multiple}; got lo={lo}, hi={hi}.")
  trials: list[tuple[int, int | None]] = []
  errors: dict[int, str] = {}

  def fits(b: int) -> bool:
    try:
      used = step_bytes(build_step(b))
    except Exception as e:  # pylint: disable=broad-except
      if not _is_oom(e):
        raise
      used = None
      errors[b] = str(e).splitlines()[0][:300]
    trials.append((b, used))
    if on_trial:
      on_trial(b, used)
    return used is not None and used <= budget

  if not fits(lo):
    used = trials[-1][1]
    raise ValueError(f"even the smallest batch {lo} does not fit the budget of "
                     f"{budget / 1e9:.2f} GB per device (it needs "
                     f"{'more than HBM' if used is None else f'{used / 1e9:.2f} GB'}); "
                     "shard more (mesh), use microbatches or remat, or raise the budget.")
  good, bad = lo // multiple, None  # in units of `multiple`
  if fits(hi):
    good = hi // multiple
  else:
    bad = hi // multiple
    while bad - good > 1:
      mid = (good + bad) // 2
      if fits(mid * multiple):
        good = mid
      else:
        bad = mid
  by_batch = dict(trials)
  batch = good * multiple
  nxt = None if bad is None else bad * multiple
  return {"batch": batch, "bytes": by_batch[batch], "next_batch": nxt,
          "next_bytes": None if nxt is None else by_batch[nxt],
          "next_error": errors.get(nxt), "trials": trials}
