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
