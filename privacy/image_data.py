"""Digits for the image audit: scikit-learn's handwritten digits upsampled to 16x16, in three
disjoint parts (the fixed split of :mod:`data.digits`, so no image is in two parts):

* ``prior``: the GAN prior's training images (:mod:`privacy.prior`; the split ``train``);
* ``victim``: the victim classifier's training images (``validation``);
* ``private``: the clients' private batches that the attacks try to reconstruct (``test``).

``classes`` keeps only those digits (the OOD case trains the prior on 0-4 and attacks 5-9).
"""
from __future__ import annotations

import jax
import numpy as np

from data import digits

PARTS = {"prior": "train", "victim": "validation", "private": "test"}
IMAGE_SIZE = 16


def load(part: str, classes=None) -> dict:
  """``{"images": float32 [N, 16, 16, 1] in [0, 1], "labels": int32 [N]}`` of ``part``."""
  if part not in PARTS:
    raise ValueError(f"digits part {part!r} is unknown; available: {sorted(PARTS)}.")
  images, labels = digits.split_arrays(PARTS[part])
  if classes is not None:
    classes = sorted({int(c) for c in classes})
    if not classes or min(classes) < 0 or max(classes) > 9:
      raise ValueError(f"classes must be digits 0-9, got {classes}.")
    keep = np.isin(labels, classes)
    images, labels = images[keep], labels[keep]
  up = jax.image.resize(images, (len(images), IMAGE_SIZE, IMAGE_SIZE, 1), "bilinear")
  return {"images": np.clip(np.asarray(up, np.float32), 0, 1), "labels": labels.astype(np.int32)}


def distinct_label_batch(data: dict, batch_size: int, *, seed: int) -> dict:
  """``batch_size`` private examples with distinct labels (the setting of label inference from
  the last layer, iDLG / GradInversion), chosen with ``seed``."""
  classes = np.unique(data["labels"])
  if batch_size > len(classes):
    raise ValueError(f"batch_size={batch_size} needs that many distinct labels; this data has "
                     f"{len(classes)} ({classes.tolist()}).")
  rng = np.random.default_rng(seed)
  picked = rng.choice(classes, batch_size, replace=False)
  idx = [rng.choice(np.flatnonzero(data["labels"] == c)) for c in picked]
  return {k: v[idx] for k, v in data.items()}
