"""Llama-style decoder in Flax NNX: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Used functionally (see :func:`split` / :func:`apply`): the module is split once into a static
``graphdef`` and a pure-dict ``params`` pytree; training, quantization and inference are pure
functions of ``params``. Attention is causal *within* packed segments: token ``t`` attends to
``s <= t`` only when ``segment_ids[s] == segment_ids[t] != 0``, so documents packed into one row
never see each other.

Decoding passes a KV ``cache`` (see :func:`init_cache`): per layer ``k, v: [B, S_max, Hkv, D]``
indexed by absolute position; the tokens of a call are written at their ``positions`` and attend
to every cached slot ``<=`` their own position. A layer cache that also has ``"levels"`` and
``"offset"`` is a Hydragen cache (:func:`prefix_cache_attention`): shared prefix KV per
sharing group plus a per-sequence suffix cache indexed by ``position - offset``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Embed, Linear, RMSNorm, rope
from models.partitioning import constrain


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 384
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 32
  mlp_dim: int = 384
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  dtype: str = "float32"  # compute dtype (activations, matmul inputs)
  param_dtype: str = "float32"
  remat: bool = False  # rematerialize each block in the backward pass

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads="
                       f"{self.n_kv_heads} (grouped-query attention).")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE.")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d) -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(names)}.")
    return cls(**dict(d))

  def num_params(self) -> int:
    attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    per_layer = attn + mlp + 2 * self.d_model
    embed = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return self.n_layers * per_layer + embed + self.d_model

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (6N for the weights + attention scores), as in PaLM/MaxText."""
    n_matmul = self.num_params() - self.vocab_size * self.d_model * (
        1 if self.tie_embeddings else 0) - self.d_model * (2 * self.n_layers + 1)
    if self.tie_embeddings:
      n_matmul += self.vocab_size * self.d_model  # the tied output projection is a matmul
    attn = 6 * self.n_layers * self.n_heads * self.head_dim * seq_len  # QK^T and AV, causal avg x2
    return 6.0 * n_matmul + attn


# Sizes: tiny/small train on a CPU; 1b and 7b follow Llama-3.2-1B and Llama-2-7B shapes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=384, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                 mlp_dim=384),
    "small": dict(vocab_size=384, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4,
                  head_dim=32, mlp_dim=768),
    "1b": dict(vocab_size=128_256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
               head_dim=64, mlp_dim=8192, rope_theta=500_000.0, dtype="bfloat16", remat=True),
    "7b": dict(vocab_size=32_000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
               head_dim=128, mlp_dim=11008, tie_embeddings=False, dtype="bfloat16", remat=True),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model size {name!r}; available: {sorted(PRESETS)}.")
  return ModelConfig(**{**PRESETS[name], **overrides})


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
    out, new_cache = self.mix(x, positions, segment_ids, cache)
    return self.o_proj(out), new_cache

  def mix(self, x, positions, segment_ids, cache=None):
    """The heads' outputs ``[B, T, Hq * D]`` before ``o_proj`` (and the new cache)."""
    cfg = self.cfg
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = self.k_proj(x).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = self.v_proj(x).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    q = constrain(rope(q, positions, theta=cfg.rope_theta), ("batch", "seq", "act_heads", None))
    k = constrain(rope(k, positions, theta=cfg.rope_theta), ("batch", "seq", "act_kv", None))
    v = constrain(v, ("batch", "seq", "act_kv", None))
    if cache is not None and "levels" in cache:  # Hydragen: shared prefix levels + suffix
      out, new_cache = prefix_cache_attention(q, k, v, positions, cache)
      out = constrain(out.reshape(b, t, cfg.n_heads * cfg.head_dim),
                      ("batch", "seq", "act_heads"))
      return out, new_cache  # __call__ applies o_proj
    if cache is None:
      idx = jnp.arange(t)
      mask = ((idx[:, None] >= idx[None, :])[None]
              & (segment_ids[:, :, None] == segment_ids[:, None, :])
              & (segment_ids[:, :, None] != 0))
      new_cache = None
    else:
      rows = jnp.arange(b)[:, None]
      k = cache["k"].at[rows, positions].set(k.astype(cache["k"].dtype))
      v = cache["v"].at[rows, positions].set(v.astype(cache["v"].dtype))
      new_cache = {"k": k, "v": v}
      mask = jnp.arange(k.shape[1])[None, None, :] <= positions[:, :, None]
    out = attend(q, k, v, mask)
    out = constrain(out.reshape(b, t, cfg.n_heads * cfg.head_dim), ("batch", "seq", "act_heads"))
    return out, new_cache


def attend(q, k, v, mask):
  """Softmax attention with GQA. q: [B,T,Hq,D], k/v: [B,S,Hkv,D], mask: [B,T,S] (True=keep)."""
  b, t, hq, d = q.shape
  hkv = k.shape[2]
  q = q.reshape(b, t, hkv, hq // hkv, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype)).astype(jnp.float32)
  logits = logits * d**-0.5
  logits = jnp.where(mask[:, None, None], logits, -1e30)
  probs = jax.nn.softmax(logits, axis=-1)
  # Rows with no visible key (padding) give uniform probs over masked keys; zero them.
  probs = jnp.where(mask[:, None, None], probs, 0.0)
  out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
  return out.reshape(b, t, hq, d).astype(q.dtype)


def prefix_cache_attention(q, k, v, positions, cache):
  """Attention over shared prefix levels + the sequence's own suffix cache (Hydragen).

  ``cache``: ``{"k", "v": [B, S, Hkv, D]`` suffix cache, ``"levels"``: tuple of
  ``kernels_pallas.prefix_attention.PrefixLevel`` (prefix KV per sharing group, read once
  per group), ``"offset": int32[B]`` total prefix length of each sequence}. Token ``t`` at
  absolute position ``p`` (RoPE) is stored in suffix slot ``p - offset`` and attends to every
  prefix level plus suffix slots ``<= p - offset``; the parts are merged exactly via their
  log-sum-exps (see :mod:`kernels_pallas.prefix_attention`).
  """
  from kernels_pallas import prefix_attention as pa  # pylint: disable=g-import-not-at-top
  b = q.shape[0]
  rows = jnp.arange(b)[:, None]
  slots = positions - cache["offset"][:, None]
  suffix_k = cache["k"].at[rows, slots].set(k.astype(cache["k"].dtype))
  suffix_v = cache["v"].at[rows, slots].set(v.astype(cache["v"].dtype))
  out, _ = pa.shared_prefix_attention(q, cache["levels"], suffix_k, suffix_v, slots[:, -1] + 1,
                                      q_positions=slots, out_dtype=q.dtype)
  return out, {**cache, "k": suffix_k, "v": suffix_v}


class MLP(nnx.Module):
  """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.gate_proj = Linear(cfg.d_model, cfg.mlp_dim, logical_axes=("embed", "mlp"), rngs=rngs,
                            param_dtype=pd)
    self.up_proj = Linear(cfg.d_model, cfg.mlp_dim, logical_axes=("embed", "mlp"), rngs=rngs,
                          param_dtype=pd)
    self.down_proj = Linear(cfg.mlp_dim, cfg.d_model, logical_axes=("mlp", "embed"), rngs=rngs,
                            param_dtype=pd, std=cfg.mlp_dim**-0.5 / (2 * cfg.n_layers)**0.5)

  def __call__(self, x):
    return self.down_proj(self.hidden(x))

  def hidden(self, x):
    """``silu(gate(x)) * up(x)``: the input of ``down_proj``."""
    h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    return constrain(h, ("batch", "seq", "act_mlp"))


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
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
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd)
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


def split(model: Transformer):
  """``(graphdef, params)`` with ``params`` a nested dict of arrays."""
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def init(cfg: ModelConfig, seed: int = 0):
  """Builds the model and returns ``(graphdef, params)``."""
  return split(Transformer(cfg, rngs=nnx.Rngs(params=seed)))


def abstract_params(cfg: ModelConfig):
  """``(graphdef, params as ShapeDtypeStructs)`` without allocating anything."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
  return split(model)


def logical_axes(cfg: ModelConfig):
  """Pytree matching ``params`` whose leaves are the tuples of logical axis names."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
  _, state = nnx.split(model)
  out = jax.tree.map(lambda v: v.get_metadata().get("logical_axes"), state,
                     is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(out) if isinstance(out, nnx.State) else out


def apply(graphdef, params, tokens, positions=None, segment_ids=None, cache=None):
  """Pure forward pass: logits (and the new cache when ``cache`` is given)."""
  model = nnx.merge(graphdef, nnx.State(params))
  return model(tokens, positions, segment_ids, cache)


# --------------------------------------------------------------------------------------------
# One block at a time (post-training quantization walks the model block by block). These run
# the same modules as ``apply``: embed_tokens -> apply_block for every layer -> final_logits
# equals ``apply(graphdef, params, tokens, positions, segment_ids)``.
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _graphdefs(cfg: ModelConfig):
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
  block = nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(params=0)))
  return nnx.graphdef(model), nnx.graphdef(block)


def _positions_and_segments(tokens_or_x, positions, segment_ids):
  shape = tokens_or_x.shape[:2]
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(shape[1]), shape)
  if segment_ids is None:
    segment_ids = jnp.ones(shape, jnp.int32)
  return positions, segment_ids


def block_module(cfg: ModelConfig, block_params) -> Block:
  """The ``Block`` holding ``block_params`` (= ``params["layers"][i]``), to call its parts."""
  return nnx.merge(_graphdefs(cfg)[1], nnx.State(block_params))


def embed_tokens(cfg: ModelConfig, params, tokens):
  """The residual stream entering block 0: ``[B, T, d_model]`` in the compute dtype."""
  embed = nnx.merge(_graphdefs(cfg)[0], nnx.State(params)).embed
  return constrain(embed(tokens, jnp.dtype(cfg.dtype)), ("batch", "seq", "act_embed"))


def apply_block(cfg: ModelConfig, block_params, x, positions=None, segment_ids=None):
  """Block ``i``'s output for its input ``x`` (``block_params = params["layers"][i]``)."""
  positions, segment_ids = _positions_and_segments(x, positions, segment_ids)
  return block_module(cfg, block_params)(x, positions, segment_ids)[0]


def final_logits(cfg: ModelConfig, params, x):
  """Logits ``[B, T, vocab]`` (f32) from the last block's output."""
  model = nnx.merge(_graphdefs(cfg)[0], nnx.State(params))
  x = model.final_norm(x)
  logits = model.embed.attend(x) if cfg.tie_embeddings else model.lm_head(x)
  return constrain(logits.astype(jnp.float32), ("batch", "seq", "act_vocab"))


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


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(graphdef, params, tokens, positions, segment_ids):
  return apply(graphdef, params, tokens, positions, segment_ids)
