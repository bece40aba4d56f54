"""Weight-only low-bit matmul ``y = x @ dequantize(qw)`` for int8/int4/int3/int2 weights.

Equations (``q`` integer codes, ``s`` scales, ``z`` integer zero points, ``w_hat = s * (q - z)``):

* per-OC groups (``qw.dim == "oc"``, ``s, z: [K/g, N]``): the scale is constant over the ``g``
  input channels of a group, so it moves out of the group's partial dot product and the zero
  point becomes a rank-1 correction with the row sums of ``x`` over the group::

      y = sum_G  s[G] * ( x[:, G] @ q[G] - rowsum(x[:, G]) (x) z[G] )

* per-IC groups (AdaDim, arXiv 2309.15531; ``s, z: [K, N/g]``): the scale varies along K but
  is constant over ``g`` output columns, so for an N tile inside one column group ``j`` both
  fold into the (small) activation tile::

      y[:, tile] = (x * s[:, j]) @ q[:, tile]  -  (x * s[:, j]) @ z[:, j]   (broadcast)

Either way the MXU / tensor cores see raw codes (exact in bf16), and the extra work is
``O(M * N * K / g)`` (per-OC) or ``O(M * K)`` per N tile (per-IC) instead of dequantizing all
``K * N`` weights (what XLA does, and why it is slower than the bf16 dot; see
``PERFORMANCE.md``). Marlin (IST-DASLab/marlin) applies per-group scales to the dequantized
fragment instead; folding them out of the dot keeps the per-weight work at shift+mask+convert.

Unpacking (layout of :mod:`quant.packing`: word row ``r``, field ``f`` holds ``k = r*P + f``):
a chunk of ``c`` K rows is ``c/P`` word rows ``[c/P, tn]``; broadcasting to ``[c/P, P, tn]``
with the field shifts along the middle axis and merging the leading two axes gives the codes
in natural K order ``[c, tn]``. So ``x``, the per-OC group boundaries and the per-IC scales all
keep their natural K order: no activation permutation, no strided slices, and a per-OC group
is a contiguous chunk. (On TPU the merge is layout-free when ``P`` is a multiple of the 8
sublanes of a 32-bit tile: int4, int2 and both 3-bit planes; int8 has ``P = 4``.)
3-bit codes are ``lo | hi << 2`` from the two bit planes; the planes are read as two windows
of the same packed array (no copy of the weights).

Implementations (``impl=``): ``"reference"`` (jnp dequantize + f32 dot), ``"pallas_gpu"``
(Triton: split-K grid over (M tiles, N tiles, K splits), in-kernel K loop), ``"pallas_tpu"``
(Mosaic: grid (M, N, K) with an f32 VMEM accumulator), ``"auto"`` (by
``jax.default_backend()``). ``interpret=True`` runs either Pallas kernel in interpret mode
(CPU tests). Block sizes: ``BLOCK_SIZES`` below (typed, per impl and regime); dispatch
policy: :mod:`kernels_pallas.common`.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from core import packing
from core.qtensor import QuantizedWeight, dequantize
from kernels_pallas import common

# Block sizes per (impl, regime); regime "decode" for M <= DECODE_MAX_M, else "prefill".
# CPU-UNTUNED DEFAULTS: chosen from the shapes' arithmetic, not measured; retune with
# benchmarks/lowbit_matmul.py on the H200 / a TPU.


@dataclasses.dataclass(frozen=True)
class GpuBlocks:
  """Triton tiles. ``bm``/``tn``/``chunk``: powers of two >= 16 (Triton dot minimum);
  ``chunk`` = K rows per loop step (per-OC: at most one group); split-K aims for
  ``target_programs`` programs (2 waves on the H200's 132 SMs) unless ``splits`` is set."""
  bm: int
  tn: int
  chunk: int
  target_programs: int
  num_warps: int
  num_stages: int
  splits: int | None = None

  def __post_init__(self):
    for name in ("bm", "tn", "chunk"):
      common.require_pow2("GpuBlocks", name, getattr(self, name), 16)
    for name in ("target_programs", "num_warps", "num_stages"):
      common.require_multiple("GpuBlocks", name, getattr(self, name), 1)
    if self.splits is not None:
      common.require_multiple("GpuBlocks", "splits", self.splits, 1)


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
  """Mosaic tiles: ``bm`` multiple of 16 (bf16 packs 16 sublanes), ``tn``/``tk``/``chunk``
  multiples of 128 (lanes); ``chunk`` = K rows unpacked at once (divides ``tk``)."""
  bm: int
  tn: int
  tk: int
  chunk: int

  def __post_init__(self):
    for name, mult in (("bm", 16), ("tn", 128), ("tk", 128), ("chunk", 128)):
      common.require_multiple("TpuBlocks", name, getattr(self, name), mult, "(8, 128) tiles")


BLOCK_SIZES = {
    ("pallas_gpu", "decode"): GpuBlocks(bm=16, tn=128, chunk=128, target_programs=264,
                                        num_warps=4, num_stages=4),
    ("pallas_gpu", "prefill"): GpuBlocks(bm=64, tn=128, chunk=64, target_programs=132,
                                         num_warps=4, num_stages=3),
    ("pallas_tpu", "decode"): TpuBlocks(bm=16, tn=512, tk=2048, chunk=256),
    ("pallas_tpu", "prefill"): TpuBlocks(bm=256, tn=512, tk=1024, chunk=256),
}
BLOCKS_TYPE = {"pallas_gpu": GpuBlocks, "pallas_tpu": TpuBlocks}
DECODE_MAX_M = 16


def regime(m: int) -> str:
  return "decode" if m <= DECODE_MAX_M else "prefill"


# --------------------------------------------------------------------------------------------
# Reference.


def reference(x, qw: QuantizedWeight):
  """``x @ dequantize(qw)`` in f32 (HIGHEST precision), returned in ``x.dtype``."""
  k = _check_inputs(x, qw)
  w = dequantize(qw, jnp.float32)
  y = jnp.dot(x.reshape(-1, k).astype(jnp.float32), w, precision=lax.Precision.HIGHEST)
  return y.reshape(*x.shape[:-1], qw.out_features).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Pieces shared by both kernels (pure jnp on values, so they lower with Triton and Mosaic).


def _unpack_rows(words, field_bits: int):
  """int32 words ``[R, tn]`` -> codes ``[R * P, tn]`` in natural K order (P = 32 // bits)."""
  p = 32 // field_bits
  r, tn = words.shape
  shifts = lax.broadcasted_iota(jnp.int32, (1, p, 1), 1) * field_bits
  fields = lax.shift_right_logical(words[:, None, :], shifts) & ((1 << field_bits) - 1)
  return fields.reshape(r * p, tn)


def _dot(a, b):
  """f32-accumulated dot; f32 operands at full precision (no TF32 / bf16 passes)."""
  prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jnp.dot(a, b, preferred_element_type=jnp.float32, precision=prec)


def _oc_partial(x_c, codes, s_row, z_row):
  """One per-OC group chunk: ``s * (x @ q - rowsum(x) z)``; x_c [bm, c], rows [1, tn]."""
  d = _dot(x_c, codes.astype(x_c.dtype))
  xsum = jnp.sum(x_c.astype(jnp.float32), axis=1, keepdims=True)
  return (d - xsum * z_row.astype(jnp.float32)) * s_row.astype(jnp.float32)


def _ic_partial(x_c, codes, s_col, z_col):
  """One per-IC chunk of an N tile in one column group: ``(x*s) @ q - (x*s) @ z``.

  ``s_col, z_col: [1, c]``. The zero term uses the same rounded ``x*s`` the dot sees, so the
  result is exactly ``sum (x*s)(q - z)`` up to accumulation order.
  """
  xs = (x_c.astype(jnp.float32) * s_col.astype(jnp.float32)).astype(x_c.dtype)
  zterm = jnp.sum(xs.astype(jnp.float32) * z_col.astype(jnp.float32), axis=1, keepdims=True)
  return _dot(xs, codes.astype(x_c.dtype)) - zterm


def _pow2_divisor(n: int, cap: int) -> int:
  """Largest power of two that divides ``n`` and is <= ``cap``."""
  d = 1
  while d * 2 <= cap and n % (d * 2) == 0:
    d *= 2
  return d


# --------------------------------------------------------------------------------------------
# GPU (Triton) kernel: refs are whole arrays; each program slices its tiles with pl.ds.


@dataclasses.dataclass(frozen=True)
class _GpuPlan:
  bm: int
  tn: int
  chunk: int
  splits: int
  num_warps: int
  num_stages: int


def _plan_gpu(m, qw: QuantizedWeight, blocks: GpuBlocks | None) -> _GpuPlan:
  k, n = qw.shape
  g, bits = qw.group_size, qw.bits
  cfg = blocks or BLOCK_SIZES[("pallas_gpu", regime(m))]
  bm = min(cfg.bm, max(16, 1 << (m - 1).bit_length()))
  tn_cap = cfg.tn if qw.dim == "oc" else min(cfg.tn, g)
  tn = _pow2_divisor(n if qw.dim == "oc" else math.gcd(n, g), tn_cap)
  min_chunk = 32 if bits == 3 else 16
  chunk = _pow2_divisor(k if qw.dim == "ic" else math.gcd(k, g), cfg.chunk)
  if tn < 16:
    what = (f"out_features N={n}" if qw.dim == "oc" else
            f"group_size={g} (per-IC: an N tile must sit in one column group)")
    raise ValueError(f"pallas_gpu needs {what} to be a multiple of 16; use "
                     "impl='reference' or a power-of-two group size such as 64 or 128.")
  if chunk < min_chunk:
    what = (f"in_features K={k}" if qw.dim == "ic" else
            f"group_size={g} (per-OC: a K chunk must sit in one group)")
    raise ValueError(f"pallas_gpu needs {what} to be a multiple of {min_chunk} for "
                     f"{bits}-bit weights; use impl='reference' or group_size 64/128.")
  tiles = -(-m // bm) * (n // tn)
  splits = cfg.splits or max(1, min(k // chunk, -(-cfg.target_programs // tiles)))
  return _GpuPlan(bm, tn, chunk, int(splits), cfg.num_warps, cfg.num_stages)


def _gpu_kernel(x_ref, w_ref, s_ref, z_ref, o_ref, *, bits, dim, group_size, k, plan):
  bm, tn, c = plan.bm, plan.tn, plan.chunk
  i, j, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rows, cols = pl.ds(i * bm, bm), pl.ds(j * tn, tn)
  n_chunks = k // c
  per_split = -(-n_chunks // plan.splits)
  start = split * per_split
  stop = jnp.minimum(start + per_split, n_chunks)

  def codes_at(t):
    if bits == 3:  # low-2-bit plane rows [0, K/16), high-bit plane rows [K/16, 3K/32)
      lo = w_ref[pl.ds(t * (c // 16), c // 16), cols]
      hi = w_ref[pl.ds(k // 16 + t * (c // 32), c // 32), cols]
      return _unpack_rows(lo, 2) | (_unpack_rows(hi, 1) << 2)
    p = 32 // bits
    return _unpack_rows(w_ref[pl.ds(t * (c // p), c // p), cols], bits)

  def body(t, acc):
    x_c = x_ref[rows, pl.ds(t * c, c)]
    codes = codes_at(t)
    if dim == "oc":
      grp = lax.div(t, group_size // c)  # c divides g: chunk t lies in one group
      part = _oc_partial(x_c, codes, s_ref[pl.ds(grp, 1), cols], z_ref[pl.ds(grp, 1), cols])
    else:
      col_group = lax.div(j, group_size // tn)  # tn divides g: the tile is in one group
      s_col = s_ref[pl.ds(t * c, c), pl.ds(col_group, 1)].reshape(1, c)
      z_col = z_ref[pl.ds(t * c, c), pl.ds(col_group, 1)].reshape(1, c)
      part = _ic_partial(x_c, codes, s_col, z_col)
    return acc + part

  acc = lax.fori_loop(start, stop, body, jnp.zeros((bm, tn), jnp.float32))
  if plan.splits == 1:
    o_ref[rows, cols] = acc.astype(o_ref.dtype)
  else:
    o_ref[split, rows, cols] = acc


def _pallas_gpu(x2, qw: QuantizedWeight, block_sizes, interpret):
  m, k = x2.shape
  n = qw.out_features
  plan = _plan_gpu(m, qw, block_sizes)
  mp = -(-m // plan.bm) * plan.bm
  x2 = jnp.pad(x2, ((0, mp - m), (0, 0)))
  if plan.splits == 1:
    out_shape = jax.ShapeDtypeStruct((mp, n), x2.dtype)
  else:  # f32 partial sums per K split, reduced below (small for decode M)
    out_shape = jax.ShapeDtypeStruct((plan.splits, mp, n), jnp.float32)
  kernel = functools.partial(_gpu_kernel, bits=qw.bits, dim=qw.dim, group_size=qw.group_size,
                             k=k, plan=plan)
  y = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(mp // plan.bm, n // plan.tn, plan.splits),
      compiler_params=plgpu.CompilerParams(num_warps=plan.num_warps,
                                           num_stages=plan.num_stages),
      cost_estimate=cost_estimate(mp, qw, x2.dtype),
      interpret=interpret, name=f"lowbit_matmul_gpu_int{qw.bits}_{qw.dim}",
  )(x2, qw.packed, qw.scales, qw.zeros)
  if plan.splits > 1:
    y = jnp.sum(y, axis=0).astype(x2.dtype)
  return y[:m]


# --------------------------------------------------------------------------------------------
# TPU (Mosaic) kernel: grid (M tiles, N tiles, K tiles), K innermost with a VMEM accumulator.


@dataclasses.dataclass(frozen=True)
class _TpuPlan:
  bm: int
  tn: int
  tk: int
  chunk: int


def _plan_tpu(m, qw: QuantizedWeight, blocks: TpuBlocks | None) -> _TpuPlan:
  k, n = qw.shape
  g, bits = qw.group_size, qw.bits
  cfg = blocks or BLOCK_SIZES[("pallas_tpu", regime(m))]
  if g % 128:
    raise ValueError(f"pallas_tpu needs group_size % 128 == 0 (lane-aligned groups), got "
                     f"group_size={g}; use impl='reference' or group_size 128.")
  # The word slab of a chunk fills whole 8-row tiles; a per-OC chunk holds whole groups or
  # lies inside one.
  unit = max(128, 8 * (32 if bits == 3 else 32 // bits))
  whole_groups = (lambda t: t % g == 0 or g % t == 0) if qw.dim == "oc" else (lambda t: True)
  chunk = _largest_multiple_divisor(k, unit, max(cfg.chunk, unit), whole_groups)
  if chunk is None:
    raise ValueError(f"pallas_tpu needs in_features K={k} to be a multiple of {unit} for "
                     f"{bits}-bit weights (one unpack chunk); use impl='reference'.")
  bm = min(cfg.bm, -(-m // 16) * 16)
  tn = _largest_multiple_divisor(n if qw.dim == "oc" else math.gcd(n, g), 128, cfg.tn)
  # Per-OC: a K tile holds whole groups or lies inside one (the scale BlockSpec needs it).
  tk = _largest_multiple_divisor(k, chunk, max(cfg.tk, chunk), whole_groups)
  if tn is None:
    raise ValueError(f"pallas_tpu needs out_features N={n} to be a multiple of 128.")
  return _TpuPlan(bm, tn, tk, chunk)


def _largest_multiple_divisor(n: int, unit: int, cap: int, accept=lambda t: True):
  """Largest multiple of ``unit`` that divides ``n``, is <= ``cap`` and is accepted."""
  best = None
  for t in range(unit, min(n, cap) + 1, unit):
    if n % t == 0 and accept(t):
      best = t
  return best


def _tpu_kernel(x_ref, *refs, bits, dim, group_size, plan):
  if bits == 3:
    lo_ref, hi_ref, s_ref, z_ref, o_ref, acc_ref = refs
  else:
    w_ref, s_ref, z_ref, o_ref, acc_ref = refs
  c, tk = plan.chunk, plan.tk
  kt = pl.program_id(2)

  @pl.when(kt == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  acc = acc_ref[...]
  for ci in range(tk // c):  # static: every slice below is tile-aligned
    x_c = x_ref[:, ci * c:(ci + 1) * c]
    if bits == 3:
      codes = (_unpack_rows(lo_ref[ci * c // 16:(ci + 1) * c // 16, :], 2)
               | (_unpack_rows(hi_ref[ci * c // 32:(ci + 1) * c // 32, :], 1) << 2))
    else:
      p = 32 // bits
      codes = _unpack_rows(w_ref[ci * c // p:(ci + 1) * c // p, :], bits)
    if dim == "oc":
      if group_size >= c:  # the chunk lies in one group (block holds max(tk // g, 1) groups)
        gi = (ci * c) // group_size if group_size <= tk else 0
        acc += _oc_partial(x_c, codes, s_ref[gi], z_ref[gi])
      else:  # several 128-aligned groups per chunk
        for sub in range(c // group_size):
          gi = (ci * c) // group_size + sub
          cut = slice(sub * group_size, (sub + 1) * group_size)
          acc += _oc_partial(x_c[:, cut], codes[cut], s_ref[gi], z_ref[gi])
    else:
      cut = slice(ci * c, (ci + 1) * c)
      acc += _ic_partial(x_c, codes, s_ref[0, :, cut], z_ref[0, :, cut])
  acc_ref[...] = acc

  @pl.when(kt == pl.num_programs(2) - 1)
  def _():
    o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _pallas_tpu(x2, qw: QuantizedWeight, block_sizes, interpret):
  m, k = x2.shape
  n, g, bits = qw.out_features, qw.group_size, qw.bits
  plan = _plan_tpu(m, qw, block_sizes)
  bm, tn, tk = plan.bm, plan.tn, plan.tk
  mp = -(-m // bm) * bm
  x2 = jnp.pad(x2, ((0, mp - m), (0, 0)))
  # Zeros in the scales' dtype (exact for integers <= 255): 8-bit tiles are (32, 128) on TPU
  # and the (1, tn) rows below would not fit them. prepare() does it once at load time;
  # otherwise it is one pass over K*N/g bytes per call.
  zeros = qw.zeros.astype(qw.scales.dtype)
  if qw.dim == "oc":  # [K/g, 1, N]: a (1, tn) row per group is a full-dim second-minor block
    group_args = [qw.scales[:, None, :], zeros[:, None, :]]  # free reshapes
    # lax.div, not //: floor division of traced ints lowers via sign(), which Mosaic
    # resolves against the local TPU generation (fails in CPU-side export).
    if g <= tk:  # K tile kt holds groups [kt * tk/g, (kt + 1) * tk/g)
      group_spec = pl.BlockSpec((tk // g, 1, tn), lambda i, j, kt: (kt, 0, j))
    else:  # g / tk consecutive K tiles share one group
      group_spec = pl.BlockSpec((1, 1, tn), lambda i, j, kt: (lax.div(kt, g // tk), 0, j))
    group_specs = [group_spec, group_spec]
  else:  # [N/g, 1, K]: the tile's column group as a lane-dense K row
    if qw.groups_t is not None:  # prepared: [2, N/g, 1, K], scales then zeros, no copy here
      group_args = [qw.groups_t, qw.groups_t]
      group_specs = [pl.BlockSpec((None, 1, 1, tk),
                                  lambda i, j, kt, part=part: (part, lax.div(j, g // tn), 0, kt))
                     for part in (0, 1)]
    else:  # a small transpose per call
      group_args = [qw.scales.T[:, None, :], zeros.T[:, None, :]]
      group_spec = pl.BlockSpec((1, 1, tk), lambda i, j, kt: (lax.div(j, g // tn), 0, kt))
      group_specs = [group_spec, group_spec]
  if bits == 3:
    lo_blocks = k // 16 // (tk // 16)
    word_specs = [pl.BlockSpec((tk // 16, tn), lambda i, j, kt: (kt, j)),
                  pl.BlockSpec((tk // 32, tn), lambda i, j, kt: (2 * lo_blocks + kt, j))]
    word_args = [qw.packed, qw.packed]
  else:
    word_specs = [pl.BlockSpec((tk * bits // 32, tn), lambda i, j, kt: (kt, j))]
    word_args = [qw.packed]
  kernel = functools.partial(_tpu_kernel, bits=bits, dim=qw.dim, group_size=g, plan=plan)
  y = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((mp, n), x2.dtype),
      grid=(mp // bm, n // tn, k // tk),
      in_specs=[pl.BlockSpec((bm, tk), lambda i, j, kt: (i, kt)), *word_specs, *group_specs],
      out_specs=pl.BlockSpec((bm, tn), lambda i, j, kt: (i, j)),
      scratch_shapes=[pltpu.VMEM((bm, tn), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      cost_estimate=cost_estimate(mp, qw, x2.dtype),
      interpret=interpret, name=f"lowbit_matmul_tpu_int{bits}_{qw.dim}",
  )(x2, *word_args, *group_args)
  return y[:m]


# --------------------------------------------------------------------------------------------
# Public entry point.


def cost_estimate(m: int, qw: QuantizedWeight, x_dtype) -> pl.CostEstimate:
  """What the reference costs: ``2 M K N`` FLOPs (+ the group corrections), and the bytes of
  x, the packed weights, scales, zeros and the output, each read or written once."""
  k, n = qw.shape
  itemsize = jnp.dtype(x_dtype).itemsize
  groups = k * n // qw.group_size
  flops = 2 * m * k * n + 2 * m * groups
  return pl.CostEstimate(flops=int(flops), transcendentals=0,
                         bytes_accessed=int(m * k * itemsize + qw.nbytes() + m * n * itemsize))


def _check_inputs(x, qw: QuantizedWeight) -> int:
  if not isinstance(qw, QuantizedWeight):
    raise ValueError(f"qw must be a core.qtensor.QuantizedWeight, got {type(qw).__name__}.")
  qw.validate()  # shapes vs bits/group_size/dim metadata
  k = qw.in_features
  if x.ndim < 1 or x.shape[-1] != k:
    raise ValueError(f"x has shape {x.shape}; its last dim must equal the weight's "
                     f"in_features K={k}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a float array (bf16/f16/f32), got dtype {x.dtype}.")
  return k


_PLANS = {"pallas_gpu": _plan_gpu, "pallas_tpu": _plan_tpu}


def prepare(qw: QuantizedWeight, platform: str | None = None) -> QuantizedWeight:
  """``qw`` in the layout ``platform``'s kernel reads (default: :func:`common.backend`), made
  once when the weights are loaded instead of on every call.

  TPU: the zero points in the scales' dtype (exact: integers <= 255), so the kernel reads them
  as they are, and for per-IC groups ``groups_t = [scales.T, zeros.T]`` as ``[2, N/g, 1, K]``
  (the lane-dense rows the kernel's blocks take), so no transpose runs per call. That is
  ~4-5% of an int4 matmul's bytes (a uint8 read plus a 16-bit write and read per group).
  Other platforms: ``qw`` unchanged (the GPU kernel converts uint8 zeros in registers).
  The reference and the GPU kernel read the prepared weight exactly like the stored one.
  """
  if (platform or common.backend()) != "tpu":
    return qw
  zeros = qw.zeros.astype(qw.scales.dtype)
  groups_t = None
  if qw.dim == "ic":
    groups_t = jnp.stack([qw.scales.T, zeros.T])[:, :, None, :]
  return qw.replace(zeros=zeros, groups_t=groups_t).validate()


def prepare_params(params, platform: str | None = None):
  """:func:`prepare` on every ``QuantizedWeight`` of a params tree (other leaves as they are)."""
  is_qw = lambda leaf: isinstance(leaf, QuantizedWeight)
  return jax.tree.map(lambda leaf: prepare(leaf, platform) if is_qw(leaf) else leaf, params,
                      is_leaf=is_qw)


def lowbit_matmul(x, qw: QuantizedWeight, *, impl: str = "auto",
                  block_sizes: GpuBlocks | TpuBlocks | None = None, interpret: bool = False):
  """``x @ dequantize(qw)`` without materializing the weight; f32 accumulation.

  Args:
    x: ``[..., K]`` activations (bf16/f16/f32); leading dims are flattened to M.
    qw: the quantized ``[K, N]`` weight. If ``qw.perm`` is set, ``x[..., perm]`` is used
      (packed row i is input channel perm[i]).
    impl: "auto", "reference", "pallas_gpu" or "pallas_tpu" (dispatch policy:
      :mod:`kernels_pallas.common`).
    block_sizes: a ``GpuBlocks`` / ``TpuBlocks`` replacing the ``BLOCK_SIZES`` entry of the
      impl and regime (``dataclasses.replace(BLOCK_SIZES[("pallas_gpu", "decode")], tn=64)``).
    interpret: run the Pallas kernel in interpret mode (works on CPU; for tests; also on
      inside ``common.target_backend(..., interpret=True)``).

  Returns:
    ``[..., N]`` in ``x.dtype``.
  """
  k = _check_inputs(x, qw)
  m = math.prod(x.shape[:-1])

  def why_not(candidate):
    try:
      common.check_block_sizes(block_sizes, BLOCKS_TYPE[candidate], "lowbit_matmul")
      _PLANS[candidate](max(m, 1), qw, block_sizes)
      return None
    except ValueError as e:
      return str(e)

  impl = common.resolve_impl(impl, kernel="lowbit_matmul", why_not=why_not)
  if impl == "reference":
    return reference(x, qw)
  interpret = interpret or common.interpret_kernels()
  lead = x.shape[:-1]
  x2 = x.reshape(-1, k)
  if qw.perm is not None:
    x2 = jnp.take(x2, qw.perm, axis=1)
  if x2.shape[0] == 0:
    return jnp.zeros((*lead, qw.out_features), x.dtype)
  run = _pallas_gpu if impl == "pallas_gpu" else _pallas_tpu
  y = run(x2, qw, block_sizes, interpret)
  return y.reshape(*lead, qw.out_features)
