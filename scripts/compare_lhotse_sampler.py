"""One-off comparison: padding of lhotse's own DynamicBucketingSampler vs our 1D/2D buckets on
the same synthetic durations and tokens (benchmarks/bucketing_padding.py's corpus), at the same
max_duration of padded seconds per batch.

lhotse is in the ``bench`` extra (``pip install -e '.[bench]'``; it needs torch). It also runs
from a separate venv with only lhotse and numpy:

    PYTHONPATH=. python scripts/compare_lhotse_sampler.py

The lhotse side is ``benchmarks.bucketing_padding.lhotse_rows``; ``reports/canary.py`` runs the
same comparison on the synthetic_speech corpus. Prints JSON lines.
"""
import json

import lhotse
import numpy as np

from benchmarks.bucketing_padding import lhotse_rows, run, synthetic_corpus

N, MAX_DURATION, SEED, NUM_BUCKETS = 50_000, 600.0, 0, 30


def main():
  d, t = synthetic_corpus(N, SEED)
  rows = lhotse_rows(d, t, MAX_DURATION, NUM_BUCKETS, SEED)
  rows += run(N, MAX_DURATION, SEED)
  print(json.dumps({"lhotse_version": lhotse.__version__, "num_examples": N,
                    "max_duration": MAX_DURATION, "seed": SEED, "num_buckets": NUM_BUCKETS}))
  for r in rows:
    print(json.dumps({k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v)
                      for k, v in r.items() if k != "lhotse_version"}))


if __name__ == "__main__":
  main()
