"""Batch PI mean bound: dynamic program vs brute-force enumeration, n up to 10,000, m up to 50.

    python -m benchmarks.conformal_dp            # -> benchmarks/results/conformal_dp_cpu.json
    python -m benchmarks.conformal_dp --quick    # small grid, printed and written to a temp file

Three timings per (n, m, score distribution), each a fresh computation (the rank-quantile
cache cleared):

* ``count_s``: the exact (1 - alpha) quantile of the rank-sum ordering (Gaussian-binomial
  counts in Python integers); it depends on (n, m, alpha) only, so a caller pays it once;
* ``dp_s``: ``batch_quantile(..., method="dp")``, the count plus the exact pruned knapsack;
* ``relaxed_s``: the count plus the O(n) concave-envelope bound (valid, wider by ``relaxed_gap``);
* ``enumerate_s``: all C(n+m, m) rank configurations, where that is at most 2e6.

Score distributions (calibration scores, score bound ``b`` appended as S_(n+1)): ``uniform``
(b = 1), ``abs_normal`` (|N(0,1)|, b = 10: a far bound), ``beta25`` (Beta(2,5), b = 1).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from benchmarks.common import add_quick_flag, result_path, write_result
from conformal import batch

ALPHA = 0.1
DISTS = {"uniform": (lambda rng, n: rng.uniform(size=n), 1.0),
         "abs_normal": (lambda rng, n: np.abs(rng.normal(size=n)), 10.0),
         "beta25": (lambda rng, n: rng.beta(2, 5, size=n), 1.0)}


def _timed(fn):
  batch._rank_quantile.cache_clear()
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def run(grid, dists, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for n, m in grid:
    for name in dists:
      make, bound = DISTS[name]
      s = make(rng, n)
      row = {"n": n, "m": m, "dist": name, "score_bound": bound, "configs": math.comb(n + m, m)}
      _, row["count_s"] = _timed(lambda: batch.rank_quantile(n, m, ALPHA, bounded=True))
      dp, row["dp_s"] = _timed(lambda: batch.batch_quantile(s, m, ALPHA, score_bound=bound,
                                                             method="dp"))
      rel, row["relaxed_s"] = _timed(lambda: batch.batch_quantile(s, m, ALPHA, score_bound=bound,
                                                                   method="relaxed"))
      row["bound_dp"], row["relaxed_gap"] = dp, rel - dp
      if row["configs"] <= batch.MAX_ENUMERATE:
        en, row["enumerate_s"] = _timed(lambda: batch.batch_quantile(
            s, m, ALPHA, score_bound=bound, method="enumerate"))
        assert en == dp or abs(en - dp) <= 1e-12 * max(1.0, abs(dp)), (n, m, name, en, dp)
      else:
        row["enumerate_s"] = None
      rows.append(row)
      print(f"n={n:>6} m={m:>3} {name:>10}: count {row['count_s']:.3f}s  dp {row['dp_s']:.3f}s  "
            f"relaxed {row['relaxed_s']:.3f}s  enumerate "
            f"{'-' if row['enumerate_s'] is None else format(row['enumerate_s'], '.3f') + 's'}  "
            f"gap {row['relaxed_gap']:.2e}", flush=True)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(p)
  args = p.parse_args(argv)
  if args.quick:
    grid = [(10, 2), (20, 4), (200, 5)]
  else:
    grid = [(10, 2), (10, 4), (20, 4), (50, 3), (100, 3), (1000, 5), (1000, 10), (1000, 50),
            (10000, 10), (10000, 50)]
  rows = run(grid, list(DISTS))
  out = result_path("conformal_dp", quick=args.quick)
  path = write_result("conformal_dp", config={"alpha": ALPHA, "grid": grid, "dists": list(DISTS),
                                              "max_enumerate": batch.MAX_ENUMERATE},
                      results=rows, out=out)
  print("wrote", path)


if __name__ == "__main__":
  main()
