"""Attention for every model: one entry point, :func:`attend`, over three paths.

* **dense** (no cache): softmax attention that is causal *within* packed segments: token
  ``t`` attends to ``s <= t`` only when ``segment_ids[s] == segment_ids[t] != 0``, so
  documents packed into one row never see each other. Training and full forwards; with
  ``block > 0`` the same function computed blockwise (FlashAttention's algorithm, no
  ``[T, T]`` scores kept: :mod:`models.blockwise_attention`).
* **KV cache** (``{"k", "v": [B, S_max, Hkv, D]}`` indexed by absolute position): the new
  keys are written at their ``positions``; each query attends to every cached slot ``<=`` its
  own position. Decoding without shared prefixes.
* **Hydragen cache** (the same plus ``"levels"`` and ``"offset"``): shared prefix KV per
  sharing group (read once per group) plus the sequence's own suffix cache indexed by
  ``position - offset``; the parts are merged exactly through their log-sum-exps
  (:func:`kernels_pallas.prefix_attention.shared_prefix_attention`, which runs the Pallas
  kernel on GPU/TPU and its jnp reference elsewhere, per ``impl``).

:func:`dot_product_attention` is the one jnp softmax attention (GQA, boolean mask); the
kernels' tests use it as their oracle.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from core import sharding
from kernels_pallas import prefix_attention as pa
from kernels_pallas import sharded as sharded_kernels
from models.blockwise_attention import blockwise_attention


def dot_product_attention(q, k, v, mask, *, return_lse: bool = False):
  """Softmax attention with GQA: ``softmax(q k^T / sqrt(D), mask) v``.

  q: ``[B, T, Hq, D]``; k, v: ``[B, S, Hkv, D]`` (``Hq = G * Hkv``: query head ``h`` uses kv
  head ``h // G``); mask: ``[B, T, S]``, True = attend. Rows with no visible key give 0 (and
  ``lse = -inf``). Returns ``out [B, T, Hq, D]`` in q's dtype (and ``lse f32 [B, T, Hq]``).
  """
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
  out = out.reshape(b, t, hq, d).astype(q.dtype)
  if not return_lse:
    return out
  visible = jnp.any(mask, axis=-1)[:, None, None]  # [B, 1, 1, T]
  lse = jnp.where(visible, jax.nn.logsumexp(logits, axis=-1), -jnp.inf)  # [B, Hkv, G, T]
  return out, lse.reshape(b, hq, t).transpose(0, 2, 1)


def segment_mask(segment_ids):
  """``[B, T, T]``: causal and within the same non-zero segment."""
  t = segment_ids.shape[1]
  idx = jnp.arange(t)
  return ((idx[:, None] >= idx[None, :])[None]
          & (segment_ids[:, :, None] == segment_ids[:, None, :])
          & (segment_ids[:, :, None] != 0))


def attend(q, k, v, *, positions, segment_ids, cache=None, impl: str = "auto", block: int = 0):
  """Attention of q over k/v (and the cache): ``(out [B, T, Hq, D], new cache or None)``.

  q: ``[B, T, Hq, D]``; k, v: this call's ``[B, T, Hkv, D]`` (RoPE applied);
  positions, segment_ids: ``int32 [B, T]``; cache: None, a KV cache or a Hydragen cache
  (see the module docstring); impl: the kernel implementation of the Hydragen path
  (``kernels_pallas.common`` policy); block: without a cache, 0 = dense, > 0 = blockwise
  attention with this block size (the same function without the ``[T, T]`` scores:
  :mod:`models.blockwise_attention`).
  """
  if cache is None and block:
    return blockwise_attention(q, k, v, segment_ids, block_q=block, block_k=block), None
  if cache is None:
    return dot_product_attention(q, k, v, segment_mask(segment_ids)), None
  if "levels" in cache:
    return _hydragen(q, k, v, positions, cache, impl)
  rows = jnp.arange(q.shape[0])[:, None]
  k = cache["k"].at[rows, positions].set(k.astype(cache["k"].dtype))
  v = cache["v"].at[rows, positions].set(v.astype(cache["v"].dtype))
  mask = jnp.arange(k.shape[1])[None, None, :] <= positions[:, :, None]
  return dot_product_attention(q, k, v, mask), {"k": k, "v": v}


def _hydragen(q, k, v, positions, cache, impl):
  """Shared prefix levels + the sequence's own suffix cache (Hydragen, arXiv 2402.05099).

  ``cache``: ``{"k", "v": [B, S, Hkv, D]`` suffix cache, ``"levels"``: tuple of
  ``PrefixLevel`` (prefix KV per sharing group), ``"offset": int32[B]`` total prefix length
  of each sequence}. Token ``t`` at absolute position ``p`` (RoPE) is stored in suffix slot
  ``p - offset`` and attends to every prefix level plus suffix slots ``<= p - offset``.
  """
  rows = jnp.arange(q.shape[0])[:, None]
  slots = positions - cache["offset"][:, None]
  suffix_k = cache["k"].at[rows, slots].set(k.astype(cache["k"].dtype))
  suffix_v = cache["v"].at[rows, slots].set(v.astype(cache["v"].dtype))
  args = (q, cache["levels"], suffix_k, suffix_v, slots[:, -1] + 1)
  placed = _attention_mesh_axes(q.shape, suffix_k.shape)
  if placed:  # on a mesh: the kernel per (batch, heads) shard (kernels_pallas.sharded)
    mesh, batch_axes, head_axes = placed
    out, _ = sharded_kernels.shared_prefix_attention(
        *args, mesh=mesh, batch_axes=batch_axes, head_axes=head_axes, q_positions=slots,
        out_dtype=q.dtype, impl=impl)
  else:
    out, _ = pa.shared_prefix_attention(*args, q_positions=slots, out_dtype=q.dtype, impl=impl)
  return out, {**cache, "k": suffix_k, "v": suffix_v}


def _attention_mesh_axes(q_shape, kv_shape):
  """``(mesh, batch_axes, head_axes)`` under the active axis rules on a mesh of more than one
  device, else None. Batch by the ``batch`` rule; heads by ``act_heads`` when the kv heads
  (``act_kv``) split the same way (whole GQA groups per shard), else not split."""
  active = sharding.active()
  if active is None or active[1].size == 1:
    return None
  rules, mesh = active
  batch = sharding.logical_to_spec(("batch",), (q_shape[0],), rules, mesh)[0]
  q_heads = sharding.logical_to_spec(("act_heads",), (q_shape[2],), rules, mesh)[0]
  kv_heads = sharding.logical_to_spec(("act_kv",), (kv_shape[2],), rules, mesh)[0]
  return mesh, batch, q_heads if q_heads == kv_heads else None
