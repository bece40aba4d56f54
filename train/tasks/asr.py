"""Speech recognition: an attention encoder-decoder (:mod:`models.encdec`) trained with
next-token cross-entropy on bucketed static-shape batches, evaluated by WER of greedy decoding.

Batches are ``{"audio" f32 [B, S], "audio_len" int32 [B], "tokens" int32 [B, L],
"token_len" int32 [B]}``: raw audio padded to its bucket's duration (the log-mel is computed in
the model, so every bucket is one static shape and compiles once) and its transcript padded to
the bucket's token limit. Buckets are NeMo-style 2D bins (duration x output tokens,
:mod:`data.bucketing`, Canary arXiv 2503.05931) estimated on the training split; each bucket's
batch size comes from the OOMptimizer's JSON (``data.bucket_batch_sizes``,
:mod:`train.oomptimizer`) or from a padded-audio budget (``data.max_duration`` seconds per
batch), rounded down to a multiple of the data-parallel size. Padding rows (``audio_len`` 0)
count nowhere.

The loop jits the train step once per bucket shape (a different static batch shape is a new
trace of the same ``jax.jit``); the eval step likewise, with greedy decoding for
``max_tokens + 1`` steps inside it. WER = (substitutions + deletions + insertions) / reference
words, summed over the split (jiwer, on the host through ``jax.pure_callback``).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import jiwer
import numpy as np

from core import sharding as sharding_lib
from data import bucketing, tokenizers, tone_words
from models import encdec, registry

DATASETS = ("tone_words",)
FRAME_MULTIPLE = encdec.SUBSAMPLING * 160  # padded audio lengths: whole encoder positions


def bucket_num_samples(max_duration: float, sample_rate: int) -> int:
  """Padded audio samples of a bucket: its duration, rounded up to whole encoder positions."""
  n = math.ceil(round(max_duration * sample_rate, 6))
  return -(-n // FRAME_MULTIPLE) * FRAME_MULTIPLE


def word_errors(refs: list[str], hyps: list[str]) -> tuple[int, int]:
  """``(S + D + I, reference words)`` over utterance pairs (jiwer's word alignment)."""
  errors = words = 0
  for ref, hyp in zip(refs, hyps):
    n = len(ref.split())
    if n == 0:
      continue
    if not hyp.strip():  # jiwer rejects an empty hypothesis: every reference word is deleted
      errors, words = errors + n, words + n
      continue
    out = jiwer.process_words(ref, hyp)
    errors += out.substitutions + out.deletions + out.insertions
    words += n
  return errors, words


def transcripts(tokenizer, ids: np.ndarray, lengths=None, cfg=None) -> list[str]:
  """Text of each row of ``ids``: up to ``lengths``, or (decoder output) up to the first
  EOS/pad of ``cfg``."""
  out = []
  for i, row in enumerate(np.asarray(ids)):
    row = row[:max(int(lengths[i]), 0)] if lengths is not None else encdec.cut_at_stop(row, cfg)
    out.append(tokenizer.decode(row.tolist()).strip())
  return out


class SpeechBatches:
  """Static-shape speech batches from a :class:`data.bucketing.BucketedBatches` sampler;
  ``get_state`` / ``set_state`` are the sampler's (JSON, restored exactly)."""

  def __init__(self, audio, tokens, sampler: bucketing.BucketedBatches, sample_rate: int):
    self.audio, self.tokens, self.sampler, self.sample_rate = audio, tokens, sampler, sample_rate

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    b = next(self.sampler)
    idx = b["indices"]
    s = bucket_num_samples(b["max_duration"], self.sample_rate)
    length = int(b["max_tokens"])
    out = {"audio": np.zeros((idx.size, s), np.float32),
           "audio_len": np.zeros(idx.size, np.int32),
           "tokens": np.zeros((idx.size, length), np.int32),
           "token_len": np.zeros(idx.size, np.int32)}
    for row, i in enumerate(idx):
      if i < 0:
        continue
      a, t = self.audio[i], self.tokens[i]
      out["audio"][row, :a.size] = a.astype(np.float32) / 32768.0
      out["audio_len"][row] = a.size
      out["tokens"][row, :t.size] = t
      out["token_len"][row] = t.size
    return out

  def get_state(self):
    return self.sampler.get_state()

  def set_state(self, state):
    self.sampler.set_state(state)


class Task:

  def __init__(self, config):
    self.config = config
    self.model, self.model_cfg = registry.from_dict(config.model.to_dict())
    if self.model is not encdec:
      raise ValueError(f"task 'asr' trains model.name='encdec', got {config.model.get('name')!r}.")
    self.data = config.data
    if self.data.name not in DATASETS:
      raise ValueError(f"data.name={self.data.name!r}: task 'asr' reads one of {DATASETS}.")
    self.tokenizer = tokenizers.get_tokenizer(self.data.tokenizer)
    c, tok = self.model_cfg, self.tokenizer
    if c.vocab_size < tok.vocab_size:
      raise ValueError(f"model.vocab_size={c.vocab_size} is smaller than the tokenizer's "
                       f"{tok.vocab_size}; set --config.model.vocab_size={tok.vocab_size}.")
    for name in ("bos_id", "eos_id", "pad_id"):
      if getattr(c, name) != getattr(tok, name):
        raise ValueError(f"model.{name}={getattr(c, name)} differs from the tokenizer's "
                         f"{getattr(tok, name)}; set --config.model.{name}="
                         f"{getattr(tok, name)}.")
    if c.sample_rate != tone_words.SAMPLE_RATE:
      raise ValueError(f"model.sample_rate={c.sample_rate} Hz but {self.data.name} is "
                       f"{tone_words.SAMPLE_RATE} Hz; set --config.model.sample_rate="
                       f"{tone_words.SAMPLE_RATE}.")

  def validate(self, global_batch_size: int) -> None:
    del global_batch_size  # bucketed: each bucket has its own batch size
    for split in (self.data.train_split, self.data.eval_split):
      if split not in tone_words.SPLIT_SEEDS:
        raise ValueError(f"tone_words split {split!r} is unknown; available: "
                         f"{sorted(tone_words.SPLIT_SEEDS)}.")
    if self.data.too_long not in ("drop", "error"):
      raise ValueError(f"data.too_long={self.data.too_long!r} must be 'drop' or 'error'.")
    self.bucket_batch_sizes()  # the sizes must divide over the mesh

  # --------------------------------------------------------------------------------- data --

  @functools.lru_cache(maxsize=4)
  def corpus(self, split: str) -> dict:
    """``{"audio", "text", "duration", "tokens"}`` of a split (tone_words: synthesized)."""
    n = self.data.train_examples if split == self.data.train_split else self.data.eval_examples
    c = tone_words.load(split, int(n), seed=int(self.config.seed), max_words=self.data.max_words)
    c["tokens"] = [np.asarray(self.tokenizer.encode(t), np.int32) for t in c["text"]]
    empty = [i for i, t in enumerate(c["tokens"]) if t.size == 0]
    if empty:
      raise ValueError(f"{self.data.name}/{split}: utterance {empty[0]} has an empty "
                       "transcript; every training utterance needs text.")
    return c

  @functools.cached_property
  def grid(self) -> bucketing.BucketGrid:
    """Duration x token buckets estimated on the training split."""
    c = self.corpus(self.data.train_split)
    ntok = [t.size for t in c["tokens"]]
    if int(self.data.num_buckets) == 1 and int(self.data.num_subbuckets) == 1:
      return bucketing.BucketGrid((float(np.max(c["duration"])),), (int(max(ntok)),))
    if int(self.data.num_subbuckets) > 1:
      return bucketing.estimate_2d_bins(c["duration"], ntok, int(self.data.num_buckets),
                                        int(self.data.num_subbuckets),
                                        float(self.data.tps_outlier_z))
    return bucketing.estimate_1d_grid(c["duration"], ntok, int(self.data.num_buckets))

  def data_parallel_size(self) -> int:
    shape = sharding_lib.mesh_shape(self.config.mesh, jax.device_count())
    return shape[0] * shape[1]

  def bucket_shapes(self) -> list[tuple[int, int]]:
    """``(audio samples, max tokens)`` of every bucket (each one compile)."""
    return [(bucket_num_samples(d, self.model_cfg.sample_rate), int(t))
            for d, t in zip(self.grid.max_duration, self.grid.max_tokens)]

  def bucket_batch_sizes(self) -> list[int]:
    """Global batch size per bucket: the OOMptimizer's JSON, or ``max_duration`` seconds of
    padded audio per batch per process; multiples of the data-parallel size."""
    unit, procs = self.data_parallel_size(), jax.process_count()
    if self.data.bucket_batch_sizes:
      sizes = bucketing._batch_sizes(self.data.bucket_batch_sizes, self.grid.num_buckets)  # pylint: disable=protected-access
      bad = [b for b in sizes if b % unit or b % procs]
      if bad:
        raise ValueError(f"data.bucket_batch_sizes {sizes} must be multiples of the "
                         f"data-parallel size {unit} (and of {procs} processes); rerun "
                         "train.oomptimizer with this mesh.")
      return sizes
    sizes = bucketing.batch_sizes_for_max_duration(self.grid, float(self.data.max_duration))
    sizes = [b * procs // unit * unit for b in sizes]
    if min(sizes) < unit:
      raise ValueError(f"data.max_duration={self.data.max_duration} s holds fewer than "
                       f"{unit} utterances (the data-parallel size) of the longest bucket "
                       f"({max(self.grid.max_duration):.2f} s); raise data.max_duration.")
    return sizes

  def _batches(self, split, *, seed, shuffle, num_epochs, remainder):
    c = self.corpus(split)
    procs = jax.process_count()
    sampler = bucketing.BucketedBatches(
        c["duration"], [t.size for t in c["tokens"]], self.grid,
        batch_sizes=[b // procs for b in self.bucket_batch_sizes()], seed=seed,
        shuffle=shuffle, num_processes=procs, process_index=jax.process_index(),
        too_long=self.data.too_long, remainder=remainder, num_epochs=num_epochs)
    if sampler.dropped["too_long"] or sampler.dropped["tps_outlier"]:
      print(f"{self.data.name}/{split}: dropped {sampler.dropped} utterances outside the "
            "buckets (data.too_long='error' to fail instead)", flush=True)
    return SpeechBatches(c["audio"], c["tokens"], sampler, self.model_cfg.sample_rate)

  def train_iterator(self, batch_size: int, seed: int):
    del batch_size  # per bucket (bucket_batch_sizes)
    return self._batches(self.data.train_split, seed=seed, shuffle=True, num_epochs=None,
                         remainder="carry")

  def eval_batches(self, batch_size: int):
    del batch_size
    n = int(self.config.train.eval_batches)
    it = self._batches(self.data.eval_split, seed=0, shuffle=False, num_epochs=1,
                       remainder="pad")
    for i, batch in enumerate(it):
      if 0 <= n <= i:
        break
      yield batch

  def bucket_spec(self, bucket: int, global_batch_size: int) -> dict:
    """``{name: ShapeDtypeStruct}`` of a global batch of ``bucket`` (what the OOMptimizer
    compiles)."""
    s, length = self.bucket_shapes()[bucket]
    b = int(global_batch_size)
    return {"audio": jax.ShapeDtypeStruct((b, s), jnp.float32),
            "audio_len": jax.ShapeDtypeStruct((b,), jnp.int32),
            "tokens": jax.ShapeDtypeStruct((b, length), jnp.int32),
            "token_len": jax.ShapeDtypeStruct((b,), jnp.int32)}

  def batch_spec(self, global_batch_size: int) -> dict:
    """The largest bucket's batch (the longest audio) of ``global_batch_size`` rows."""
    return self.bucket_spec(self.grid.num_buckets - 1, global_batch_size)

  # -------------------------------------------------------------------------------- model --

  def forward(self, graphdef, params, batch, rng=None):
    del rng  # no dropout
    return self.model.apply(graphdef, params, batch["audio"], batch["audio_len"],
                            encdec.decoder_inputs(batch["tokens"], self.model_cfg.bos_id))

  def loss(self, logits, batch):
    """``(sum of next-token NLL over real tokens incl. EOS, their count)``."""
    c = self.model_cfg
    targets, weights = encdec.decoder_targets(batch["tokens"], batch["token_len"], c.eos_id,
                                              c.pad_id)
    weights = weights * (batch["audio_len"] > 0)[:, None]
    return encdec.cross_entropy(logits, targets, weights)

  def _host_word_errors(self, hyp, tokens, token_len):
    refs = transcripts(self.tokenizer, tokens, token_len)
    errors, words = word_errors(refs, transcripts(self.tokenizer, hyp, cfg=self.model_cfg))
    return np.float32(errors), np.float32(words)

  def eval_sums(self, graphdef, params, batch):
    nll, count = self.loss(self.forward(graphdef, params, batch), batch)
    hyp = encdec.greedy_decode(graphdef, params, batch["audio"], batch["audio_len"],
                               batch["tokens"].shape[1] + 1)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    errors, words = jax.pure_callback(self._host_word_errors, (scalar, scalar), hyp,
                                      batch["tokens"], batch["token_len"])
    return {"nll": nll, "count": count, "word_errors": errors, "words": words,
            "utterances": jnp.sum(batch["audio_len"] > 0).astype(jnp.float32)}

  @staticmethod
  def eval_metrics(sums) -> dict[str, float]:
    return {"eval_loss": sums["nll"] / max(sums["count"], 1.0),
            "eval_wer": sums["word_errors"] / max(sums["words"], 1.0),
            "eval_utterances": sums["utterances"]}

  @staticmethod
  def describe_eval(m) -> str:
    return (f"eval loss {m['eval_loss']:.4f} | WER {100 * m['eval_wer']:.1f}% "
            f"({int(m['eval_utterances'])} utterances)")

  def throughput(self, batch) -> tuple[float, str]:
    """Real audio seconds of a batch (padding does not count)."""
    return float(np.sum(batch["audio_len"])) / self.model_cfg.sample_rate * \
        jax.process_count(), "audio-s"

  def export_extra(self) -> dict:
    return {"dataset": str(self.data.name), "tokenizer": str(self.data.tokenizer),
            "buckets": self.grid.to_dict()}

  @staticmethod
  def final_metrics(last_eval) -> tuple[dict, str]:
    return {}, f"final validation WER {100 * last_eval['eval_wer']:.1f}%"
