"""Padding fraction of random batching vs 1D vs 2D duration buckets on a long-tailed corpus.

    python -m benchmarks.bucketing_padding           # -> benchmarks/results/bucketing_padding_cpu.json
    python -m benchmarks.bucketing_padding --quick   # 5,000 examples, written to a temp file
    python -m benchmarks.bucketing_padding --corpus speech --max-duration 120
        # the synthetic_speech corpus (data/speech_synth.py, built once if needed): real
        # espeak-ng durations and SentencePiece token counts
        # -> benchmarks/results/bucketing_padding_cpu_speech.json
    python -m benchmarks.bucketing_padding --corpus speech --quick  # a 256-utterance corpus

Synthetic metadata only (no audio): durations log-normal, median 4 s, clipped to [0.3, 30] s
(a long tail like real ASR sets); tokens = round(d x TPS) with TPS ~ N(3, 0.6) per utterance
and 0.5% transcripts at ~25 TPS (the outliers NeMo's TPS filter drops). Padding fraction
= 1 - real / padded, for audio seconds and for tokens, over one epoch, all three methods at the
same ``--max-duration`` budget of padded seconds per batch:

* ``random``: shuffled, greedily packed while (n + 1) x longest <= budget, each batch padded to
  ITS longest example and most tokens (dynamic shapes: a recompile per shape, the most
  favourable accounting for random batching);
* ``1d``: lhotse's duration bins (``estimate_duration_bins``), static shape per bucket
  (bucket max duration, most tokens in the bucket), B_k = floor(budget / dmax_k);
* ``2d``: NeMo-style duration x token bins (``estimate_2d_bins``), static shapes, same B_k rule.

Each bucketed method runs three times, by what happens to each bucket's last partial batch:
``_pad``: padded with empty rows (counted as padding: with static shapes they cost compute);
``_carry`` (the default): moved into the next bucket whose shape holds it, so only buckets with
no such successor pad; ``_drop``: left out of this epoch (``tail_dropped``; a reshuffle picks
other examples next epoch). ``dropped``
counts examples outside every bucket and the TPS outliers (2D only).

Bins are estimated on the same examples they batch (as lhotse's first 10,000 cuts would be).

``--corpus speech``: the durations (samples / 16 kHz) and token counts (bos + SentencePiece
pieces + eos, the ASR batches' ``token_len``) of the train split of ``synthetic_speech``.
"""
from __future__ import annotations

import argparse
import tempfile
import warnings

import numpy as np

from data import bucketing as bk


def synthetic_corpus(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  d = np.clip(rng.lognormal(np.log(4.0), 0.7, n), 0.3, 30.0)
  tps = rng.normal(3.0, 0.6, n)
  hot = rng.random(n) < 0.005
  tps[hot] = 25.0
  return d, np.maximum(0, np.round(d * tps)).astype(np.int64)


def random_batches(d, t, max_duration: float, seed: int):
  order = np.random.default_rng(seed).permutation(d.size)
  batch, longest = [], 0.0
  for i in order:
    if batch and (len(batch) + 1) * max(longest, d[i]) > max_duration:
      yield {"indices": np.array(batch), "max_duration": longest,
             "max_tokens": int(t[batch].max())}
      batch, longest = [], 0.0
    batch.append(i)
    longest = max(longest, d[i])
  if batch:
    yield {"indices": np.array(batch), "max_duration": longest,
           "max_tokens": int(t[batch].max())}


def speech_corpus(num_train: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Train-split durations and token counts of the synthetic speech corpus."""
  # imported here, like benchmarks.common in main(): the lhotse comparison scripts import this
  # module in a venv without TFDS/jax
  from data import speech, speech_synth, tokenizers  # pylint: disable=import-outside-toplevel
  builder = speech_synth.load_builder(data_dir, num_train=num_train)
  meta = speech_synth.read_metadata(builder, "train")
  tok = tokenizers.get_tokenizer("sentencepiece:" + speech_synth.train_tokenizer(builder))
  t = np.asarray([x.size for x in speech.tokenize_transcripts(meta["text"], tok)])
  return meta["duration"], t


def lhotse_rows(d, t, max_duration: float, num_buckets: int = 30, seed: int = 0) -> list[dict]:
  """Padding of lhotse's own ``DynamicBucketingSampler`` (unshuffled and shuffled) on the same
  durations and budget. lhotse knows no tokens: each cut's count is looked up by id. Its batches
  have dynamic shapes, so each is counted as padded to its own longest cut and most tokens (as a
  PyTorch collate would). lhotse estimates its bins from the first 10,000 cuts (its default).
  Needs ``pip install lhotse`` (the ``bench`` extra)."""
  import lhotse  # pylint: disable=import-outside-toplevel
  from lhotse.dataset.sampling.dynamic_bucketing import DynamicBucketingSampler  # pylint: disable=import-outside-toplevel
  from lhotse.testing.dummies import dummy_cut  # pylint: disable=import-outside-toplevel
  warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")  # in memory on purpose
  cuts = lhotse.CutSet.from_cuts(dummy_cut(i, duration=float(x)) for i, x in enumerate(d))
  tokens = {c.id: int(t[i]) for i, c in enumerate(cuts)}
  rows = []
  for shuffle in (False, True):
    sampler = DynamicBucketingSampler(cuts, max_duration=max_duration, num_buckets=num_buckets,
                                      shuffle=shuffle, buffer_size=len(d) + 1, seed=seed,
                                      world_size=1, rank=0)
    batches = [(np.array([c.duration for c in b]), np.array([tokens[c.id] for c in b]))
               for b in sampler]
    real_d, pad_d = sum(x.sum() for x, _ in batches), sum(x.size * x.max() for x, _ in batches)
    real_t, pad_t = sum(y.sum() for _, y in batches), sum(y.size * y.max() for _, y in batches)
    rows.append({"method": f"lhotse_dynamic_bucketing_shuffle={shuffle}",
                 "duration": float(1 - real_d / pad_d), "tokens": float(1 - real_t / pad_t),
                 "batches": len(batches),
                 "mean_batch_size": sum(x.size for x, _ in batches) / len(batches),
                 "max_padded_seconds": float(max(x.size * x.max() for x, _ in batches)),
                 "lhotse_version": lhotse.__version__})
  return rows


def run(num_examples: int, max_duration: float, seed: int, num_buckets: int = 30,
        num_subbuckets: int = 2, corpus=None) -> list[dict]:
  d, t = synthetic_corpus(num_examples, seed) if corpus is None else corpus
  rows = [{"method": "random", **bk.padding_fractions(random_batches(d, t, max_duration, seed),
                                                      d, t), "dropped": 0}]
  grids = {"1d": bk.estimate_1d_grid(d, t, num_buckets),
           "2d": bk.estimate_2d_bins(d, t, num_buckets, num_subbuckets)}
  for name, grid in grids.items():
    for remainder in ("pad", "carry", "drop"):
      it = bk.BucketedBatches(d, t, grid, max_duration=max_duration, seed=seed, num_epochs=1,
                              remainder=remainder)
      batches = list(it)
      used = sum(int(b["mask"].sum()) for b in batches)
      rows.append({"method": f"{name}_{remainder}",
                   **bk.padding_fractions(batches, d, t), "dropped": sum(it.dropped.values()),
                   "tail_dropped": d.size - sum(it.dropped.values()) - used,
                   "num_buckets": grid.num_buckets})
  return rows


def main(argv=None):
  # imported here: it pulls in jax; scripts/compare_lhotse_sampler.py imports this module from
  # a venv with lhotse and without jax
  from benchmarks.common import add_quick_flag, result_path, write_result  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(p)
  p.add_argument("--num-examples", type=int, default=50_000)
  p.add_argument("--max-duration", type=float, default=600.0,
                 help="padded audio seconds per batch, all methods")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--corpus", choices=("synthetic", "speech"), default="synthetic",
                 help="synthetic: log-normal metadata; speech: the synthetic_speech corpus")
  p.add_argument("--num-train", type=int, default=4000,
                 help="--corpus speech: train utterances of the corpus (built if needed)")
  p.add_argument("--num-buckets", type=int, default=30)
  p.add_argument("--data-dir", default=None,
                 help="--corpus speech: TFDS data_dir (default: $TFDS_DATA_DIR or "
                 "~/tensorflow_datasets; --quick: a temporary directory)")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  corpus = None
  if args.corpus == "speech":
    data_dir = (tempfile.mkdtemp(prefix="effijax-speech-") if args.quick and not args.data_dir
                else args.data_dir)
    corpus = speech_corpus(256 if args.quick else args.num_train, data_dir)
  n = len(corpus[0]) if corpus else 5_000 if args.quick else args.num_examples
  tiny = args.quick and corpus is not None  # 256 utterances: fewer buckets, smaller batches
  buckets = min(args.num_buckets, 8) if tiny else args.num_buckets
  max_duration = min(args.max_duration, 60.0) if tiny else args.max_duration
  rows = run(n, max_duration, args.seed, num_buckets=buckets, corpus=corpus)
  for r in rows:
    print(f"{r['method']:>12}: padding {100 * r['duration']:5.1f}% of audio seconds, "
          f"{100 * r['tokens']:5.1f}% of tokens; {r['batches']} batches, mean batch "
          f"{r['mean_batch_size']:.1f}, dropped {r['dropped']} + tail {r.get('tail_dropped', 0)}")
  tag = "speech" if corpus else None
  out = args.out or result_path("bucketing_padding", tag=tag, quick=args.quick)
  path = write_result("bucketing_padding", out=out, tag=tag,
                      config={"num_examples": n, "max_duration": max_duration,
                              "seed": args.seed, "num_buckets": buckets, "num_subbuckets": 2,
                              "corpus": args.corpus},
                      results=rows)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
