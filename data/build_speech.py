"""Builds (once) the synthetic speech corpus and its tokenizer, and prints their summary.

    python -m data.build_speech                       # the default: 4000 / 200 / 200 utterances
    python -m data.build_speech --num_train=64 --num_eval=8 --data_dir=/tmp/speech

The corpus goes to ``--data_dir`` (default $TFDS_DATA_DIR or ~/tensorflow_datasets) under
``synthetic_speech/<config>/1.0.0``; an existing prepared corpus is reused, never rewritten.
"""
from __future__ import annotations

import json
import time

from absl import flags

from core import cli
from data import speech_synth

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (None: TFDS default).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 4000, "train utterances")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 200, "validation and test utterances (each)")
_SEED = flags.DEFINE_integer("corpus_seed", 0, "seed of the utterance plan")
_VOCAB = flags.DEFINE_integer("tokenizer_vocab", 256, "SentencePiece vocabulary size")
_WORKERS = flags.DEFINE_integer("num_workers", 2, "synthesis processes")


def main(argv) -> int:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; this command takes flags only.")
  start = time.perf_counter()
  builder = speech_synth.load_builder(_DATA_DIR.value, num_train=_NUM_TRAIN.value,
                                      num_eval=_NUM_EVAL.value, seed=_SEED.value,
                                      num_workers=_WORKERS.value)
  summary = speech_synth.describe_corpus(builder)
  summary["tokenizer"] = speech_synth.train_tokenizer(builder, _VOCAB.value)
  summary["seconds_to_build_or_load"] = round(time.perf_counter() - start, 1)
  print(json.dumps(summary, indent=1))
  return 0


if __name__ == "__main__":
  cli.run(main)
