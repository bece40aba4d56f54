"""One-off check: data.bucketing.estimate_duration_bins / assign_buckets against lhotse's own
estimate_duration_buckets / TimeConstraint.select_bucket on the same inputs.

lhotse is not a dependency (it needs torch); run this from a separate venv that has lhotse and
numpy, with the repository root on the path:

    python3 -m venv /tmp/lhotse-venv && /tmp/lhotse-venv/bin/pip install lhotse
    PYTHONPATH=. /tmp/lhotse-venv/bin/python scripts/compare_lhotse_bins.py

Prints one JSON line per input family and a summary; exit status 1 on any mismatch.
"""
import json
import sys

import numpy as np
import lhotse
from lhotse.dataset.sampling.base import TimeConstraint
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from lhotse.testing.dummies import dummy_cut

from data import bucketing


def main():
  rng = np.random.default_rng(0)
  families = {
      "ties_1x5_2x5": [np.array([1.0] * 5 + [2.0] * 5)],
      "lognormal": [np.clip(rng.lognormal(np.log(4.0), 0.7, int(n)), 0.3, 30.0)
                    for n in rng.integers(50, 3000, 20)],
      "rounded_0.1s": [np.round(rng.lognormal(1.0, 0.8, int(n)), 1)
                       for n in rng.integers(10, 2000, 20)],
      "integers_1_3": [rng.integers(1, 4, int(n)).astype(float) for n in rng.integers(5, 500, 20)],
  }
  ok_all, cases = True, 0
  for name, inputs in families.items():
    mismatches = 0
    for i, d in enumerate(inputs):
      for k in sorted({2, 3, 10, 30, min(len(d), 100)}):
        if k > len(d):
          continue
        cuts = [dummy_cut(j, duration=float(x)) for j, x in enumerate(d)]
        theirs = [float(x) for x in estimate_duration_buckets(cuts, k)]
        ours = bucketing.estimate_duration_bins(d, k)
        tc = TimeConstraint(max_duration=1e9)
        their_assign = [tc.select_bucket(theirs, example_len=float(x)) for x in d]
        same = ours == theirs and bucketing.assign_buckets(ours, d).tolist() == their_assign
        mismatches += not same
        cases += 1
    ok_all &= mismatches == 0
    print(json.dumps({"family": name, "inputs": len(inputs), "mismatches": mismatches}))
  print(json.dumps({"lhotse_version": lhotse.__version__, "cases": cases,
                    "all_identical": bool(ok_all)}))
  sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
  main()
