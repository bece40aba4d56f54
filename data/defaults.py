"""The ``data`` config sections' defaults: plain values, no TFDS import (config files load
them in milliseconds)."""
from __future__ import annotations

import ml_collections

STDLIB_NAME = "python_stdlib"  # the bundled corpus (data/stdlib_corpus.py)
STDLIB_VALIDATION_PERMILLE = 30


def text_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a text (language-model) config, with its defaults."""
  return ml_collections.ConfigDict({
      "name": STDLIB_NAME,          # or any prepared TFDS text dataset ("lm1b", ...)
      "text_key": "text",
      "tokenizer": "byte",          # "byte" | "sentencepiece:PATH" | "hf:PATH"
      "data_dir": None,             # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      "train_split": "train",
      "eval_split": "validation",
      "max_files": None,            # python_stdlib only: deterministic subset for quick runs
      "validation_permille": STDLIB_VALIDATION_PERMILLE,  # python_stdlib only
  })


def digits_config() -> ml_collections.ConfigDict:
  """The ``data`` section of the digits classification config (data/digits.py)."""
  return ml_collections.ConfigDict({
      "name": "digits",
      "train_split": "train",
      "eval_split": "validation",
  })


SPEECH_NAME = "synthetic_speech"  # the locally synthesized ASR corpus (data/speech_synth.py)


def speech_config() -> ml_collections.ConfigDict:
  """The ``data`` section of an ASR config (data/speech_synth.py, data/speech.py)."""
  return ml_collections.ConfigDict({
      "name": SPEECH_NAME,
      "data_dir": None,             # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      "num_train": 4000,            # utterances in train (validation/test: num_eval each)
      "num_eval": 200,
      "corpus_seed": 0,
      "max_files": None,            # stdlib files the sentences come from (None: all)
      "tokenizer_vocab": 256,       # SentencePiece unigram fit on the train transcripts
      "train_split": "train",
      "eval_split": "validation",
      "num_buckets": 8,             # 2D bins: duration groups x token sub-buckets
      "num_subbuckets": 2,
      "bucket_batch_sizes": None,   # list / JSON / path (the OOMptimizer's); or max_duration
      "max_duration": 120.0,        # seconds of padded audio per batch (when no batch sizes)
      "strict": False,              # True: an utterance longer than every bucket raises
  })
