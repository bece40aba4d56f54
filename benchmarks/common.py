"""Timing shared by the benchmarks: compile, warm up, then the median of timed calls."""
from __future__ import annotations

import statistics
import time

import jax


def median_time(fn, *args, iters: int) -> float:
  """Seconds per call: median of ``iters`` calls after one compile and one warm-up call."""
  jax.block_until_ready(fn(*args))  # compile
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)
