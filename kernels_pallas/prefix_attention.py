"""Hydragen shared-prefix attention: prefix/suffix decomposition with an exact LSE merge.

Hydragen (Juravsky et al. 2024, "Hydragen: High-Throughput LLM Inference with Shared
Prefixes", arXiv 2402.05099). Split the keys of a sequence into a shared prefix and the
sequence's own suffix, ``K = K1 || K2`` (same for ``V``). With
``SDP(Q, K, V) = softmax(Q K^T * scale) V`` and ``LSE = logsumexp(Q K^T * scale)`` (natural
log, f32), attention over the whole is the exact merge of the parts (paper App. A):

    O = (O1 * exp(LSE1) + O2 * exp(LSE2)) / (exp(LSE1) + exp(LSE2))
    LSE = log(exp(LSE1) + exp(LSE2))

computed with max-subtraction so that it never overflows and ``LSE = -inf`` (a part with
no keys, ``O = 0``) drops out. The prefix part is batched across sequences (paper §3.2):
the queries of all B sequences sharing one prefix form one matrix against the prefix KV,
which is read from memory once instead of B times. Tree sharing (paper §3.3) applies the
decomposition at every level (system prompt -> few-shot -> question) and merges all parts.

Shapes (layout ``[batch, seq, heads, head_dim]``, GQA with ``Hq = G * Hkv``; query head
``hq`` uses kv head ``hq // G``, the Llama ``repeat_kv`` order):

* ``q``: ``[B, Sq, Hq, D]`` (decode: ``Sq = 1``).
* one prefix: ``prefix_k, prefix_v``: ``[P, Hkv, D]``, optional valid length ``prefix_len``.
* grouped prefixes (one per sharing group, groups contiguous in the batch):
  ``[num_groups, P, Hkv, D]`` with static ``group_sizes`` summing to B and optional valid
  lengths ``int32[num_groups]``.
* suffix: ``k, v``: ``[B, S, Hkv, D]`` with valid lengths ``kv_lengths: int32[B]``.
  Queries are the last ``Sq`` valid suffix tokens by default (query ``s`` sits at suffix
  position ``kv_lengths - Sq + s``) and attend causally; ``kv_lengths = 0`` is an empty
  suffix (``lse = -inf``, ``out = 0``).
* results: ``out [B, Sq, Hq, D]``, ``lse f32[B, Sq, Hq]``.

Kernel view. GQA groups and sequences are folded into query rows: for kv head ``h`` of a
sharing group ``n``, rows ``(sequence, s, g)`` (``M = n_seq * Sq * G`` of them) all attend
the same keys, so every kernel computes ``[N, Hkv, M, D] x [N, S, Hkv, D]`` with a per-row
"last visible key" (``-1``: none), which expresses the prefix length, the suffix lengths and
the causal mask alike. The kernels are flash-attention style (online softmax over KV
blocks, f32 accumulation) and return the natural-log LSE. The GPU kernel (Triton-style
Pallas) tiles rows and splits the KV sequence across programs (split-KV, merged in XLA) so
that a decode step with few rows still fills the GPU while each prefix key is read once;
the TPU kernel (Mosaic) walks KV blocks in an "arbitrary" grid axis with VMEM scratch.
K/V are viewed as ``[N, S, Hkv * D]`` (a free reshape) and a block picks head ``h``'s D
columns, so no KV copy or transpose is made.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from kernels_pallas import common

# Block sizes per (impl, regime); regime is "decode" for Sq == 1, else "prefill".
# UNTUNED: sensible first guesses until the H200 / TPU benchmark runs
# (benchmarks/prefix_attention.py --sweep-blocks). block_m is capped to the rows present.


@dataclasses.dataclass(frozen=True)
class GpuBlocks:
  """Triton tiles: ``block_m`` query rows x ``block_k`` keys (powers of two >= 16); the KV
  axis is split until ``min_programs`` programs run (~2 per H200 SM: 132)."""
  block_m: int
  block_k: int
  num_warps: int
  num_stages: int
  min_programs: int

  def __post_init__(self):
    for name in ("block_m", "block_k"):
      common.require_pow2("GpuBlocks", name, getattr(self, name), 16)
    for name in ("num_warps", "num_stages", "min_programs"):
      common.require_multiple("GpuBlocks", name, getattr(self, name), 1)


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
  """Mosaic tiles: ``block_m`` query rows x ``block_k`` keys, each a multiple of the 8
  sublanes of a tile (they are the second-minor dims of the q and K/V blocks)."""
  block_m: int
  block_k: int

  def __post_init__(self):
    common.require_multiple("TpuBlocks", "block_m", self.block_m, 8, "sublanes")
    common.require_multiple("TpuBlocks", "block_k", self.block_k, 8, "sublanes")


BLOCK_SIZES = {
    ("pallas_gpu", "decode"): GpuBlocks(block_m=64, block_k=64, num_warps=4, num_stages=3,
                                        min_programs=264),
    ("pallas_gpu", "prefill"): GpuBlocks(block_m=128, block_k=64, num_warps=8, num_stages=2,
                                         min_programs=264),
    ("pallas_tpu", "decode"): TpuBlocks(block_m=128, block_k=512),
    ("pallas_tpu", "prefill"): TpuBlocks(block_m=256, block_k=512),
}
BLOCKS_TYPE = {"pallas_gpu": GpuBlocks, "pallas_tpu": TpuBlocks}


def regime(sq: int) -> str:
  return "decode" if sq == 1 else "prefill"


@struct.dataclass
class PrefixLevel:
  """One sharing level of a prefix tree: a prefix per group of consecutive sequences.

  ``k, v``: ``[num_groups, P, Hkv, D]`` (groups padded to a common ``P``);
  ``group_sizes``: static, ``len == num_groups``, sums to the batch: group ``i`` is the next
  ``group_sizes[i]`` sequences of the batch; ``lengths``: optional ``int32[num_groups]``
  valid prefix lengths (None: all ``P`` keys are valid).
  """
  k: jax.Array
  v: jax.Array
  group_sizes: tuple = struct.field(pytree_node=False)
  lengths: jax.Array | None = None


# ----------------------------------------------------------------------------------------
# Merge.


def merge_attention(outs: Sequence[jax.Array], lses: Sequence[jax.Array]):
  """Exact merge of partial attentions over disjoint key sets.

  Args:
    outs: partial outputs, each ``[..., D]`` (same shape).
    lses: their natural-log LSEs, each ``[...]``; ``-inf`` marks a part with no keys.
  Returns:
    ``(out f32 [..., D], lse f32 [...])``, attention over the union of the key sets.
  """
  if len(outs) != len(lses) or not outs:
    raise ValueError(f"merge_attention needs as many outs as lses (>= 1), got {len(outs)} "
                     f"outs and {len(lses)} lses.")
  for o, l in zip(outs, lses):
    if o.shape != outs[0].shape or l.shape != o.shape[:-1]:
      raise ValueError(f"merge_attention: every out must be {outs[0].shape} and every lse "
                       f"{outs[0].shape[:-1]}; got out {o.shape}, lse {l.shape}.")
  return _merge_stacked(jnp.stack([o.astype(jnp.float32) for o in outs]),
                        jnp.stack([l.astype(jnp.float32) for l in lses]))


@jax.jit
def _merge_stacked(outs, lses):
  """merge_attention over axis 0 of stacked ``outs [K, ..., D]``, ``lses [K, ...]``."""
  m = jnp.max(lses, axis=0)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)  # all parts empty: m = -inf
  w = jnp.exp(lses - m_safe)  # exp(-inf) = 0 drops empty parts
  w_sum = jnp.sum(w, axis=0)
  weighted = jnp.where(w[..., None] > 0, w[..., None] * outs, 0.0)
  out = jnp.sum(weighted, axis=0) / jnp.where(w_sum > 0, w_sum, 1.0)[..., None]
  lse = jnp.where(w_sum > 0, m_safe + jnp.log(jnp.where(w_sum > 0, w_sum, 1.0)), -jnp.inf)
  return out, lse


# ----------------------------------------------------------------------------------------
# Row-folded attention core: q_rows [N, Hkv, M, D], k/v [N, S, Hkv, D], row_limit [N, M].


def _reference_rows(q_rows, k, v, row_limit, sm_scale):
  s = jnp.einsum("nhmd,nshd->nhms", q_rows, k,
                 preferred_element_type=jnp.float32) * sm_scale
  key = jnp.arange(k.shape[1], dtype=jnp.int32)
  visible = key[None, None, None, :] <= row_limit[:, None, :, None]
  s = jnp.where(visible, s, -jnp.inf)
  m = jnp.max(s, axis=-1, initial=-jnp.inf)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(s - m_safe[..., None])
  l = jnp.sum(p, axis=-1)
  l_safe = jnp.where(l > 0, l, 1.0)
  out = jnp.einsum("nhms,nshd->nhmd", p, v.astype(jnp.float32)) / l_safe[..., None]
  lse = jnp.where(l > 0, m_safe + jnp.log(l_safe), -jnp.inf)
  return out, lse


def _online_softmax_step(q, k, v, visible, carry, sm_scale):
  """One KV block of flash attention; shared by the GPU and TPU kernels."""
  acc, m, l = carry
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32) * sm_scale
  s = jnp.where(visible, s, -jnp.inf)
  m_new = jnp.maximum(m, jnp.max(s, axis=1))
  m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no visible key yet: avoid inf - inf
  alpha = jnp.exp(m - m_safe)
  p = jnp.exp(s - m_safe[:, None])
  l = l * alpha + jnp.sum(p, axis=1)
  acc = acc * alpha[:, None] + jax.lax.dot_general(
      p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return acc, m_new, l


def _finalize(acc, m, l):
  has_keys = l > 0
  out = acc / jnp.where(has_keys, l, 1.0)[:, None]
  lse = jnp.where(has_keys, jnp.where(m == -jnp.inf, 0.0, m) + jnp.log(
      jnp.where(has_keys, l, 1.0)), -jnp.inf)
  return out, lse


def _gpu_kernel(limit_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, sm_scale, block_k,
                kv_per_split, seq_len):
  split_start = pl.program_id(3) * kv_per_split
  q = q_ref[...]
  limit = limit_ref[...]
  block_m, head_dim = q.shape
  # Only walk KV blocks that some row of this tile can see (lengths, causal, padding).
  last_key = jnp.minimum(jnp.max(limit), seq_len - 1)
  num_blocks = jnp.clip(pl.cdiv(last_key + 1 - split_start, block_k), 0,
                        kv_per_split // block_k)

  def body(j, carry):
    key = split_start + j * block_k + jnp.arange(block_k, dtype=jnp.int32)
    in_bounds = (key < seq_len)[:, None]
    rows = pl.ds(j * block_k, block_k)
    k = plgpu.load(k_ref.at[rows, :], mask=in_bounds, other=0.0)
    v = plgpu.load(v_ref.at[rows, :], mask=in_bounds, other=0.0)
    visible = key[None, :] <= limit[:, None]
    return _online_softmax_step(q, k, v, visible, carry, sm_scale)

  carry = (jnp.zeros((block_m, head_dim), jnp.float32),
           jnp.full((block_m,), -jnp.inf, jnp.float32), jnp.zeros((block_m,), jnp.float32))
  out, lse = _finalize(*jax.lax.fori_loop(0, num_blocks, body, carry))
  o_ref[...] = out
  lse_ref[...] = lse


def _pallas_gpu_rows(q_rows, k, v, row_limit, sm_scale, blocks, interpret, real_rows):
  n, hkv, m_pad, d = q_rows.shape
  seq_len = k.shape[1]
  block_m, block_k = blocks.block_m, blocks.block_k
  num_row_blocks = m_pad // block_m
  kv_blocks = pl.cdiv(seq_len, block_k)
  programs = n * hkv * num_row_blocks
  splits = min(kv_blocks, max(1, pl.cdiv(blocks.min_programs, programs)))
  kv_per_split = pl.cdiv(kv_blocks, splits) * block_k
  splits = pl.cdiv(seq_len, kv_per_split)  # no split may start past the end
  k2 = k.reshape(n, seq_len, hkv * d)
  v2 = v.reshape(n, seq_len, hkv * d)
  kernel = functools.partial(_gpu_kernel, sm_scale=sm_scale, block_k=block_k,
                             kv_per_split=kv_per_split, seq_len=seq_len)
  out, lse = pl.pallas_call(
      kernel,
      grid=(n, hkv, num_row_blocks, splits),
      in_specs=[
          pl.BlockSpec((None, block_m), lambda b, h, i, s: (b, i)),
          pl.BlockSpec((None, None, block_m, d), lambda b, h, i, s: (b, h, i, 0)),
          pl.BlockSpec((None, kv_per_split, d), lambda b, h, i, s: (b, s, h)),
          pl.BlockSpec((None, kv_per_split, d), lambda b, h, i, s: (b, s, h)),
      ],
      out_specs=[
          pl.BlockSpec((None, None, None, block_m, d), lambda b, h, i, s: (s, b, h, i, 0)),
          pl.BlockSpec((None, None, None, block_m), lambda b, h, i, s: (s, b, h, i)),
      ],
      out_shape=[jax.ShapeDtypeStruct((splits, n, hkv, m_pad, d), jnp.float32),
                 jax.ShapeDtypeStruct((splits, n, hkv, m_pad), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps,
                                           num_stages=blocks.num_stages),
      cost_estimate=cost_estimate(q_rows, k, real_rows),
      interpret=interpret,
      name="prefix_attention_gpu",
  )(row_limit, q_rows, k2, v2)
  if splits == 1:
    return out[0], lse[0]
  return _merge_stacked(out, lse)


def _tpu_kernel(last_key_ref, limit_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, acc_ref,
                m_ref, l_ref, *, sm_scale, block_k, seq_len):
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)
    m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
    l_ref[...] = jnp.zeros_like(l_ref)

  @pl.when(j * block_k <= last_key_ref[b, i])  # skip blocks no row of this tile sees
  def _step():
    key = j * block_k + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
    visible = key <= limit_ref[...]  # [block_m, 1] vs [1, block_k]
    # The last block may run past the end of K/V: zero V there (garbage * 0 may be NaN).
    key_col = j * block_k + jax.lax.broadcasted_iota(jnp.int32, (block_k, 1), 0)
    v = jnp.where(key_col < seq_len, v_ref[...], 0).astype(v_ref.dtype)
    carry = (acc_ref[...], m_ref[...][:, 0], l_ref[...][:, 0])
    acc, m, l = _online_softmax_step(q_ref[...], k_ref[...], v, visible, carry, sm_scale)
    acc_ref[...] = acc
    m_ref[...] = m[:, None]
    l_ref[...] = l[:, None]

  @pl.when(j == pl.num_programs(3) - 1)
  def _done():
    out, lse = _finalize(acc_ref[...], m_ref[...][:, 0], l_ref[...][:, 0])
    o_ref[...] = out
    lse_ref[...] = lse[:, None]


def _pallas_tpu_rows(q_rows, k, v, row_limit, sm_scale, blocks, interpret, real_rows):
  n, hkv, m_pad, d = q_rows.shape
  seq_len = k.shape[1]
  block_m = blocks.block_m
  block_k = min(blocks.block_k, _round_up(seq_len, 8))
  num_row_blocks, kv_blocks = m_pad // block_m, pl.cdiv(seq_len, block_k)
  # Last visible key per row tile: decides which KV blocks are computed, and the K/V index
  # maps clamp to it so that skipped blocks repeat the previous block (no new DMA).
  last_key = jnp.minimum(row_limit.reshape(n, num_row_blocks, block_m).max(-1), seq_len - 1)

  def kv_map(b, h, i, j, last_ref):
    # lax.div: truncating division of a non-negative value (floor division lowers to a
    # sign op that Mosaic cannot lower without a TPU to query).
    return b, jnp.minimum(j, jax.lax.div(jnp.maximum(last_ref[b, i], 0), block_k)), h

  kernel = functools.partial(_tpu_kernel, sm_scale=sm_scale, block_k=block_k,
                             seq_len=seq_len)
  out, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1,
          grid=(n, hkv, num_row_blocks, kv_blocks),
          in_specs=[
              pl.BlockSpec((None, block_m, 1), lambda b, h, i, j, _: (b, i, 0)),
              pl.BlockSpec((None, None, block_m, d), lambda b, h, i, j, _: (b, h, i, 0)),
              pl.BlockSpec((None, block_k, d), kv_map),
              pl.BlockSpec((None, block_k, d), kv_map),
          ],
          out_specs=[
              pl.BlockSpec((None, None, block_m, d), lambda b, h, i, j, _: (b, h, i, 0)),
              pl.BlockSpec((None, None, block_m, 1), lambda b, h, i, j, _: (b, h, i, 0)),
          ],
          scratch_shapes=[pltpu.VMEM((block_m, d), jnp.float32),
                          pltpu.VMEM((block_m, 1), jnp.float32),
                          pltpu.VMEM((block_m, 1), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct((n, hkv, m_pad, d), jnp.float32),
                 jax.ShapeDtypeStruct((n, hkv, m_pad, 1), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      cost_estimate=cost_estimate(q_rows, k, real_rows),
      interpret=interpret,
      name="prefix_attention_tpu",
  )(last_key.astype(jnp.int32), row_limit[..., None], q_rows,
    k.reshape(n, seq_len, hkv * d), v.reshape(n, seq_len, hkv * d))
  return out, lse[..., 0]


def _round_up(x, m):
  return -(-x // m) * m


def cost_estimate(q_rows, k, real_rows: int) -> pl.CostEstimate:
  """The reference's cost for ``real_rows`` query rows per (group, kv head): ``QK^T`` and
  ``PV`` (``4 * rows * S * D`` FLOPs), one exp per score, and q/k/v/out/lse bytes once."""
  n, hkv, _, d = q_rows.shape
  seq = k.shape[1]
  rows = n * hkv * real_rows
  itemsize = jnp.dtype(k.dtype).itemsize
  return pl.CostEstimate(
      flops=int(4 * rows * seq * d), transcendentals=int(rows * seq),
      bytes_accessed=int(rows * d * (q_rows.dtype.itemsize + 4) + rows * 4
                         + 2 * n * seq * hkv * d * itemsize))


def _why_not(impl, head_dim, hkv, block_sizes):
  """None when ``impl`` can tile these heads with these block sizes, else the reason."""
  try:
    common.check_block_sizes(block_sizes, BLOCKS_TYPE[impl], "prefix_attention")
  except ValueError as e:
    return str(e)
  if impl == "pallas_gpu" and (head_dim < 16 or head_dim & (head_dim - 1)):
    return (f"pallas_gpu needs a power-of-two head_dim >= 16, got {head_dim}; use "
            "impl='reference' or pad the heads.")
  if impl == "pallas_tpu" and head_dim % 128 and hkv != 1:
    return (f"pallas_tpu needs head_dim % 128 == 0 (or one kv head), got head_dim={head_dim};"
            " use impl='reference'.")
  return None


def _attention_rows(q_rows, k, v, row_limit, *, sm_scale, impl, interpret, blocks, rows):
  """Dispatch the folded-row attention; q_rows' M is already padded for ``impl``."""
  if k.shape[1] == 0:  # nothing to attend: empty suffix
    shape = q_rows.shape
    return jnp.zeros(shape, jnp.float32), jnp.full(shape[:-1], -jnp.inf, jnp.float32)
  if impl == "reference":
    return _reference_rows(q_rows, k, v, row_limit, sm_scale)
  run = _pallas_gpu_rows if impl == "pallas_gpu" else _pallas_tpu_rows
  return run(q_rows, k, v, row_limit, sm_scale, blocks, interpret, rows)


def _blocks_for(impl, sq, rows, block_sizes):
  """The impl's block sizes with ``block_m`` capped to the rows present (None: reference)."""
  if impl == "reference":
    return None
  blocks = block_sizes or BLOCK_SIZES[(impl, regime(sq))]
  cap = max(16, pl.next_power_of_2(rows)) if impl == "pallas_gpu" else _round_up(rows, 8)
  return dataclasses.replace(blocks, block_m=min(blocks.block_m, cap))


# ----------------------------------------------------------------------------------------
# Folding sequences and GQA groups into rows, and back.


def _check_qkv(q, k, v, what):
  if q.ndim != 4:
    raise ValueError(f"q must be [B, Sq, Hq, D], got shape {q.shape}.")
  if k.shape != v.shape:
    raise ValueError(f"{what}_k and {what}_v must have the same shape, got {k.shape} and "
                     f"{v.shape}.")
  hkv, d = k.shape[-2:]
  if d != q.shape[-1]:
    raise ValueError(f"head_dim of q ({q.shape[-1]}) and {what}_k ({d}) differ; they must "
                     f"match.")
  if hkv == 0 or q.shape[2] % hkv:
    raise ValueError(f"q heads Hq={q.shape[2]} must be a multiple of the {what} kv heads "
                     f"Hkv={hkv} (GQA); check the head axes ([B, S, H, D] layout).")
  return q.shape[2] // hkv


def _check_groups(group_sizes, num_groups, batch):
  sizes = tuple(int(s) for s in group_sizes)
  if len(sizes) != num_groups or any(s <= 0 for s in sizes) or sum(sizes) != batch:
    raise ValueError(f"group_sizes={tuple(group_sizes)} must be {num_groups} positive sizes "
                     f"(one per prefix group) summing to the batch size {batch}; order the "
                     f"batch so that each sharing group is contiguous.")
  return sizes


def _fold(q, hkv, group_sizes, m_multiple):
  """q [B,Sq,Hq,D] -> q_rows [N, Hkv, M_pad, D], rows (seq in group, s, g) of each group."""
  b, sq, hq, d = q.shape
  g, n, size = hq // hkv, len(group_sizes), max(group_sizes)
  q6 = q.reshape(b, sq, hkv, g, d)
  if len(set(group_sizes)) == 1:
    q6 = q6.reshape(n, size, sq, hkv, g, d)
  else:  # uneven groups: pad every group to the largest with copies of its first sequence
    starts = np.cumsum((0,) + group_sizes[:-1])
    idx = np.array([[st + min(j, sz - 1) for j in range(size)]
                    for st, sz in zip(starts, group_sizes)])
    q6 = q6[idx.reshape(-1)].reshape(n, size, sq, hkv, g, d)
  rows = size * sq * g
  q_rows = q6.transpose(0, 3, 1, 2, 4, 5).reshape(n, hkv, rows, d)
  m_pad = _round_up(rows, m_multiple)
  return jnp.pad(q_rows, ((0, 0), (0, 0), (0, m_pad - rows), (0, 0))), rows


def _unfold(out, lse, q_shape, group_sizes, rows):
  b, sq, hq, d = q_shape
  n, hkv = out.shape[:2]
  size, g = max(group_sizes), hq // out.shape[1]
  out = out[:, :, :rows].reshape(n, hkv, size, sq, g, d).transpose(0, 2, 3, 1, 4, 5)
  lse = lse[:, :, :rows].reshape(n, hkv, size, sq, g).transpose(0, 2, 3, 1, 4)
  out, lse = out.reshape(n * size, sq, hq, d), lse.reshape(n * size, sq, hq)
  if len(set(group_sizes)) != 1:
    idx = np.concatenate([gi * size + np.arange(sz) for gi, sz in enumerate(group_sizes)])
    out, lse = out[idx], lse[idx]
  return out, lse


def _row_limits(per_seq_limit, group_sizes, sq, g, m_pad):
  """per_seq_limit int32 [B, Sq] -> row_limit [N, M_pad]; padding rows see no key (-1)."""
  n, size = len(group_sizes), max(group_sizes)
  starts = np.cumsum((0,) + group_sizes[:-1])
  idx = np.array([[st + min(j, sz - 1) for j in range(size)]
                  for st, sz in zip(starts, group_sizes)])
  real = np.array([[j < sz for j in range(size)] for sz in group_sizes])
  lim = jnp.where(real[..., None], per_seq_limit[idx.reshape(-1)].reshape(n, size, sq), -1)
  lim = jnp.broadcast_to(lim[..., None], (n, size, sq, g)).reshape(n, size * sq * g)
  return jnp.pad(lim, ((0, 0), (0, m_pad - lim.shape[1])), constant_values=-1)


def _grouped_attention(q, k, v, per_seq_limit, group_sizes, *, sm_scale, impl, interpret,
                       block_sizes, out_dtype):
  """q [B,Sq,Hq,D] vs k/v [N,S,Hkv,D]; sequence b of group n sees keys <= its limit."""
  b, sq, hq, d = q.shape
  hkv = k.shape[2]
  impl = common.resolve_impl(impl, kernel="prefix_attention",
                             why_not=lambda i: _why_not(i, d, hkv, block_sizes))
  rows = max(group_sizes) * sq * (hq // hkv)
  blocks = _blocks_for(impl, sq, rows, block_sizes)
  interpret = bool(interpret or common.interpret_kernels()) and impl != "reference"
  return _grouped_attention_jit(q, k, v, per_seq_limit, group_sizes=group_sizes,
                                sm_scale=sm_scale, impl=impl, interpret=interpret,
                                blocks=blocks, out_dtype=out_dtype)


@functools.partial(jax.jit, static_argnames=("group_sizes", "sm_scale", "impl", "interpret",
                                             "blocks", "out_dtype"))
def _grouped_attention_jit(q, k, v, per_seq_limit, *, group_sizes, sm_scale, impl,
                           interpret, blocks, out_dtype):
  b, sq, hq, d = q.shape
  hkv = k.shape[2]
  rows_per_group = max(group_sizes) * sq * (hq // hkv)
  q_rows, rows = _fold(q, hkv, group_sizes, blocks.block_m if blocks else rows_per_group)
  row_limit = _row_limits(per_seq_limit.astype(jnp.int32), group_sizes, sq, hq // hkv,
                          q_rows.shape[2])
  scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
  out, lse = _attention_rows(q_rows, k, v, row_limit, sm_scale=scale, impl=impl,
                             interpret=interpret, blocks=blocks, rows=rows)
  out, lse = _unfold(out, lse, q.shape, group_sizes, rows)
  return out.astype(out_dtype or jnp.float32), lse


# ----------------------------------------------------------------------------------------
# Public API.


def prefix_attention(q, prefix_k, prefix_v, *, prefix_len=None, group_sizes=None,
                     sm_scale=None, impl="auto", interpret=False, block_sizes=None,
                     out_dtype=None):
  """Attention of all queries sharing a prefix to that prefix (no causal mask inside it).

  Args:
    q: ``[B, Sq, Hq, D]``.
    prefix_k, prefix_v: ``[P, Hkv, D]`` (one prefix for the whole batch) or
      ``[N, P, Hkv, D]`` (one per sharing group, with ``group_sizes``).
    prefix_len: valid prefix length(s) of a padded buffer: int / int32 scalar, or
      ``int32[N]``; None means all P keys.
    group_sizes: static sizes of the N contiguous sharing groups (default: one group).
    sm_scale: softmax scale, default ``1/sqrt(D)``.
    impl: "auto" | "reference" | "pallas_gpu" | "pallas_tpu"; interpret: run Pallas in
      interpret mode (CPU tests); block_sizes: a ``GpuBlocks`` / ``TpuBlocks`` replacing
      the ``BLOCK_SIZES`` entry of the impl and regime.
    out_dtype: dtype of ``out`` (default f32: a partial result meant to be merged).
  Returns:
    ``(out [B, Sq, Hq, D], lse f32 [B, Sq, Hq])``, natural-log LSE.
  """
  if prefix_k.ndim == 3:
    prefix_k, prefix_v = prefix_k[None], prefix_v[None]
  if prefix_k.ndim != 4:
    raise ValueError(f"prefix_k must be [P, Hkv, D] or [N, P, Hkv, D], got {prefix_k.shape}.")
  _check_qkv(q, prefix_k, prefix_v, "prefix")
  b, sq = q.shape[:2]
  n, p = prefix_k.shape[:2]
  sizes = _check_groups((b,) if group_sizes is None and n == 1 else group_sizes or (), n, b)
  lengths = jnp.broadcast_to(jnp.asarray(p if prefix_len is None else prefix_len,
                                         jnp.int32), (n,))
  seq_lengths = jnp.repeat(lengths, np.array(sizes), total_repeat_length=b)
  per_seq_limit = jnp.broadcast_to(jnp.minimum(seq_lengths, p)[:, None] - 1, (b, sq))
  return _grouped_attention(q, prefix_k, prefix_v, per_seq_limit, sizes, sm_scale=sm_scale,
                            impl=impl, interpret=interpret, block_sizes=block_sizes,
                            out_dtype=out_dtype)


def suffix_attention(q, k, v, kv_lengths, *, q_positions=None, causal=True, sm_scale=None,
                     impl="auto", interpret=False, block_sizes=None, out_dtype=None):
  """Per-sequence attention over each sequence's own (suffix) KV cache.

  Args:
    q: ``[B, Sq, Hq, D]``; k, v: ``[B, S, Hkv, D]``; kv_lengths: ``int32[B]`` valid keys
      (0 = empty suffix: ``out = 0``, ``lse = -inf``).
    q_positions: ``int32[B, Sq]`` suffix position of each query; default: the queries are
      the last Sq valid tokens, ``kv_lengths[:, None] - Sq + arange(Sq)``.
    causal: query at position t sees keys ``<= t`` (and ``< kv_lengths``); False: all
      valid keys. Other args as in :func:`prefix_attention`.
  Returns:
    ``(out [B, Sq, Hq, D], lse f32 [B, Sq, Hq])``.
  """
  _check_qkv(q, k, v, "suffix")
  b, sq = q.shape[:2]
  if k.ndim != 4 or k.shape[0] != b:
    raise ValueError(f"suffix k must be [B={b}, S, Hkv, D], got {k.shape}.")
  kv_lengths = jnp.asarray(kv_lengths, jnp.int32)
  if kv_lengths.shape != (b,):
    raise ValueError(f"kv_lengths must be int32[{b}], got shape {kv_lengths.shape}.")
  limit = jnp.broadcast_to(jnp.minimum(kv_lengths, k.shape[1])[:, None] - 1, (b, sq))
  if causal:
    if q_positions is None:
      q_positions = kv_lengths[:, None] - sq + jnp.arange(sq, dtype=jnp.int32)
    elif q_positions.shape != (b, sq):
      raise ValueError(f"q_positions must be int32[{b}, {sq}], got {q_positions.shape}.")
    limit = jnp.minimum(limit, jnp.asarray(q_positions, jnp.int32))
  return _grouped_attention(q, k, v, limit, (1,) * b, sm_scale=sm_scale, impl=impl,
                            interpret=interpret, block_sizes=block_sizes, out_dtype=out_dtype)


def shared_prefix_attention(q, levels: Sequence[PrefixLevel], suffix_k, suffix_v,
                            suffix_lengths, *, q_positions=None, sm_scale=None, impl="auto",
                            interpret=False, out_dtype=None):
  """Hydragen tree attention: every prefix level (batched per group) + suffix, merged.

  The full key sequence of sequence b is ``level_0[group(b)] || ... || suffix[b]`` (each
  level contributing its valid length). Queries are causal within the suffix only.
  ``q_positions`` (optional) are suffix positions as in :func:`suffix_attention`.
  Returns ``(out [B, Sq, Hq, D] in out_dtype or q.dtype, lse f32 [B, Sq, Hq])``.
  """
  for i, level in enumerate(levels):
    if not isinstance(level, PrefixLevel):
      raise ValueError(f"levels[{i}] must be a PrefixLevel, got {type(level).__name__}.")
    if level.k.ndim != 4:
      raise ValueError(f"levels[{i}].k must be [num_groups, P, Hkv, D], got {level.k.shape}.")
  return _shared_prefix_attention_jit(q, tuple(levels), suffix_k, suffix_v, suffix_lengths,
                                      q_positions, sm_scale=sm_scale, impl=impl,
                                      interpret=bool(interpret or common.interpret_kernels()),
                                      out_dtype=out_dtype,
                                      backend=common.backend() if impl == "auto" else None)


# `backend` keys the trace cache: "auto" resolves inside, per backend (common.target_backend).
@functools.partial(jax.jit, static_argnames=("sm_scale", "impl", "interpret", "out_dtype",
                                             "backend"))
def _shared_prefix_attention_jit(q, levels, suffix_k, suffix_v, suffix_lengths, q_positions,
                                 *, sm_scale, impl, interpret, out_dtype, backend):
  del backend
  outs, lses = [], []
  for level in levels:
    o, l = prefix_attention(q, level.k, level.v, prefix_len=level.lengths,
                            group_sizes=level.group_sizes, sm_scale=sm_scale, impl=impl,
                            interpret=interpret)
    outs.append(o)
    lses.append(l)
  o, l = suffix_attention(q, suffix_k, suffix_v, suffix_lengths, q_positions=q_positions,
                          sm_scale=sm_scale, impl=impl, interpret=interpret)
  outs.append(o)
  lses.append(l)
  out, lse = merge_attention(outs, lses) if len(outs) > 1 else (outs[0], lses[0])
  return out.astype(out_dtype or q.dtype), lse
