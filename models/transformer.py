"""Llama-style decoder in Flax NNX: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Used functionally (see :func:`init` / :func:`apply`): the module is split once into a static
``graphdef`` and a pure-dict ``params`` pytree; training, quantization and inference are pure
functions of ``params``. Attention (:mod:`models.attention`) is causal *within* packed
segments, so documents packed into one row never see each other.

Decoding passes a KV ``cache`` (see :func:`init_cache`): per layer ``k, v: [B, S_max, Hkv, D]``
indexed by absolute position, or a Hydragen cache with shared prefix levels
(:mod:`models.attention`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from core.sharding import constrain
from models import attention, fp8_act, functional
from models.configs import ModelConfig, preset  # noqa: F401  (the model's config, presets)
from models.layers import Embed, Linear, RMSNorm, rope

Config = ModelConfig


def _fp8(cfg: ModelConfig, *linears) -> bool:
  """FP8 activations apply to plain-array kernels (training), not to quantized weights."""
  return cfg.fp8_activations and all(isinstance(p.kernel.get_value(), jax.Array)
                                     for p in linears)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    self.q_proj = Linear(d, h * hd, logical_axes=("embed", "heads"), rngs=rngs, param_dtype=pd)
    self.k_proj = Linear(d, kv * hd, logical_axes=("embed", "kv_heads"), rngs=rngs,
                         param_dtype=pd)
    self.v_proj = Linear(d, kv * hd, logical_axes=("embed", "kv_heads"), rngs=rngs,
                         param_dtype=pd)
    self.o_proj = Linear(h * hd, d, logical_axes=("heads", "embed"), rngs=rngs, param_dtype=pd,
                         std=(h * hd)**-0.5 / (2 * cfg.n_layers)**0.5)

  def __call__(self, x, positions, segment_ids, cache=None):
    cfg = self.cfg
    b, t, _ = x.shape
    fp8 = _fp8(cfg, self.q_proj, self.k_proj, self.v_proj, self.o_proj)
    if fp8:  # one E4M3 copy of x serves the three projections' backward pass
      kernels = tuple(p.kernel.get_value() for p in (self.q_proj, self.k_proj, self.v_proj))
      q, k, v = fp8_act.dots(x, kernels)
    else:
      q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    q = q.reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    q = constrain(rope(q, positions, theta=cfg.rope_theta), ("batch", "seq", "act_heads", None))
    k = constrain(rope(k, positions, theta=cfg.rope_theta), ("batch", "seq", "act_kv", None))
    v = constrain(v, ("batch", "seq", "act_kv", None))
    out, new_cache = attention.attend(q, k, v, positions=positions, segment_ids=segment_ids,
                                      cache=cache, block=cfg.attention_block)
    out = constrain(out.reshape(b, t, cfg.n_heads * cfg.head_dim), ("batch", "seq", "act_heads"))
    if fp8:
      return fp8_act.dots(out, (self.o_proj.kernel.get_value(),))[0], new_cache
    return self.o_proj(out), new_cache


class MLP(nnx.Module):
  """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    self.gate_proj = Linear(cfg.d_model, cfg.mlp_dim, logical_axes=("embed", "mlp"), rngs=rngs,
                            param_dtype=pd)
    self.up_proj = Linear(cfg.d_model, cfg.mlp_dim, logical_axes=("embed", "mlp"), rngs=rngs,
                          param_dtype=pd)
    self.down_proj = Linear(cfg.mlp_dim, cfg.d_model, logical_axes=("mlp", "embed"), rngs=rngs,
                            param_dtype=pd, std=cfg.mlp_dim**-0.5 / (2 * cfg.n_layers)**0.5)

  def __call__(self, x):
    if _fp8(self.cfg, self.gate_proj, self.up_proj, self.down_proj):
      gate, up = fp8_act.dots(x, (self.gate_proj.kernel.get_value(),
                                  self.up_proj.kernel.get_value()))
      h = constrain(fp8_act.swiglu(gate, up), ("batch", "seq", "act_mlp"))
      return fp8_act.dots(h, (self.down_proj.kernel.get_value(),))[0]
    h = constrain(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x), ("batch", "seq", "act_mlp"))
    return self.down_proj(h)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    fp8 = cfg.fp8_activations
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd, fp8_activations=fp8)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd, fp8_activations=fp8)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, segment_ids, cache=None):
    h, cache = self.attn(self.attn_norm(x), positions, segment_ids, cache)
    x = constrain(x + h, ("batch", "seq", "act_embed"))
    x = constrain(x + self.mlp(self.mlp_norm(x)), ("batch", "seq", "act_embed"))
    return x, cache


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=pd)
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd,
                              fp8_activations=cfg.fp8_activations)
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.d_model, cfg.vocab_size, logical_axes=("embed", "vocab"),
                            rngs=rngs, param_dtype=pd)

  def __call__(self, tokens, positions=None, segment_ids=None, cache=None):
    """Logits ``[B, T, vocab]`` (f32), and the updated cache when one is given."""
    cfg = self.cfg
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    x = constrain(self.embed(tokens, jnp.dtype(cfg.dtype)), ("batch", "seq", "act_embed"))
    new_cache = [] if cache is not None else None
    for i, block in enumerate(self.layers):
      layer_cache = None if cache is None else cache[i]
      if cfg.remat and cache is None:
        x, _ = nnx.remat(lambda blk, *a: blk(*a))(block, x, positions, segment_ids)
      else:
        x, c = block(x, positions, segment_ids, layer_cache)
        if cache is not None:
          new_cache.append(c)
    x = self.final_norm(x)
    logits = self.embed.attend(x) if cfg.tie_embeddings else self.lm_head(x)
    logits = constrain(logits.astype(jnp.float32), ("batch", "seq", "act_vocab"))
    return (logits, new_cache) if cache is not None else logits


# --------------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------------


def init(cfg: ModelConfig, seed: int = 0):
  """Builds the model and returns ``(graphdef, params)``."""
  return functional.init(lambda rngs: Transformer(cfg, rngs=rngs), seed)


def abstract_params(cfg: ModelConfig):
  """``(graphdef, params as ShapeDtypeStructs)`` without allocating anything."""
  return functional.abstract_params(lambda rngs: Transformer(cfg, rngs=rngs))


def logical_axes(cfg: ModelConfig):
  """Pytree matching ``params`` whose leaves are the tuples of logical axis names."""
  return functional.logical_axes(lambda rngs: Transformer(cfg, rngs=rngs))


def apply(graphdef, params, tokens, positions=None, segment_ids=None, cache=None):
  """Pure forward pass: logits (and the new cache when ``cache`` is given)."""
  return functional.merge(graphdef, params)(tokens, positions, segment_ids, cache)


def forward(model: Transformer, batch):
  """How the model consumes a batch ``{tokens[, positions, segment_ids]}`` (PTQ, tasks)."""
  return model(batch["tokens"], batch.get("positions"), batch.get("segment_ids"))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None):
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for _ in range(cfg.n_layers)]


def next_token_targets(batch):
  """``(targets, weights)``: target[t] = tokens[t+1] where both are in the same segment."""
  tokens, seg = batch["tokens"], batch["segment_ids"]
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  next_seg = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, :1])], axis=1)
  weights = ((seg == next_seg) & (seg != 0)).astype(jnp.float32)
  return targets, weights


def lm_loss(logits, batch):
  """``(sum of next-token NLL in nats, number of predicted tokens)``; sums, so microbatches add."""
  targets, weights = next_token_targets(batch)
  logz = jax.nn.logsumexp(logits, axis=-1)
  gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - gold) * weights), jnp.sum(weights)


def lm_eval_sums(logits, batch, token_bytes):
  """``{nll, tokens, bytes}`` sums of a batch: loss, perplexity and bits per byte add up over
  batches (``token_bytes[v]``: UTF-8 bytes of token ``v``, 0 for ids never emitted)."""
  nll, count = lm_loss(logits, batch)
  targets, weights = next_token_targets(batch)
  nbytes = jnp.sum(jnp.asarray(token_bytes, jnp.float32)[targets] * weights)
  return {"nll": nll, "tokens": count, "bytes": nbytes}
