"""Attention encoder-decoder speech recognizer (Canary-style, arXiv 2503.05931) in Flax NNX.

raw audio ``f32 [B, S]`` -> log-mel ``[B, S/hop, n_mels]`` (the model's own front end, so
batches stay raw fixed-shape audio and an export is self-contained, as NeMo's preprocessor is
part of its models) -> FastConformer 8x subsampling (three 3x3 stride-2 convs over time x mel,
Rekesh et al. 2023, arXiv 2305.05084) -> Conformer blocks (Gulati et al. 2020, arXiv
2005.08100): ``x + FFN/2, x + MHSA, x + Conv, x + FFN/2, norm`` -> a Transformer decoder whose
blocks are causal self-attention, cross-attention to the encoder, SwiGLU; trained with
cross-entropy on the next token, optionally joined by a CTC loss on a linear head over the
encoder (``ctc_weight``, :func:`ctc_loss`; hybrid CTC/attention, Watanabe et al. 2017).

Padding never leaks into real positions: audio past ``audio_len`` is zeroed, the log-mel
frames past the valid count are zeroed after per-utterance normalization, every subsampling
stage uses a constant (1, 1) padding (so the stride-2 grid does not depend on the padded
length) and re-masks, attention never attends to padded keys, and the depthwise conv sees
zeros there. So the encoder output at real frames is the same for any padded length.

Used functionally like :mod:`models.transformer`: ``init`` -> ``(graphdef, params)``,
``apply(graphdef, params, audio, audio_len, dec_tokens)`` -> logits; ``greedy_decode`` runs a
``lax.scan`` of a static number of steps over a KV cache (one compile per audio shape).
Differences from Canary kept on purpose (CPU scale): RoPE in both stacks instead of relative
positional encoding, RMSNorm instead of BatchNorm in the conv module (BatchNorm would mix
padding statistics into real frames).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from core.sharding import constrain
from models import attention, functional
from models.configs import EncDecConfig
from models.layers import Embed, Linear, RMSNorm, rope

Config = EncDecConfig

# 25 ms windows every 10 ms (NeMo's and Whisper's framing), a 512-point FFT at 16 kHz.
WINDOW_S, HOP_S = 0.025, 0.010
LOG_GUARD = 2.0**-24  # NeMo's log zero guard: log(mel + guard)
SUBSAMPLING = 8


# --------------------------------------------------------------------------------------------
# Front end: log-mel features computed in the model.
# --------------------------------------------------------------------------------------------


def hop_length(sample_rate: int) -> int:
  return int(round(sample_rate * HOP_S))


def num_frames(num_samples, sample_rate: int):
  """Feature frames of ``num_samples`` of audio: ``ceil(n / hop)`` (frame t covers samples
  ``[t hop, t hop + window)``, zero past the end)."""
  hop = hop_length(sample_rate)
  return (num_samples + hop - 1) // hop


def encoded_length(frames):
  """Encoder positions of ``frames`` feature frames: ``ceil(ceil(ceil(f/2)/2)/2)``."""
  for _ in range(3):
    frames = (frames + 1) // 2
  return frames


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  """``[n_fft // 2 + 1, n_mels]`` triangular filters on the HTK mel scale
  ``mel(f) = 2595 log10(1 + f / 700)``, from 0 Hz to Nyquist, each of unit peak."""
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
  hz = lambda m: 700.0 * (10.0**(m / 2595.0) - 1.0)
  edges = hz(np.linspace(0.0, mel(sample_rate / 2), n_mels + 2))
  freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
  down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
  return np.maximum(0.0, np.minimum(up, down)).T.astype(np.float32)


def log_mel(audio, audio_len, *, sample_rate: int = 16_000, n_mels: int = 80):
  """``(features f32 [B, ceil(S / hop), n_mels], valid frames int32 [B])``.

  ``log(|STFT|^2 @ mel + 2^-24)`` with a periodic Hann window, then each mel bin normalized
  to zero mean and unit variance over the utterance's valid frames (NeMo's ``per_feature``);
  frames at or past ``num_frames(audio_len)`` are zero.
  """
  b, s = audio.shape
  hop, win = hop_length(sample_rate), int(round(sample_rate * WINDOW_S))
  n_fft = 1 << (win - 1).bit_length()
  audio_len = audio_len.astype(jnp.int32)
  x = jnp.where(jnp.arange(s)[None] < audio_len[:, None], audio.astype(jnp.float32), 0.0)
  frames_total = (s + hop - 1) // hop
  x = jnp.pad(x, ((0, 0), (0, win)))
  idx = jnp.arange(frames_total)[:, None] * hop + jnp.arange(win)[None]
  window = 0.5 - 0.5 * jnp.cos(2 * jnp.pi * jnp.arange(win) / win)
  spec = jnp.fft.rfft(x[:, idx] * window, n=n_fft)
  power = spec.real**2 + spec.imag**2
  mel = jnp.log(power @ jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels)) + LOG_GUARD)
  valid_len = jnp.minimum(num_frames(audio_len, sample_rate), frames_total)
  valid = (jnp.arange(frames_total)[None] < valid_len[:, None])[..., None]
  count = jnp.maximum(valid_len, 1)[:, None, None].astype(jnp.float32)
  mean = jnp.sum(jnp.where(valid, mel, 0.0), axis=1, keepdims=True) / count
  var = jnp.sum(jnp.where(valid, (mel - mean)**2, 0.0), axis=1, keepdims=True) / count
  feats = jnp.where(valid, (mel - mean) / jnp.sqrt(var + 1e-5), 0.0)
  return feats, valid_len


# --------------------------------------------------------------------------------------------
# Encoder.
# --------------------------------------------------------------------------------------------


def _mask_time(x, lengths):
  keep = jnp.arange(x.shape[1])[None] < lengths[:, None]
  return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 2)), x, 0)


class Subsampling(nnx.Module):
  """FastConformer's 8x subsampling: three 3x3 stride-2 convs (ReLU) over (time, mel), each
  with constant (1, 1) padding, then a projection of (channels x mel/8) to ``d_model``."""

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    pd, c = jnp.dtype(cfg.param_dtype), cfg.subsampling_channels
    self.convs = nnx.List([
        nnx.Conv(cin, c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), param_dtype=pd,
                 rngs=rngs) for cin in (1, c, c)])
    self.proj = Linear(c * (cfg.n_mels // SUBSAMPLING), cfg.d_model,
                       logical_axes=(None, "embed"), rngs=rngs, param_dtype=pd)

  def __call__(self, feats, lengths):
    x = feats[..., None]
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
      lengths = (lengths + 1) // 2
      x = _mask_time(x, lengths)
    b, t, f, c = x.shape
    return _mask_time(self.proj(x.reshape(b, t, f * c)), lengths), lengths


class FeedForward(nnx.Module):
  """``W2 swish(W1 norm(x))`` (the Conformer's macaron half-steps use half of it)."""

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
    self.up = Linear(cfg.d_model, cfg.mlp_dim, logical_axes=("embed", "mlp"), rngs=rngs,
                     param_dtype=pd)
    self.down = Linear(cfg.mlp_dim, cfg.d_model, logical_axes=("mlp", "embed"), rngs=rngs,
                       param_dtype=pd)

  def __call__(self, x):
    h = constrain(jax.nn.silu(self.up(self.norm(x))), ("batch", "seq", "act_mlp"))
    return self.down(h)


class MultiHeadAttention(nnx.Module):
  """Self- or cross-attention: RoPE on self-attention only; ``mask [B, T, S]``."""

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs, rotary: bool):
    pd = jnp.dtype(cfg.param_dtype)
    d, a = cfg.d_model, cfg.n_heads * cfg.head_dim
    self.cfg, self.rotary = cfg, rotary
    self.q_proj = Linear(d, a, logical_axes=("embed", "heads"), rngs=rngs, param_dtype=pd)
    self.k_proj = Linear(d, a, logical_axes=("embed", "heads"), rngs=rngs, param_dtype=pd)
    self.v_proj = Linear(d, a, logical_axes=("embed", "heads"), rngs=rngs, param_dtype=pd)
    self.o_proj = Linear(a, d, logical_axes=("heads", "embed"), rngs=rngs, param_dtype=pd)

  def heads(self, proj, x, positions=None):
    b, t, _ = x.shape
    y = proj(x).reshape(b, t, self.cfg.n_heads, self.cfg.head_dim)
    if self.rotary:
      y = rope(y, positions, theta=self.cfg.rope_theta)
    return constrain(y, ("batch", "seq", "act_heads", None))

  def output(self, out):
    b, t = out.shape[:2]
    return self.o_proj(out.reshape(b, t, -1))

  def __call__(self, x, mask, positions):
    q = self.heads(self.q_proj, x, positions)
    k = self.heads(self.k_proj, x, positions)
    v = self.heads(self.v_proj, x, positions)
    return self.output(attention.dot_product_attention(q, k, v, mask))


class ConvModule(nnx.Module):
  """``W_out swish(norm(depthwise(GLU(W_in norm(x)))))``; padded frames are zeroed before the
  depthwise conv so they cannot reach real frames."""

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    pd, d = jnp.dtype(cfg.param_dtype), cfg.d_model
    self.norm = RMSNorm(d, eps=cfg.norm_eps, param_dtype=pd)
    self.pointwise_in = Linear(d, 2 * d, logical_axes=("embed", "mlp"), rngs=rngs,
                               param_dtype=pd)
    self.depthwise = nnx.Conv(d, d, (cfg.conv_kernel,), feature_group_count=d, padding="SAME",
                              use_bias=False, param_dtype=pd, rngs=rngs)
    self.conv_norm = RMSNorm(d, eps=cfg.norm_eps, param_dtype=pd)
    self.pointwise_out = Linear(d, d, logical_axes=("mlp", "embed"), rngs=rngs, param_dtype=pd)

  def __call__(self, x, lengths):
    a, gate = jnp.split(self.pointwise_in(self.norm(x)), 2, axis=-1)
    h = _mask_time(a * jax.nn.sigmoid(gate), lengths)
    h = jax.nn.silu(self.conv_norm(self.depthwise(h)))
    return self.pointwise_out(h)


class ConformerBlock(nnx.Module):

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.ffn1 = FeedForward(cfg, rngs=rngs)
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
    self.attn = MultiHeadAttention(cfg, rngs=rngs, rotary=True)
    self.conv = ConvModule(cfg, rngs=rngs)
    self.ffn2 = FeedForward(cfg, rngs=rngs)
    self.out_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)

  def __call__(self, x, lengths, positions):
    mask = jnp.broadcast_to((positions < lengths[:, None])[:, None, :],
                            (x.shape[0], x.shape[1], x.shape[1]))
    x = x + 0.5 * self.ffn1(x)
    x = x + self.attn(self.attn_norm(x), mask, positions)
    x = x + self.conv(x, lengths)
    x = x + 0.5 * self.ffn2(x)
    return constrain(_mask_time(self.out_norm(x), lengths), ("batch", "seq", "act_embed"))


class Encoder(nnx.Module):

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.subsampling = Subsampling(cfg, rngs=rngs)
    self.layers = nnx.List([ConformerBlock(cfg, rngs=rngs) for _ in range(cfg.enc_layers)])

  def __call__(self, audio, audio_len):
    """``(encoded [B, T, d], valid positions [B])`` of raw audio."""
    cfg = self.cfg
    feats, frames = log_mel(audio, audio_len, sample_rate=cfg.sample_rate, n_mels=cfg.n_mels)
    x, lengths = self.subsampling(feats.astype(jnp.dtype(cfg.dtype)), frames)
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    for block in self.layers:
      if cfg.remat:
        x = nnx.remat(lambda blk, *a: blk(*a))(block, x, lengths, positions)
      else:
        x = block(x, lengths, positions)
    return x, lengths


# --------------------------------------------------------------------------------------------
# Decoder.
# --------------------------------------------------------------------------------------------


class DecoderBlock(nnx.Module):

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.self_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
    self.self_attn = MultiHeadAttention(cfg, rngs=rngs, rotary=True)
    self.cross_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
    self.cross_attn = MultiHeadAttention(cfg, rngs=rngs, rotary=False)
    self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
    self.gate = Linear(cfg.d_model, cfg.mlp_dim, logical_axes=("embed", "mlp"), rngs=rngs,
                       param_dtype=pd)
    self.up = Linear(cfg.d_model, cfg.mlp_dim, logical_axes=("embed", "mlp"), rngs=rngs,
                     param_dtype=pd)
    self.down = Linear(cfg.mlp_dim, cfg.d_model, logical_axes=("mlp", "embed"), rngs=rngs,
                       param_dtype=pd)

  def cross_kv(self, enc):
    """The cross-attention keys and values of the encoder output (computed once per utterance
    when decoding)."""
    return {"k": self.cross_attn.heads(self.cross_attn.k_proj, enc),
            "v": self.cross_attn.heads(self.cross_attn.v_proj, enc)}

  def __call__(self, x, positions, kv, enc_mask, cache=None):
    sa = self.self_attn
    h = self.self_norm(x)
    q, k, v = (sa.heads(p, h, positions) for p in (sa.q_proj, sa.k_proj, sa.v_proj))
    out, cache = attention.attend(q, k, v, positions=positions,
                                  segment_ids=jnp.ones_like(positions), cache=cache)
    x = x + sa.output(out)
    ca = self.cross_attn
    q = ca.heads(ca.q_proj, self.cross_norm(x))
    mask = jnp.broadcast_to(enc_mask[:, None, :], (x.shape[0], x.shape[1], enc_mask.shape[1]))
    x = x + ca.output(attention.dot_product_attention(q, kv["k"], kv["v"], mask))
    h = self.mlp_norm(x)
    h = constrain(jax.nn.silu(self.gate(h)) * self.up(h), ("batch", "seq", "act_mlp"))
    return constrain(x + self.down(h), ("batch", "seq", "act_embed")), cache


class EncoderDecoder(nnx.Module):

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.encoder = Encoder(cfg, rngs=rngs)
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=pd)
    self.dec_layers = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.dec_layers)])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
    if cfg.ctc_weight > 0:  # hybrid CTC/attention training: per-frame logits of the encoder
      self.ctc_proj = Linear(cfg.d_model, cfg.vocab_size, logical_axes=("embed", "vocab"),
                             rngs=rngs, param_dtype=pd)

  def encode(self, audio, audio_len):
    """``(encoded, enc_mask bool [B, T], per-layer cross-attention K/V)``."""
    enc, lengths = self.encoder(audio, audio_len)
    enc_mask = jnp.arange(enc.shape[1])[None] < lengths[:, None]
    return enc, enc_mask, [blk.cross_kv(enc) for blk in self.dec_layers]

  def decode(self, tokens, positions, kvs, enc_mask, cache=None):
    """Logits ``f32 [B, T, vocab]`` of decoder inputs (and the new self-attention cache)."""
    cfg = self.cfg
    x = self.embed(tokens, jnp.dtype(cfg.dtype))
    new_cache = []
    for i, blk in enumerate(self.dec_layers):
      if cfg.remat and cache is None:
        x, c = nnx.remat(lambda b, *a: b(*a))(blk, x, positions, kvs[i], enc_mask)
      else:
        x, c = blk(x, positions, kvs[i], enc_mask, None if cache is None else cache[i])
      new_cache.append(c)
    logits = self.embed.attend(self.final_norm(x)).astype(jnp.float32)
    return constrain(logits, ("batch", "seq", "act_vocab")), new_cache

  def __call__(self, audio, audio_len, dec_tokens):
    return self.with_ctc(audio, audio_len, dec_tokens)[0]

  def with_ctc(self, audio, audio_len, dec_tokens):
    """``(decoder logits [B, L, vocab], CTC logits f32 [B, T, vocab] or None, enc_mask)``."""
    enc, enc_mask, kvs = self.encode(audio, audio_len)
    positions = jnp.broadcast_to(jnp.arange(dec_tokens.shape[1]), dec_tokens.shape)
    logits = self.decode(dec_tokens, positions, kvs, enc_mask)[0]
    if self.cfg.ctc_weight <= 0:
      return logits, None, enc_mask
    ctc = self.ctc_proj(enc).astype(jnp.float32)
    return logits, constrain(ctc, ("batch", "seq", "act_vocab")), enc_mask


# --------------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------------


def init(cfg: EncDecConfig, seed: int = 0):
  return functional.init(lambda rngs: EncoderDecoder(cfg, rngs=rngs), seed)


def abstract_params(cfg: EncDecConfig):
  return functional.abstract_params(lambda rngs: EncoderDecoder(cfg, rngs=rngs))


def logical_axes(cfg: EncDecConfig):
  return functional.logical_axes(lambda rngs: EncoderDecoder(cfg, rngs=rngs))


def apply(graphdef, params, audio, audio_len, dec_tokens):
  """Teacher-forced logits ``f32 [B, L, vocab]`` for decoder inputs ``dec_tokens [B, L]``."""
  return functional.merge(graphdef, params)(audio, audio_len, dec_tokens)


def apply_with_ctc(graphdef, params, audio, audio_len, dec_tokens):
  """``(decoder logits, CTC logits or None, enc_mask)`` (:meth:`EncoderDecoder.with_ctc`)."""
  return functional.merge(graphdef, params).with_ctc(audio, audio_len, dec_tokens)


def forward(model: EncoderDecoder, batch):
  """How the model consumes a batch (PTQ walks): decoder inputs = BOS + tokens."""
  return model(batch["audio"], batch["audio_len"], decoder_inputs(batch["tokens"],
                                                                  model.cfg.bos_id))


def encode(graphdef, params, audio, audio_len):
  """``(encoded [B, T, d], valid positions [B])``."""
  return functional.merge(graphdef, params).encoder(audio, audio_len)


def decoder_inputs(tokens, bos_id: int):
  """``[BOS, t_1 .. t_L]``: teacher-forcing inputs, one longer than ``tokens [B, L]``."""
  return jnp.concatenate([jnp.full_like(tokens[:, :1], bos_id), tokens], axis=1)


def decoder_targets(tokens, token_len, eos_id: int, pad_id: int):
  """``([t_1 .. t_n, EOS, pad ..], weights)`` of length ``L + 1``: position ``i`` predicts
  token ``i`` and position ``n`` predicts EOS; positions past it weigh 0."""
  b, length = tokens.shape
  pos = jnp.arange(length + 1)[None]
  padded = jnp.concatenate([tokens, jnp.full((b, 1), pad_id, tokens.dtype)], axis=1)
  n = token_len[:, None]
  targets = jnp.where(pos < n, padded, jnp.where(pos == n, eos_id, pad_id))
  return targets.astype(jnp.int32), (pos <= n).astype(jnp.float32)


def cross_entropy(logits, targets, weights):
  """``(sum of -log p(target) * weight, sum of weights)`` (sums, so microbatches add)."""
  logz = jax.nn.logsumexp(logits, axis=-1)
  gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - gold) * weights), jnp.sum(weights)


def ctc_loss(ctc_logits, enc_mask, tokens, token_len, blank_id: int):
  """``(sum over utterances of -log p_CTC(tokens | audio), utterances counted)``.

  CTC (Graves et al. 2006) over the encoder's frames, blank = ``blank_id`` (the pad id, never
  a target). An utterance whose frames cannot hold its tokens (CTC needs one frame per token
  plus one between equal neighbours) counts nowhere instead of adding optax's ``-log eps``.
  """
  valid = jnp.arange(tokens.shape[1])[None] < token_len[:, None]
  per_utt = optax.ctc_loss(ctc_logits, (~enc_mask).astype(jnp.float32), tokens,
                           (~valid).astype(jnp.float32), blank_id=blank_id)
  repeats = jnp.sum(valid[:, 1:] & (tokens[:, 1:] == tokens[:, :-1]), axis=1)
  fits = (token_len > 0) & (token_len + repeats <= jnp.sum(enc_mask, axis=1))
  return jnp.sum(jnp.where(fits, per_utt, 0.0)), jnp.sum(fits).astype(jnp.float32)


def greedy_decode(graphdef, params, audio, audio_len, max_len: int):
  """Greedy transcripts ``int32 [B, max_len]``: argmax token per step from BOS, over a KV
  cache, at most ``max_len`` steps (static: one compile per audio shape); it stops as soon as
  every row has emitted EOS (a ``while_loop``, so short transcripts cost short decodes);
  every position at or after a row's first EOS holds ``pad_id``."""
  model = functional.merge(graphdef, params)
  cfg = model.cfg
  b = audio.shape[0]
  _, enc_mask, kvs = model.encode(audio, audio_len)
  shape = (b, max_len, cfg.n_heads, cfg.head_dim)
  cache = [{"k": jnp.zeros(shape, jnp.dtype(cfg.dtype)), "v": jnp.zeros(shape, jnp.dtype(cfg.dtype))}
           for _ in range(cfg.dec_layers)]

  def running(carry):
    i, _, done, _, _ = carry
    return (i < max_len) & ~jnp.all(done)

  def step(carry):
    i, token, done, cache, out = carry
    m = functional.merge(graphdef, params)
    logits, cache = m.decode(token[:, None], jnp.full((b, 1), i, jnp.int32), kvs, enc_mask,
                             cache)
    nxt = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
    out = out.at[:, i].set(jnp.where(done | (nxt == cfg.eos_id), cfg.pad_id, nxt))
    return i + 1, nxt, done | (nxt == cfg.eos_id), cache, out

  init = (jnp.int32(0), jnp.full((b,), cfg.bos_id, jnp.int32), jnp.zeros((b,), bool), cache,
          jnp.full((b, max_len), cfg.pad_id, jnp.int32))
  return jax.lax.while_loop(running, step, init)[-1]


def cut_at_stop(ids, cfg: EncDecConfig, vocab_size: int | None = None) -> np.ndarray:
  """A decoded row up to (not including) its first EOS or pad: the transcript's ids. With
  ``vocab_size`` (the tokenizer's), ids at or above it are dropped: a model whose embedding
  table is larger than its tokenizer (the byte-sized default under a SentencePiece model) can
  emit ids that have no piece, and they carry no text."""
  ids = np.asarray(ids)
  stop = np.flatnonzero((ids == cfg.eos_id) | (ids == cfg.pad_id))
  ids = ids[:stop[0]] if stop.size else ids
  return ids if vocab_size is None else ids[ids < vocab_size]
