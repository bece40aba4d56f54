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
count nowhere. Batches are :class:`data.speech.AsrBatches` (tokens without BOS/EOS: the model
adds them) over ``data.name``: ``tone_words`` (spoken digits synthesized in memory, quick) or
``synthetic_speech`` (the espeak-ng corpus, :mod:`data.speech_synth`, and its SentencePiece).

The loop jits the train step once per bucket shape (a different static batch shape is a new
trace of the same ``jax.jit``); the eval step likewise, with greedy decoding for
``max_tokens + 1`` steps inside it. WER = (substitutions + deletions + insertions) / reference
words, summed over the split (jiwer, on the host through ``jax.pure_callback``).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import jiwer
import numpy as np

from core import sharding as sharding_lib
from data import bucketing, speech, speech_synth, tokenizers, tone_words
from models import encdec, registry

TONE_WORDS = "tone_words"  # data/tone_words.py: synthesized in memory (quick, CPU)
DATASETS = (TONE_WORDS, speech_synth.NAME)  # + the espeak-ng corpus (data/speech_synth.py)


def _edit_errors(refs, hyps, align, size) -> tuple[int, int]:
  """``(S + D + I, reference units)`` over utterance pairs; ``align`` is jiwer's aligner,
  ``size`` the reference's length in its units. Empty references (padding rows) are skipped;
  an empty hypothesis, which jiwer rejects, deletes every reference unit."""
  errors = total = 0
  for ref, hyp in zip(refs, hyps):
    n = size(ref)
    if n == 0:
      continue
    if hyp.strip():
      out = align(ref, hyp)
      errors += out.substitutions + out.deletions + out.insertions
    else:
      errors += n
    total += n
  return errors, total


def word_errors(refs: list[str], hyps: list[str]) -> tuple[int, int]:
  """``(S + D + I, reference words)`` over utterance pairs (jiwer's word alignment)."""
  return _edit_errors(refs, hyps, jiwer.process_words, lambda r: len(r.split()))


def char_errors(refs: list[str], hyps: list[str]) -> tuple[int, int]:
  """``(S + D + I, reference characters)`` over utterance pairs (jiwer's character alignment,
  spaces included): the CER that shows learning while most words still carry an error."""
  return _edit_errors(refs, hyps, jiwer.process_characters, len)


def transcripts(tokenizer, ids: np.ndarray, lengths=None, cfg=None) -> list[str]:
  """Text of each row of ``ids``: up to ``lengths``, or (decoder output) up to the first
  EOS/pad of ``cfg``."""
  out = []
  for i, row in enumerate(np.asarray(ids)):
    row = (row[:max(int(lengths[i]), 0)] if lengths is not None
           else encdec.cut_at_stop(row, cfg, tokenizer.vocab_size))
    out.append(tokenizer.decode(row.tolist()).strip())
  return out


class ModelBatches:
  """:class:`data.speech.AsrBatches` without their host-side bookkeeping (``bucket``,
  ``index``): only the model inputs go to the devices; the state is the sampler's."""

  def __init__(self, batches: speech.AsrBatches):
    self.batches = batches

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self.batches)
    return {k: batch[k] for k in speech.BATCH_KEYS}

  def get_state(self):
    return self.batches.get_state()

  def set_state(self, state):
    self.batches.set_state(state)


class Task:

  def __init__(self, config):
    self.config = config
    self.model, self.model_cfg = registry.from_dict(config.model.to_dict())
    if self.model is not encdec:
      raise ValueError(f"task 'asr' trains model.name='encdec', got {config.model.get('name')!r}.")
    self.data = config.data
    if self.data.name not in DATASETS:
      raise ValueError(f"data.name={self.data.name!r}: task 'asr' reads one of {DATASETS}.")

  @functools.cached_property
  def _builder(self):
    """The synthetic_speech builder and its SentencePiece tokenizer (built on first use)."""
    return speech.load_corpus(self.data)

  @functools.cached_property
  def tokenizer(self):
    if self.data.name == TONE_WORDS:
      return tokenizers.get_tokenizer(self.data.tokenizer)
    return self._builder[1]

  def tokenizer_spec(self) -> str:
    """What an export records to rebuild the tokenizer (``data.tokenizers.get_tokenizer``)."""
    if self.data.name == TONE_WORDS:
      return str(self.data.tokenizer)
    return "sentencepiece:" + os.path.abspath(self.tokenizer.path)

  def validate(self, global_batch_size: int) -> None:
    """Model vs tokenizer ids, splits, and per-bucket batch sizes vs the mesh."""
    del global_batch_size  # bucketed: each bucket has its own batch size
    c, tok = self.model_cfg, self.tokenizer
    if c.vocab_size < tok.vocab_size:
      raise ValueError(f"model.vocab_size={c.vocab_size} is smaller than the tokenizer's "
                       f"{tok.vocab_size}; set --config.model.vocab_size={tok.vocab_size}.")
    for name in ("bos_id", "eos_id", "pad_id"):
      if getattr(c, name) != getattr(tok, name):
        raise ValueError(f"model.{name}={getattr(c, name)} differs from the tokenizer's "
                         f"{getattr(tok, name)}; set --config.model.{name}="
                         f"{getattr(tok, name)}.")
    if c.sample_rate != speech.SAMPLE_RATE:
      raise ValueError(f"model.sample_rate={c.sample_rate} Hz but {self.data.name} is "
                       f"{speech.SAMPLE_RATE} Hz; set --config.model.sample_rate="
                       f"{speech.SAMPLE_RATE}.")
    if self.data.name == TONE_WORDS:
      for split in (self.data.train_split, self.data.eval_split):
        if split not in tone_words.SPLIT_SEEDS:
          raise ValueError(f"tone_words split {split!r} is unknown; available: "
                           f"{sorted(tone_words.SPLIT_SEEDS)}.")
    self.bucket_batch_sizes()  # the sizes must divide over the mesh

  # --------------------------------------------------------------------------------- data --

  @functools.lru_cache(maxsize=4)
  def corpus(self, split: str) -> dict:
    """``{"source" (random access: {"audio" int16, "text"}), "num_samples", "text"}``."""
    if self.data.name == TONE_WORDS:
      n = self.data.num_train if split == self.data.train_split else self.data.num_eval
      c = tone_words.load(split, int(n), seed=int(self.data.corpus_seed),
                          max_words=int(self.data.max_words))
      return {"source": [{"audio": a, "text": t} for a, t in zip(c["audio"], c["text"])],
              "num_samples": np.array([a.size for a in c["audio"]]), "text": c["text"]}
    builder = self._builder[0]
    meta = speech_synth.read_metadata(builder, split)
    return {"source": speech_synth.data_source(builder, split),
            "num_samples": np.asarray(meta["num_samples"]), "text": list(meta["text"])}

  @functools.cached_property
  def train_lengths(self) -> tuple[np.ndarray, np.ndarray]:
    """``(seconds, tokens)`` of every training utterance (tokens without BOS/EOS: the model
    adds its own): what the buckets are estimated on."""
    c = self.corpus(self.data.train_split)
    dur = np.asarray(c["num_samples"]) / speech.SAMPLE_RATE
    ntok = np.asarray([t.size for t in speech.tokenize_transcripts(
        c["text"], self.tokenizer, bos_eos=False)], dtype=np.int64)
    return dur, ntok

  @functools.cached_property
  def grid(self) -> bucketing.BucketGrid:
    """Duration x token buckets estimated on the training split (:attr:`train_lengths`)."""
    dur, ntok = self.train_lengths
    if int(self.data.num_buckets) == 1 and int(self.data.num_subbuckets) == 1:
      return bucketing.BucketGrid((float(np.max(dur)),), (int(max(ntok)),))
    if int(self.data.num_subbuckets) > 1:
      return bucketing.estimate_2d_bins(dur, ntok, int(self.data.num_buckets),
                                        int(self.data.num_subbuckets),
                                        float(self.data.get("tps_outlier_z", 4.0)))
    return bucketing.estimate_1d_grid(dur, ntok, int(self.data.num_buckets))

  def data_parallel_size(self) -> int:
    shape = sharding_lib.mesh_shape(self.config.mesh, jax.device_count())
    return shape[0] * shape[1]

  def bucket_shapes(self) -> list[tuple[int, int]]:
    """``(audio samples, max tokens)`` of every bucket (each one compile)."""
    return [(speech.bucket_samples(d, self.model_cfg.sample_rate), int(t))
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

  def _batches(self, split, *, seed, training):
    c = self.corpus(split)
    procs = jax.process_count()
    batches = speech.AsrBatches(
        c["source"], c["num_samples"], c["text"], self.tokenizer, grid=self.grid,
        batch_sizes=[b // procs for b in self.bucket_batch_sizes()], seed=seed,
        shuffle=training, num_epochs=None if training else 1,
        remainder="carry" if training else "pad", num_processes=procs,
        process_index=jax.process_index(), strict=bool(self.data.strict), bos_eos=False,
        sample_rate=self.model_cfg.sample_rate)
    if any(batches.dropped.values()):
      print(f"{self.data.name}/{split}: dropped {batches.dropped} utterances outside the "
            "buckets (data.strict=True to fail instead)", flush=True)
    return ModelBatches(batches)

  def train_iterator(self, batch_size: int, seed: int):
    del batch_size  # per bucket (bucket_batch_sizes)
    return self._batches(self.data.train_split, seed=seed, training=True)

  def eval_batches(self, batch_size: int):
    del batch_size
    n = int(self.config.train.eval_batches)
    it = self._batches(self.data.eval_split, seed=0, training=False)
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
    """Decoder logits; with ``model.ctc_weight > 0`` a dict that adds the encoder's CTC
    logits and frame mask."""
    del rng  # no dropout
    inputs = encdec.decoder_inputs(batch["tokens"], self.model_cfg.bos_id)
    if self.model_cfg.ctc_weight <= 0:
      return self.model.apply(graphdef, params, batch["audio"], batch["audio_len"], inputs)
    logits, ctc_logits, enc_mask = self.model.apply_with_ctc(
        graphdef, params, batch["audio"], batch["audio_len"], inputs)
    return {"logits": logits, "ctc_logits": ctc_logits, "enc_mask": enc_mask}

  def _nll(self, logits, batch):
    c = self.model_cfg
    targets, weights = encdec.decoder_targets(batch["tokens"], batch["token_len"], c.eos_id,
                                              c.pad_id)
    weights = weights * (batch["audio_len"] > 0)[:, None]
    return encdec.cross_entropy(logits, targets, weights)

  def loss(self, outputs, batch):
    """``(sum of next-token NLL over real tokens incl. EOS, their count)``; with
    ``model.ctc_weight = w > 0`` the sum is ``(1 - w) NLL + w CTC`` (hybrid CTC/attention,
    Watanabe et al. 2017: the CTC term's monotonic alignment gets the encoder off the
    plateau where the decoder predicts from its own prefix alone)."""
    if not isinstance(outputs, dict):
      return self._nll(outputs, batch)
    nll, count = self._nll(outputs["logits"], batch)
    real = batch["audio_len"] > 0
    ctc, _ = encdec.ctc_loss(outputs["ctc_logits"], outputs["enc_mask"] & real[:, None],
                             batch["tokens"], jnp.where(real, batch["token_len"], 0),
                             blank_id=self.model_cfg.pad_id)
    w = self.model_cfg.ctc_weight
    return (1.0 - w) * nll + w * ctc, count

  def _host_errors(self, hyp, tokens, token_len):
    refs = transcripts(self.tokenizer, tokens, token_len)
    hyps = transcripts(self.tokenizer, hyp, cfg=self.model_cfg)
    return tuple(np.float32(x) for x in word_errors(refs, hyps) + char_errors(refs, hyps))

  def eval_sums(self, graphdef, params, batch):
    outputs = self.forward(graphdef, params, batch)
    nll, count = self._nll(outputs["logits"] if isinstance(outputs, dict) else outputs,
                           batch)  # eval loss: the decoder's NLL alone
    hyp = encdec.greedy_decode(graphdef, params, batch["audio"], batch["audio_len"],
                               batch["tokens"].shape[1] + 1)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    errors, words, cerrors, chars = jax.pure_callback(
        self._host_errors, (scalar,) * 4, hyp, batch["tokens"], batch["token_len"])
    return {"nll": nll, "count": count, "word_errors": errors, "words": words,
            "char_errors": cerrors, "chars": chars,
            "utterances": jnp.sum(batch["audio_len"] > 0).astype(jnp.float32)}

  @staticmethod
  def eval_metrics(sums) -> dict[str, float]:
    return {"eval_loss": sums["nll"] / max(sums["count"], 1.0),
            "eval_wer": sums["word_errors"] / max(sums["words"], 1.0),
            "eval_cer": sums["char_errors"] / max(sums["chars"], 1.0),
            "eval_utterances": sums["utterances"]}

  @staticmethod
  def describe_eval(m) -> str:
    return (f"eval loss {m['eval_loss']:.4f} | WER {100 * m['eval_wer']:.1f}% | CER "
            f"{100 * m['eval_cer']:.1f}% ({int(m['eval_utterances'])} utterances)")

  def throughput(self, batch) -> tuple[float, str]:
    """Real audio seconds of a batch (padding does not count)."""
    return float(np.sum(batch["audio_len"])) / self.model_cfg.sample_rate * \
        jax.process_count(), "audio-s"

  def export_extra(self) -> dict:
    return {"dataset": str(self.data.name), "tokenizer": self.tokenizer_spec(),
            "buckets": self.grid.to_dict()}

  @staticmethod
  def final_metrics(last_eval) -> tuple[dict, str]:
    return {}, (f"final validation WER {100 * last_eval['eval_wer']:.1f}%, CER "
                f"{100 * last_eval['eval_cer']:.1f}%")
