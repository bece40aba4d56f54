"""ASR batches: synthetic speech examples -> 2D buckets -> static-shape, resumable batches.

Stages::

  per-example metadata (duration = num_samples / 16000, transcript)   data.speech_synth
    -> tokens = [bos] + tokenizer.encode(text) + [eos]
    -> bucket grid: NeMo-style 2D bins over (duration, len(tokens))    data.bucketing
       (estimated from these examples, or given, e.g. the train grid for validation)
    -> BucketedBatches: per-bucket batch sizes (a list/dict/OOMptimizer JSON) or a
       max-duration budget; bucket choice synchronized across processes; JSON state
    -> numpy batches, shapes static per bucket k (S_k = ceil(max_duration_k * 16000)
       samples, L_k = max_tokens_k tokens).

Batch contract (host-local numpy)::

  audio      float32 [B, S_k]  waveform / 32768, zero after audio_len
  audio_len  int32   [B]       samples (0 for padding rows of a final partial batch)
  tokens     int32   [B, L_k]  bos, text pieces, eos, then tokenizer.pad_id
  token_len  int32   [B]       including bos and eos (0 for padding rows)
  bucket     int               which bucket (static shape) this batch has
  index      int64   [B]       example index in the split, -1 for padding rows (host-side
                               bookkeeping, e.g. reference transcripts: not a model input)

The decoder reads ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]`` where the target position
is ``< token_len``. Features are NOT precomputed: the model task computes
``data.audio.log_mel(audio)`` on device (frames valid: ``data.audio.num_frames(audio_len)``;
zero padding keeps each example's features exact), which keeps host work to a copy.

Bad input. An empty transcript raises (name the example; fix or filter the data). An example
longer (or with more tokens) than the largest bucket is dropped and counted in ``dropped`` by
default, or raises with ``strict=True``; audio is never truncated (a row that does not fit its
bucket's shape raises).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from data import bucketing, speech_synth
from data import tokenizers as tokenizers_lib

SAMPLE_RATE = 16000
BATCH_KEYS = ("audio", "audio_len", "tokens", "token_len")


def bucket_samples(max_duration: float, sample_rate: int = SAMPLE_RATE) -> int:
  """Static audio length of a bucket: ceil(max_duration * rate) after rounding away float
  noise, the rule of ``BucketedBatches.static_shapes`` (what the OOMptimizer compiles)."""
  return int(math.ceil(round(max_duration * sample_rate, 6)))


def tokenize_transcripts(texts: Sequence[str], tokenizer, *,
                         bos_eos: bool = True) -> list[np.ndarray]:
  """``[bos] + encode(text) + [eos]`` per transcript (int32; ``encode(text)`` alone with
  ``bos_eos=False``, for a model that adds its own); empty transcripts raise."""
  out = []
  for i, text in enumerate(texts):
    if not text or not text.strip():
      raise ValueError(f"example {i} has an empty transcript; an ASR target needs at least "
                       "one word: remove or fix that example.")
    ids = tokenizers_lib.encode_array(tokenizer, text)
    if bos_eos:
      ids = np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]])
    out.append(np.asarray(ids, dtype=np.int32))
  return out


class AsrBatches:
  """Iterator of ASR batches over a random-access source (``source[i]`` -> dict with
  ``audio`` int16 and ``text``), with ``num_samples`` and ``texts`` known up front.

  ``grid``: a :class:`data.bucketing.BucketGrid` (or its dict); None estimates 2D bins with
  ``num_buckets`` x ``num_subbuckets`` from these examples. ``batch_sizes`` /
  ``max_duration`` / ``seed`` / ``shuffle`` / ``num_epochs`` / ``num_processes`` /
  ``process_index`` / ``remainder`` go to :class:`data.bucketing.BucketedBatches`.
  ``bos_eos=False`` leaves bos/eos out of ``tokens`` (and of the token counts bucketed on).
  """

  def __init__(self, source, num_samples, texts: Sequence[str], tokenizer, *,
               grid: bucketing.BucketGrid | Mapping | None = None, num_buckets: int = 8,
               num_subbuckets: int = 2, tps_outlier_z: float = 4.0, batch_sizes=None,
               max_duration: float | None = None, quadratic_duration: float | None = None,
               seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
               num_processes: int = 1, process_index: int = 0, remainder: str = "carry",
               strict: bool = False, bos_eos: bool = True, sample_rate: int = SAMPLE_RATE):
    num_samples = np.asarray(num_samples, dtype=np.int64)
    if num_samples.ndim != 1 or num_samples.size != len(texts):
      raise ValueError(f"need one num_samples per transcript, got {num_samples.shape} and "
                       f"{len(texts)} texts")
    if (num_samples <= 0).any():
      i = int(np.flatnonzero(num_samples <= 0)[0])
      raise ValueError(f"example {i} has no audio samples (empty audio); remove it.")
    self.source, self.tokenizer, self.sample_rate = source, tokenizer, sample_rate
    self.tokens = tokenize_transcripts(texts, tokenizer, bos_eos=bos_eos)
    self.num_samples = num_samples
    self.durations = num_samples / sample_rate
    self.num_tokens = np.asarray([t.size for t in self.tokens], dtype=np.int64)
    if grid is None:
      grid = bucketing.estimate_2d_bins(self.durations, self.num_tokens, num_buckets,
                                        num_subbuckets, tps_outlier_z)
    elif isinstance(grid, Mapping):
      grid = bucketing.BucketGrid.from_dict(grid)
    self.grid = grid
    self._batches = bucketing.BucketedBatches(
        self.durations, self.num_tokens, grid, batch_sizes=batch_sizes,
        max_duration=max_duration, quadratic_duration=quadratic_duration, seed=seed,
        shuffle=shuffle, num_processes=num_processes, process_index=process_index,
        too_long="error" if strict else "drop", remainder=remainder, num_epochs=num_epochs)

  @property
  def dropped(self) -> dict[str, int]:
    """Examples outside every bucket: ``too_long`` and ``tps_outlier`` counts."""
    return dict(self._batches.dropped)

  @property
  def batch_sizes(self) -> list[int]:
    return list(self._batches.batch_sizes)

  def bucket_shapes(self) -> list[tuple[int, int]]:
    """Per bucket, the static (audio samples, tokens) of its batches (the same shapes as
    ``BucketedBatches.static_shapes``)."""
    return [(s["num_samples"], s["max_tokens"])
            for s in self._batches.static_shapes(self.sample_rate)]

  def static_shapes(self) -> list[dict[str, int]]:
    """``BucketedBatches.static_shapes``: per bucket this process's batch size, samples and
    tokens (what compiles; the OOMptimizer's search space)."""
    return self._batches.static_shapes(self.sample_rate)

  def get_state(self) -> dict[str, Any]:
    return self._batches.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._batches.set_state(state)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def __next__(self) -> dict[str, Any]:
    plan = next(self._batches)
    k, indices = plan["bucket"], plan["indices"]
    samples, max_tokens = self.bucket_shapes()[k]
    b = indices.size
    audio = np.zeros((b, samples), dtype=np.float32)
    tokens = np.full((b, max_tokens), self.tokenizer.pad_id, dtype=np.int32)
    audio_len = np.zeros(b, dtype=np.int32)
    token_len = np.zeros(b, dtype=np.int32)
    for row, i in enumerate(indices):
      if i < 0:
        continue
      wav = np.asarray(self.source[int(i)]["audio"])
      toks = self.tokens[i]
      if wav.size > samples or toks.size > max_tokens:  # a bucketing bug, never truncate
        raise RuntimeError(f"example {i} ({wav.size} samples, {toks.size} tokens) does not "
                           f"fit bucket {k} ({samples}, {max_tokens})")
      audio[row, :wav.size] = wav.astype(np.float32) / 32768.0
      tokens[row, :toks.size] = toks
      audio_len[row], token_len[row] = wav.size, toks.size
    return {"audio": audio, "audio_len": audio_len, "tokens": tokens, "token_len": token_len,
            "bucket": k, "index": indices}


def make_asr_batches(builder, split: str, tokenizer, **kwargs) -> AsrBatches:
  """:class:`AsrBatches` over a prepared :mod:`data.speech_synth` split."""
  meta = speech_synth.read_metadata(builder, split)
  return AsrBatches(speech_synth.data_source(builder, split), meta["num_samples"],
                    meta["text"], tokenizer, **kwargs)


def _cfg_get(cfg, key: str, default=None):
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def load_corpus(cfg) -> tuple[Any, Any]:
  """``(builder, tokenizer)`` for a ``data`` config section (:func:`data.defaults.
  speech_config`): the corpus is synthesized and the tokenizer trained on first use."""
  if _cfg_get(cfg, "name") != speech_synth.NAME:
    raise ValueError(f"data.name={_cfg_get(cfg, 'name')!r}: the ASR pipeline reads the "
                     f"locally built {speech_synth.NAME!r} corpus only.")
  builder = speech_synth.load_builder(
      _cfg_get(cfg, "data_dir"), num_train=int(_cfg_get(cfg, "num_train", 4000)),
      num_eval=int(_cfg_get(cfg, "num_eval", 200)), seed=int(_cfg_get(cfg, "corpus_seed", 0)),
      max_files=_cfg_get(cfg, "max_files"))
  path = speech_synth.train_tokenizer(builder, int(_cfg_get(cfg, "tokenizer_vocab", 256)))
  return builder, tokenizers_lib.get_tokenizer("sentencepiece:" + path)


def batches_from_config(cfg, split: str, *, training: bool, seed: int = 0,
                        num_processes: int = 1, process_index: int = 0,
                        grid=None) -> AsrBatches:
  """Training batches (shuffled, endless) or one evaluation pass (in order, last batch padded)
  of ``split``. Evaluation should pass the training ``grid`` so shapes (compiles) are shared;
  its examples outside the grid are then dropped and counted (or raise with ``strict``)."""
  builder, tokenizer = load_corpus(cfg)
  sizes = _cfg_get(cfg, "bucket_batch_sizes")
  return make_asr_batches(
      builder, split, tokenizer, grid=grid, num_buckets=int(_cfg_get(cfg, "num_buckets", 8)),
      num_subbuckets=int(_cfg_get(cfg, "num_subbuckets", 2)), batch_sizes=sizes,
      max_duration=None if sizes is not None else float(_cfg_get(cfg, "max_duration", 120.0)),
      seed=seed, shuffle=training, num_epochs=None if training else 1,
      remainder="carry" if training else "pad", num_processes=num_processes,
      process_index=process_index, strict=bool(_cfg_get(cfg, "strict", False)))
