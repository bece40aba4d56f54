"""Memory-efficient training attention: FlashAttention's algorithm in plain ``jnp``.

Dense attention materializes the ``[T, S]`` score matrix of every head and keeps it for the
backward pass; at ``T = 2048`` that is most of a transformer's activation memory, and what
hid COAT's FP8 activation saving (issue 13). This computes the same function tile by tile
(FlashAttention, Dao et al. 2022, arXiv 2205.14135; FlashAttention-2, arXiv 2307.08691):

* forward, per query block ``i``, over key blocks ``j`` with an online softmax::

      s_ij = q_i k_j^T / sqrt(D)      m_i' = max(m_i, rowmax s_ij)
      l_i  = l_i e^(m_i - m_i') + rowsum e^(s_ij - m_i')
      o_i  = o_i e^(m_i - m_i') + e^(s_ij - m_i') v_j          out_i = o_i / l_i

  saving only ``out`` and ``lse_i = m_i + log l_i`` for the backward pass;
* backward (a ``jax.custom_vjp``), recomputing each tile's probabilities from ``lse``::

      p_ij = e^(s_ij - lse_i)     dv_j += p_ij^T do_i     dp_ij = do_i v_j^T
      ds_ij = p_ij (dp_ij - delta_i),  delta_i = rowsum(do_i * out_i)
      dq_i += ds_ij k_j / sqrt(D)     dk_j += ds_ij^T q_i / sqrt(D)

So the step's attention temporaries are ``O(block_q * block_k)`` per head instead of
``O(T * S)``. The mask is :func:`models.attention.segment_mask`'s (causal within non-zero
packed segments; a row with no visible key gives 0). Every tile is computed (no causal tile
skipping under ``lax.scan``), so it spends the dense path's FLOPs; on GPU/TPU a fused kernel
is faster, this is the portable memory-bounded path that any backend compiles.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_NEG = -1e30  # masked score: finite, so exp(_NEG - m) underflows to 0 without inf - inf


def _blocks(x, axis: int, size: int):
  """Splits ``axis`` into ``[n, size]`` and moves ``n`` to the front (for ``lax.scan``)."""
  shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis: int):
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])


def _tile_mask(qi, kj, q_seg, k_seg):
  """``[B, 1, 1, bq, bk]``: causal (by index) and within the same non-zero segment."""
  causal = qi[:, None] >= kj[None, :]
  same = (q_seg[:, :, None] == k_seg[:, None, :]) & (q_seg[:, :, None] != 0)
  return (causal[None] & same)[:, None, None]


def _scores(q, k, mask, scale):
  s = jnp.einsum("bkgtd,bskd->bkgts", q, k.astype(q.dtype)).astype(jnp.float32) * scale
  return jnp.where(mask, s, _NEG)


def _forward(q, k, v, seg, block_q, block_k):
  """``(out [B,K,G,T,D] f32, lse [B,K,G,T] f32)`` for grouped q ``[B,K,G,T,D]``."""
  b, nk, g, t, d = q.shape
  scale = d**-0.5
  kb, vb = _blocks(k, 1, block_k), _blocks(v, 1, block_k)
  kpos, kseg = _blocks(jnp.arange(t), 0, block_k), _blocks(seg, 1, block_k)

  def one_q_block(args):
    qi, qpos, qseg = args

    def step(carry, kv):
      m, l, acc = carry
      kj, vj, kp, ks = kv
      mask = _tile_mask(qpos, kp, qseg, ks)
      s = _scores(qi, kj, mask, scale)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      corr = jnp.exp(m - m_new)
      l = l * corr + p.sum(-1)
      acc = acc * corr[..., None] + jnp.einsum("bkgts,bskd->bkgtd", p.astype(vj.dtype), vj,
                                               preferred_element_type=jnp.float32)
      return (m_new, l, acc), None

    init = (jnp.full((b, nk, g, block_q), _NEG, jnp.float32),
            jnp.zeros((b, nk, g, block_q), jnp.float32),
            jnp.zeros((b, nk, g, block_q, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, kpos, kseg))
    seen = l > 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    return out, jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)

  out, lse = jax.lax.map(one_q_block, (_blocks(q, 3, block_q),
                                       _blocks(jnp.arange(t), 0, block_q),
                                       _blocks(seg, 1, block_q)))
  return _unblocks(out, 3), _unblocks(lse, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, seg, block_q, block_k):
  out, _ = _forward(q, k, v, seg, block_q, block_k)
  return out.astype(q.dtype)


def _attention_fwd(q, k, v, seg, block_q, block_k):
  out, lse = _forward(q, k, v, seg, block_q, block_k)
  out = out.astype(q.dtype)
  return out, (q, k, v, seg, out, lse)


def _attention_bwd(block_q, block_k, res, dout):
  q, k, v, seg, out, lse = res
  b, nk, g, t, d = q.shape
  scale = d**-0.5
  delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1)  # [B,K,G,T]
  qb, dob = _blocks(q, 3, block_q), _blocks(dout, 3, block_q)
  lseb, deltab = _blocks(lse, 3, block_q), _blocks(delta, 3, block_q)
  qpos, qseg = _blocks(jnp.arange(t), 0, block_q), _blocks(seg, 1, block_q)

  # The accumulators start from a zero that depends on ``dout``, so XLA allocates them in this
  # layer's backward pass. Operand-less zeros (``jnp.zeros``, a scan's stacked outputs) are
  # merged across layers into one fusion and materialized early, in the forward pass or at
  # the start of the backward, and stay live through every later layer's backward: 12 KiB
  # per token per layer of lm_1b's compiled H200 step with fp8_activations (f32 dq, dk, dv).
  # x * 0 is not folded for floats (NaN semantics); a non-finite dout[0] makes every
  # gradient NaN, as it would make the loss's anyway.
  zero = dout[(0,) * dout.ndim].astype(jnp.float32) * 0.0
  nkb = t // block_k

  def one_k_block(carry, kv):
    dq, dkv = carry
    j, kj, vj, kp, ks = kv

    def step(carry, qs):
      dk, dv, dq = carry
      i, qi, doi, lsei, deltai, qp, qsg = qs
      mask = _tile_mask(qp, kp, qsg, ks)
      s = _scores(qi, kj, mask, scale)
      p = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isfinite(lsei), lsei, 0.0)[..., None]), 0.0)
      dv = dv + jnp.einsum("bkgts,bkgtd->bskd", p, doi.astype(jnp.float32))
      dp = jnp.einsum("bkgtd,bskd->bkgts", doi.astype(jnp.float32), vj.astype(jnp.float32))
      ds = p * (dp - deltai[..., None]) * scale
      dk = dk + jnp.einsum("bkgts,bkgtd->bskd", ds, qi.astype(jnp.float32))
      dqi = jnp.einsum("bkgts,bskd->bkgtd", ds, kj.astype(jnp.float32))
      dq = jax.lax.dynamic_update_slice_in_dim(
          dq, jax.lax.dynamic_slice_in_dim(dq, i * block_q, block_q, 3) + dqi, i * block_q, 3)
      return (dk, dv, dq), None

    zeros = jnp.full((b, block_k, nk, d), zero)
    (dk, dv, dq), _ = jax.lax.scan(
        step, (zeros, zeros, dq),
        (jnp.arange(t // block_q), qb, dob, lseb, deltab, qpos, qseg))
    dkv = jax.lax.dynamic_update_index_in_dim(dkv, jnp.stack([dk, dv]), j, 1)
    return (dq, dkv), None

  (dq, dkv), _ = jax.lax.scan(
      one_k_block, (jnp.full(q.shape, zero), jnp.full((2, nkb, b, block_k, nk, d), zero)),
      (jnp.arange(nkb), _blocks(k, 1, block_k), _blocks(v, 1, block_k),
       _blocks(jnp.arange(t), 0, block_k), _blocks(seg, 1, block_k)))
  return (dq.astype(q.dtype), _unblocks(dkv[0], 1).astype(k.dtype),
          _unblocks(dkv[1], 1).astype(v.dtype), None)


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(q, k, v, segment_ids, *, block_q: int = 512, block_k: int = 512):
  """Causal, segment-masked softmax attention without the ``[T, T]`` matrix.

  q: ``[B, T, Hq, D]``; k, v: ``[B, T, Hkv, D]`` (``Hq = G * Hkv``); segment_ids:
  ``int32 [B, T]`` (0 = padding). Equals ``dot_product_attention(q, k, v,
  segment_mask(segment_ids))`` and its gradients to float tolerance. ``T`` is padded up to a
  multiple of the block sizes with segment 0 (never attended, output dropped).
  """
  b, t, hq, d = q.shape
  hkv = k.shape[2]
  if hq % hkv:
    raise ValueError(f"query heads {hq} must be a multiple of key/value heads {hkv}.")
  if block_q <= 0 or block_k <= 0:
    raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}.")
  block_q, block_k = min(block_q, t), min(block_k, t)
  pad = -t % math.lcm(block_q, block_k)
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
  tp = t + pad
  qg = q.reshape(b, tp, hkv, hq // hkv, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
  out = _attention(qg, k, v, segment_ids.astype(jnp.int32), block_q, block_k)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, tp, hq, d)[:, :t]
