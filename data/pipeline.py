"""Resumable Grain input pipeline: TFDS ArrayRecord text -> packed language-model batches.

Stages (all deterministic given ``seed``; the iterator state is exact, see below)::

  tfds data source (ArrayRecord, random access, no TensorFlow)
    -> this process's documents: indices process_index, process_index + P, ... (P processes)
    -> seeded shuffle (a new permutation each epoch) -> repeat (training)
    -> tokenize: [bos] + encode(text) + [eos]
    -> concat-then-split packing (grain ConcatThenSplitIterDataset): rows of exactly seq_len;
       a document longer than the room left in a row continues in the next row
    -> batch (a last partial batch is filled with padding rows)

Batch contract. A batch is a dict of host-local ``int32`` numpy arrays of shape
``[batch_size, seq_len]``:

* ``tokens``: token ids; padding holds ``tokenizer.pad_id``.
* ``segment_ids``: ``1..n`` numbering the document pieces of a row, ``0`` for padding.
* ``positions``: position inside the piece, restarting at 0 for every segment (a document
  split across rows restarts at 0 in the next row too).

The language-model loss predicts ``tokens[t + 1]`` from position ``t`` only where
``segment_ids[t + 1] == segment_ids[t] != 0``; so no prediction crosses a document (or
piece) boundary, padding is never a target, bos is never a target and eos is.
Attention must likewise be masked to equal segment ids.

Resume. ``make_lm_iterator(...).get_state()`` is a small dict (parent indices, packer
remainder slice); ``set_state`` on a freshly built iterator with the same arguments reproduces
the uninterrupted batches exactly. Save it with the model checkpoint. The state depends on
the process count (each process has its own shard), so resume with the same count.

Evaluation: ``shuffle=False, num_epochs=1``: one deterministic pass over this process's shard.
"""
from __future__ import annotations

import math
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from data import defaults, stdlib_corpus
from data import tokenizers as tokenizers_lib

BATCH_KEYS = ("tokens", "segment_ids", "positions")
# Parallelism of the per-document stages (read + tokenize); packing itself is sequential.
READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` config section, with its defaults (:func:`data.defaults.text_config`)."""
  return defaults.text_config()


def _cfg_get(cfg, key: str, default=None):
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _stdlib_options(cfg) -> dict[str, Any]:
  return {"max_files": _cfg_get(cfg, "max_files"),
          "validation_permille": _cfg_get(cfg, "validation_permille",
                                          stdlib_corpus.DEFAULT_VALIDATION_PERMILLE)}


def _builder(cfg) -> tfds.core.DatasetBuilder:
  """The prepared builder for ``cfg.name``; the bundled corpus is prepared on first use."""
  name, data_dir = cfg.name, _cfg_get(cfg, "data_dir")
  if name == stdlib_corpus.NAME:
    return stdlib_corpus.load_builder(data_dir, **_stdlib_options(cfg))
  searched = stdlib_corpus.resolve_data_dir(data_dir)
  how = (f"Prepare it on a machine with internet: `tfds build {name} --data_dir DIR "
         f"--file_format=array_record`, then copy DIR/{name.split(':')[0]} to {searched}/ "
         "(this machine cannot download).")
  try:
    builder = tfds.builder(name, data_dir=searched, file_format="array_record")
  except Exception as e:  # tfds raises several types for unknown names / configs.
    raise ValueError(f"TFDS dataset {name!r} could not be loaded from data_dir {searched!r}: "
                     f"{e}. {how}") from e
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset {name!r} is not prepared in data_dir {searched!r} "
                     f"(looked for {builder.data_dir}). {how}")
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
        f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
        f"{builder.info.file_format.value}, but random access needs ArrayRecord. {how}")
  return builder


def _open_split(cfg, split: str):
  builder = _builder(cfg)
  base_split = split.split("[")[0].split("+")[0]
  if base_split not in builder.info.splits:
    raise ValueError(f"split {split!r} not in dataset {cfg.name!r}; available: "
                     f"{sorted(builder.info.splits)}.")
  text_key = _cfg_get(cfg, "text_key", "text")
  features = builder.info.features
  if text_key not in features:
    raise ValueError(f"text_key {text_key!r} is not a feature of {cfg.name!r}; features: "
                     f"{sorted(features)}.")
  return builder.as_data_source(split=split), text_key


class _Tokenize(grain.transforms.Map):
  """record -> {"tokens": [bos] + encode(text) + [eos]} (int32)."""

  def __init__(self, tokenizer, text_key: str):
    self._tokenizer, self._text_key = tokenizer, text_key
    self._bos = np.array([tokenizer.bos_id], np.int32)
    self._eos = np.array([tokenizer.eos_id], np.int32)

  def map(self, record):
    text = record[self._text_key]
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")  # A stray bad byte must not stop a run.
    return {"tokens": np.concatenate(
        [self._bos, tokenizers_lib.encode_array(self._tokenizer, text), self._eos])}


class _Rename(grain.transforms.Map):
  """Packer output -> the batch contract's keys; padding tokens set to pad_id."""

  def __init__(self, pad_id: int):
    self._pad_id = pad_id

  def map(self, packed):
    segment_ids = packed["tokens_segment_ids"].astype(np.int32)
    tokens = packed["tokens"].astype(np.int32)
    if self._pad_id != 0:
      tokens = np.where(segment_ids == 0, np.int32(self._pad_id), tokens)
    return {"tokens": tokens, "segment_ids": segment_ids,
            "positions": packed["tokens_positions"].astype(np.int32)}


class _JsonSafePackerIterator(grain.DatasetIterator):
  """Passes through; `set_state` accepts a JSON round-tripped packer state.

  Grain's concat-then-split state holds ``(start, stop)`` tuples and compares them to a tuple
  sentinel, so the lists that ``json.loads`` returns (and Grain's own checkpoint handler
  saves JSON) would restore as a bogus remainder and silently skip a document.
  """

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    state = dict(state)
    state["remainder_slices"] = {k: tuple(v) for k, v in state["remainder_slices"].items()}
    self._parent.set_state(state)


class _JsonSafePacker(grain.IterDataset):

  def __iter__(self):
    return _JsonSafePackerIterator(self._parent.__iter__())


class _PadToNumBatchesIterator(grain.DatasetIterator):
  """Yields the parent's batches, then all-padding batches up to `num_batches` in total."""

  def __init__(self, parent, num_batches: int, padding_batch):
    super().__init__(parent)
    self._num_batches, self._padding_batch, self._emitted = num_batches, padding_batch, 0

  def __next__(self):
    if self._emitted >= self._num_batches:
      try:  # The parent must be exhausted too, else the count was wrong.
        next(self._parent)
      except StopIteration:
        raise StopIteration() from None
      raise RuntimeError(f"pipeline made more than the {self._num_batches} batches counted.")
    try:
      batch = next(self._parent)
    except StopIteration:
      batch = {k: v.copy() for k, v in self._padding_batch.items()}
    self._emitted += 1
    return batch

  def get_state(self):
    return {"parent": self._parent.get_state(), "emitted": self._emitted}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._emitted = int(state["emitted"])


class _PadToNumBatches(grain.IterDataset):

  def __init__(self, parent, num_batches: int, padding_batch):
    super().__init__(parent)
    self._num_batches, self._padding_batch = num_batches, padding_batch

  def __iter__(self):
    return _PadToNumBatchesIterator(self._parent.__iter__(), self._num_batches,
                                    self._padding_batch)


class _StackAndPad:
  """Batches rows; a short (last) batch is filled with padding rows (segment_ids 0)."""

  def __init__(self, batch_size: int, pad_id: int):
    self._batch_size, self._pad_id = batch_size, pad_id

  def __call__(self, rows):
    batch = {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}
    missing = self._batch_size - len(rows)
    if missing:
      for k in BATCH_KEYS:
        fill = self._pad_id if k == "tokens" else 0
        pad = np.full((missing,) + batch[k].shape[1:], fill, np.int32)
        batch[k] = np.concatenate([batch[k], pad])
    return batch


def _process_shard(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # Only for the defaults; the pipeline itself is jax-free.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count="
                     f"{process_count}).")
  return process_index, process_count


def make_lm_dataset(cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                    shuffle: bool, num_epochs: int | None = None,
                    process_index: int | None = None,
                    process_count: int | None = None) -> grain.IterDataset:
  """Packed LM batches of this process's shard of ``split`` (see the module docstring).

  Args:
    cfg: the ``data`` config section (`default_config`).
    split: a TFDS split ("train", "validation", "train[:10%]", ...).
    seq_len: row length L.
    batch_size: host-local rows per batch B.
    seed: shuffle seed (the same on every process: shards are disjoint anyway).
    shuffle: shuffle documents (a new permutation every epoch).
    num_epochs: passes over the shard; None repeats forever (training).
    process_index, process_count: this process's shard; default jax.process_index/count().
      With several processes and finite ``num_epochs`` every process yields the same number
      of batches (`count_batches` over all shards, the short ones end with all-padding
      batches), so that a multi-host evaluation runs the same number of steps everywhere.
  """
  for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive int.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs={num_epochs} must be None (forever) or >= 1.")
  process_index, process_count = _process_shard(process_index, process_count)
  tokenizer = tokenizers_lib.get_tokenizer(_cfg_get(cfg, "tokenizer", "byte"))
  source, text_key = _open_split(cfg, split)
  if len(source) < process_count:
    raise ValueError(f"split {split!r} of {cfg.name!r} has {len(source)} documents, fewer "
                     f"than process_count={process_count}.")

  ds = grain.MapDataset.source(source)[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map(_Tokenize(tokenizer, text_key))
  ds = ds.to_iter_dataset(READ_OPTIONS)
  ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len})
  ds = _JsonSafePacker(ds)
  ds = ds.map(_Rename(tokenizer.pad_id))
  ds = ds.batch(batch_size, batch_fn=_StackAndPad(batch_size, tokenizer.pad_id))
  if num_epochs is not None and process_count > 1:
    counts = [count_batches(cfg, split=split, seq_len=seq_len, batch_size=batch_size,
                            num_epochs=num_epochs, process_index=i, process_count=process_count)
              for i in range(process_count)]
    padding = {k: np.zeros((batch_size, seq_len), np.int32) for k in BATCH_KEYS}
    padding["tokens"][:] = tokenizer.pad_id
    ds = _PadToNumBatches(ds, max(counts), padding)
  return ds


def count_batches(cfg, *, split: str, seq_len: int, batch_size: int, num_epochs: int,
                  process_index: int, process_count: int) -> int:
  """Batches `make_lm_dataset` makes from one process's shard without the multi-host padding.

  Concat-then-split fills every row but the last, so a shard of T tokens (``len + 2`` per
  document) makes ``ceil(num_epochs * T / seq_len)`` rows (the order does not matter).
  """
  tokenizer = tokenizers_lib.get_tokenizer(_cfg_get(cfg, "tokenizer", "byte"))
  source, text_key = _open_split(cfg, split)
  tokenize = _Tokenize(tokenizer, text_key)
  tokens = sum(len(tokenize.map(source[i])["tokens"])
               for i in range(process_index, len(source), process_count))
  return math.ceil(packed_rows(num_epochs * tokens, seq_len) / batch_size)


def make_lm_iterator(cfg, **kwargs) -> grain.DatasetIterator:
  """``iter(make_lm_dataset(cfg, **kwargs))``: has ``get_state()`` / ``set_state(state)``."""
  return iter(make_lm_dataset(cfg, **kwargs))


def iter_documents(cfg, split: str, max_docs: int | None = None):
  """Yields the token arrays ``encode(text) + [eos]`` of ``split`` in stored order."""
  tokenizer = tokenizers_lib.get_tokenizer(_cfg_get(cfg, "tokenizer", "byte"))
  source, text_key = _open_split(cfg, split)
  tokenize = _Tokenize(tokenizer, text_key)
  n = len(source) if max_docs is None else min(max_docs, len(source))
  for i in range(n):
    yield tokenize.map(source[i])["tokens"][1:]  # Drop bos: never a target.


def unigram_entropy(cfg, split: str, max_docs: int | None = None) -> float:
  """Entropy in nats/token of the split's unigram token distribution (eos counted).

  ``H = -sum_v p_v ln p_v`` with ``p_v`` the frequency of token v over
  ``encode(doc) + [eos]`` for every document: the loss of the best context-free model, a
  yardstick for the validation loss (which counts the same targets).
  """
  vocab_size = tokenizers_lib.get_tokenizer(_cfg_get(cfg, "tokenizer", "byte")).vocab_size
  counts = np.zeros(vocab_size, np.int64)
  for tokens in iter_documents(cfg, split, max_docs):
    counts += np.bincount(tokens, minlength=vocab_size)
  total = counts.sum()
  if total == 0:
    raise ValueError(f"split {split!r} of {cfg.name!r} has no tokens.")
  p = counts[counts > 0] / total
  return float(-(p * np.log(p)).sum())


def describe_corpus(cfg=None) -> dict[str, Any]:
  """Documents, bytes and fingerprint of the dataset ``cfg`` names (default: the stdlib)."""
  cfg = default_config() if cfg is None else cfg
  if cfg.name == stdlib_corpus.NAME:
    return stdlib_corpus.describe_corpus(_cfg_get(cfg, "data_dir"), **_stdlib_options(cfg))
  builder = _builder(cfg)
  return {"name": builder.info.full_name, "data_dir": str(builder.data_dir),
          "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
          "num_bytes": builder.info.dataset_size}


def packed_rows(num_tokens: int, seq_len: int) -> int:
  """Rows concat-then-split makes of ``num_tokens`` tokens: all full but the last."""
  return math.ceil(num_tokens / seq_len)
