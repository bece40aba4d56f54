"""Calibration data for post-training quantization: ``N`` packed sequences of length ``L``.

The sequences come from :mod:`data.pipeline` (the bundled corpus or any prepared TFDS text
dataset), packed exactly as in training (concat-then-split rows, ``segment_ids`` keep the
documents apart in attention). GPTQ's reference draws 128 random 2048-token windows of C4
(``IST-DASLab/gptq:datautils.py``); AdaDim draws 512-token blocks of pile-val
(``adadim/utils/calib_data.py``). We draw ``N`` rows from a seeded shuffle of the chosen split,
repeating the split if it holds fewer than ``N * L`` tokens (so every row is full).
"""
from __future__ import annotations

import numpy as np

from data import pipeline


def data_config(tokenizer: str, *, name: str | None = None, data_dir: str | None = None):
  """The ``data`` config section for a dataset name and the export's tokenizer spec."""
  cfg = pipeline.default_config()
  cfg.tokenizer = tokenizer
  if name is not None:
    cfg.name = name
  cfg.data_dir = data_dir
  return cfg


def calibration_batch(data_cfg, *, num_samples: int, seq_len: int, split: str = "train",
                      seed: int = 0) -> dict[str, np.ndarray]:
  """``{tokens, segment_ids, positions}``: int32 ``[num_samples, seq_len]``, every row full.

  Raises a ValueError when the split holds no documents or no tokens.
  """
  for flag, value in (("num_samples", num_samples), ("seq_len", seq_len)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"calibration {flag}={value!r} must be a positive int.")
  try:
    it = pipeline.make_lm_iterator(data_cfg, split=split, seq_len=int(seq_len),
                                   batch_size=int(num_samples), seed=int(seed), shuffle=True,
                                   num_epochs=None)
    batch = next(it)
  except StopIteration:
    batch = None
  except ValueError as e:
    raise ValueError(f"calibration data: split {split!r} of dataset {data_cfg.name!r} cannot "
                     f"be used: {e}") from e
  if batch is None or not np.any(batch["segment_ids"]):
    raise ValueError(f"calibration data: split {split!r} of dataset {data_cfg.name!r} is "
                     "empty (no tokens); pick another split or dataset.")
  full = np.all(batch["segment_ids"] != 0, axis=1)  # repeating the split keeps rows full
  return {k: np.asarray(v[full], np.int32) for k, v in batch.items()}
