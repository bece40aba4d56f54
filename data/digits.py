"""scikit-learn's handwritten digits (1,797 8x8 images, bundled with the package: nothing is
downloaded) as a resumable Grain pipeline of image-classification batches.

Splits are fixed by a seeded permutation of the 1,797 images: ``train`` 70%, ``validation``
15%, ``test`` 15%. A batch is ``{"images": float32 [B, 8, 8, 1] in [0, 1], "labels": int32
[B]}``; the last batch of an evaluation pass is filled with padding rows whose label is -1
(never counted). ``make_iterator(...).get_state()`` / ``set_state`` resume exactly, like the
text pipeline's.
"""
from __future__ import annotations

import functools

import grain
import numpy as np

SPLITS = {"train": (0.0, 0.7), "validation": (0.7, 0.85), "test": (0.85, 1.0)}
_SPLIT_SEED = 1797


@functools.lru_cache(maxsize=1)
def _load():
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("the digits data come with scikit-learn: pip install scikit-learn") from e
  d = datasets.load_digits()
  images = (d.images.astype(np.float32) / 16.0)[..., None]
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
  return images[order], d.target.astype(np.int32)[order]


def split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """``(images, labels)`` of ``split``."""
  if split not in SPLITS:
    raise ValueError(f"digits split {split!r} is unknown; available: {sorted(SPLITS)}.")
  images, labels = _load()
  lo, hi = (int(round(f * len(images))) for f in SPLITS[split])
  return images[lo:hi], labels[lo:hi]


class _Source:
  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"images": self.images[i], "labels": self.labels[i]}


class _StackAndPad:
  def __init__(self, batch_size: int):
    self.batch_size = batch_size

  def __call__(self, rows):
    images = np.stack([r["images"] for r in rows])
    labels = np.array([r["labels"] for r in rows], np.int32)
    missing = self.batch_size - len(rows)
    if missing:
      images = np.concatenate([images, np.zeros((missing,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.full((missing,), -1, np.int32)])
    return {"images": images, "labels": labels}


def make_iterator(*, split: str, batch_size: int, seed: int, shuffle: bool,
                  num_epochs: int | None = None, process_index: int = 0,
                  process_count: int = 1) -> grain.DatasetIterator:
  """Batches of this process's shard of ``split``; ``num_epochs=None`` repeats forever."""
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be a positive int.")
  images, labels = split_arrays(split)
  ds = grain.MapDataset.source(_Source(images, labels))[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=num_epochs is None,
                batch_fn=_StackAndPad(batch_size))
  return iter(ds.to_iter_dataset())
