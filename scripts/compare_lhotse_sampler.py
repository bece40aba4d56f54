"""One-off comparison: padding of lhotse's own DynamicBucketingSampler vs our 1D/2D buckets on
the same synthetic durations and tokens (benchmarks/bucketing_padding.py's corpus), at the same
max_duration of padded seconds per batch.

lhotse is not a dependency (it needs torch); run from a separate venv with lhotse and numpy:

    python3 -m venv /tmp/lhotse-venv && /tmp/lhotse-venv/bin/pip install lhotse
    PYTHONPATH=. /tmp/lhotse-venv/bin/python scripts/compare_lhotse_sampler.py

lhotse's batches have dynamic shapes: each is counted as padded to its own longest cut and
most tokens (lhotse does not know tokens; we look them up per cut id), as a PyTorch collate
would pad. Ours are the static shapes of ``benchmarks.bucketing_padding``. Prints JSON lines.
"""
import json

import lhotse
import numpy as np
from lhotse.dataset.sampling.dynamic_bucketing import DynamicBucketingSampler
from lhotse.testing.dummies import dummy_cut

from benchmarks.bucketing_padding import run, synthetic_corpus

N, MAX_DURATION, SEED, NUM_BUCKETS = 50_000, 600.0, 0, 30


def lhotse_rows(d, t):
  cuts = lhotse.CutSet.from_cuts(dummy_cut(i, duration=float(x)) for i, x in enumerate(d))
  tokens = {c.id: int(t[i]) for i, c in enumerate(cuts)}
  rows = []  # lhotse estimates its own bins from the first 10,000 cuts (its default)
  for shuffle in (False, True):
    sampler = DynamicBucketingSampler(cuts, max_duration=MAX_DURATION, num_buckets=NUM_BUCKETS,
                                      shuffle=shuffle, buffer_size=N + 1, seed=SEED,
                                      world_size=1, rank=0)
    batches = []
    for batch in sampler:
      dur = np.array([c.duration for c in batch])
      tok = np.array([tokens[c.id] for c in batch])
      batches.append((dur, tok))
    real_d = sum(b[0].sum() for b in batches)
    pad_d = sum(b[0].size * b[0].max() for b in batches)
    real_t = sum(b[1].sum() for b in batches)
    pad_t = sum(b[1].size * b[1].max() for b in batches)
    rows.append({"method": f"lhotse_dynamic_bucketing_shuffle={shuffle}",
                 "duration": 1 - real_d / pad_d, "tokens": 1 - real_t / pad_t,
                 "batches": len(batches),
                 "mean_batch_size": sum(b[0].size for b in batches) / len(batches),
                 "max_padded_seconds": max(b[0].size * b[0].max() for b in batches)})
  return rows


def main():
  d, t = synthetic_corpus(N, SEED)
  rows = lhotse_rows(d, t)
  rows += run(N, MAX_DURATION, SEED)
  print(json.dumps({"lhotse_version": lhotse.__version__, "num_examples": N,
                    "max_duration": MAX_DURATION, "seed": SEED, "num_buckets": NUM_BUCKETS}))
  for r in rows:
    print(json.dumps({k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v)
                      for k, v in r.items()}))


if __name__ == "__main__":
  main()
