"""The Pallas kernels on a device mesh: ``shard_map`` wrappers that run each kernel per shard.

Why: XLA cannot partition a Pallas custom call. Under GSPMD a kernel traced on global shapes
runs on the *global* arrays on every device: XLA:GPU all-gathers its operands first (the whole
low-bit weight, the whole batch and KV cache on each H200), and XLA:TPU refuses to compile
("Mosaic kernels cannot be automatically partitioned. Please wrap the call in a shard_map").
Here each kernel runs inside ``jax.shard_map`` on its local blocks, so the operands stay where
the model's shardings put them:

* :func:`lowbit_matmul`: ``y = x @ dequantize(qw)`` with the rows of ``x`` (its leading dim)
  over ``row_axes`` (data parallel), the weight's output columns over ``n_axes``
  (column-parallel: per-OC scales/zeros and per-IC column groups go with their columns) and
  its input rows over ``k_axes`` (row-parallel: ``x``'s last dim is sharded the same way and
  the partial products are summed with ``psum`` over ``k_axes``).
* :func:`shared_prefix_attention` (with no levels: the suffix attention alone): Hydragen
  attention with the batch over ``batch_axes`` and the heads over ``head_axes`` (q heads and
  kv heads split alike, so each shard holds whole GQA groups). A prefix level's sharing groups are cut at the data-shard boundaries: a group that
  spans shards is attended per shard (its prefix KV replicated, or gathered per shard), which
  is exact because every sequence still sees its whole prefix.

A layout that the packing or the kernels cannot shard (a shard boundary inside an int32 word
or a quantization group, heads that do not divide, sharing groups that differ between
shards) follows the dispatch policy of :mod:`kernels_pallas.common`: ``impl="auto"`` warns
once and runs the jnp reference on the global arrays (GSPMD partitions it), an explicit
Pallas impl raises a ValueError saying why. Axis arguments are mesh axis names: a name, a
tuple of names, or None (not sharded).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from core import packing
from core.qtensor import QuantizedWeight
from kernels_pallas import common
from kernels_pallas import lowbit_matmul as lm
from kernels_pallas import prefix_attention as pa


def _axes(mesh, axes, what: str) -> tuple[str, ...]:
  """``axes`` (None, a name or names) as a tuple of mesh axis names; unknown names raise."""
  if axes is None:
    return ()
  flat = (axes,) if isinstance(axes, str) else tuple(axes)
  unknown = [a for a in flat if a not in mesh.axis_names]
  if unknown:
    raise ValueError(f"{what}={axes!r} names mesh axes {unknown} that the mesh "
                     f"{dict(mesh.shape)} does not have.")
  return flat


def _disjoint(**named):
  seen: dict[str, str] = {}
  for what, flat in named.items():
    for a in flat:
      if a in seen:
        raise ValueError(f"mesh axis {a!r} is in both {seen[a]} and {what}; a mesh axis can "
                         "shard only one dim.")
      seen[a] = what


def _size(mesh, flat) -> int:
  return math.prod(mesh.shape[a] for a in flat)


def _spec_entry(flat):
  return None if not flat else (flat[0] if len(flat) == 1 else flat)


# --------------------------------------------------------------------------------------------
# Low-bit matmul.


def lowbit_layout_error(x_shape, qw: QuantizedWeight, *, rows: int, k_shards: int,
                        n_shards: int) -> str | None:
  """None when ``x [..., K] @ qw [K, N]`` splits into ``rows`` x ``k_shards`` x ``n_shards``
  blocks that the packing allows (whole int32 words, whole groups), else the reason."""
  k, n = qw.shape
  g = qw.group_size
  if rows > 1 and (len(x_shape) < 2 or x_shape[0] % rows):
    return (f"x's leading dim ({x_shape[0] if len(x_shape) > 1 else 'none'}) does not split "
            f"into {rows} row shards")
  if n % n_shards:
    return f"out_features N={n} does not split into {n_shards} column shards"
  if qw.dim == "ic" and (n // n_shards) % g:
    return (f"per-IC groups of {g} output columns would straddle the {n_shards} column "
            f"shards of {n // n_shards} columns; use a group_size that divides {n // n_shards}")
  if k_shards == 1:
    return None
  if k % k_shards:
    return f"in_features K={k} does not split into {k_shards} row-parallel shards"
  k_local = k // k_shards
  if qw.bits == 3:
    return ("3-bit weights keep their two bit planes stacked along the packed rows, so a K "
            "shard is not one block of packed rows; use 2/4/8 bits or column parallelism")
  if k_local % packing.codes_per_word(qw.bits):
    return (f"a K shard of {k_local} rows would split the int32 words of "
            f"{packing.codes_per_word(qw.bits)} {qw.bits}-bit codes")
  if qw.dim == "oc" and k_local % g:
    return (f"per-OC groups of {g} input rows would straddle the {k_shards} K shards of "
            f"{k_local} rows; use a group_size that divides {k_local}")
  if qw.perm is not None:
    return "an act-order perm gathers input channels across the K shards"
  return None


def lowbit_matmul(x, qw: QuantizedWeight, *, mesh, row_axes=None, k_axes=None, n_axes=None,
                  impl: str = "auto", block_sizes=None, interpret: bool = False):
  """:func:`kernels_pallas.lowbit_matmul.lowbit_matmul` per shard of ``mesh``.

  Args:
    x: ``[..., K]`` activations; the leading dim is split over ``row_axes`` and, when
      ``k_axes`` is set, the last dim over ``k_axes``.
    qw: the ``[K, N]`` weight; ``packed``, ``scales`` and ``zeros`` are split as
      ``P(k_axes, n_axes)`` (their row dim is K-ordered, their column dim N-ordered).
    mesh: a ``jax.sharding.Mesh`` (or AbstractMesh inside a trace).
    row_axes, k_axes, n_axes: mesh axis names (module docstring); pairwise disjoint.
    impl, block_sizes, interpret: as in the unsharded function; block sizes and the kernel's
      shape checks apply to the local blocks.

  Returns:
    ``[..., N]`` in ``x.dtype``, split as ``P(row_axes, ..., n_axes)``, summed over ``k_axes``.
  """
  k = lm._check_inputs(x, qw)
  rows, kax, nax = (_axes(mesh, row_axes, "row_axes"), _axes(mesh, k_axes, "k_axes"),
                    _axes(mesh, n_axes, "n_axes"))
  _disjoint(row_axes=rows, k_axes=kax, n_axes=nax)
  r, ks, ns = _size(mesh, rows), _size(mesh, kax), _size(mesh, nax)
  layout = lowbit_layout_error(x.shape, qw, rows=r, k_shards=ks, n_shards=ns)
  local_qw = qw.replace(shape=(k // ks, qw.out_features // ns))
  m_local = max(1, math.prod(x.shape[:-1]) // r)

  def why_not(candidate):
    if layout is not None:
      return f"on this mesh {layout}"
    try:
      common.check_block_sizes(block_sizes, lm.BLOCKS_TYPE[candidate], "lowbit_matmul")
      lm._PLANS[candidate](m_local, local_qw, block_sizes)
      return None
    except ValueError as e:
      return f"on this mesh's local blocks: {e}"

  impl = common.resolve_impl(impl, kernel="lowbit_matmul (sharded)", why_not=why_not)
  if impl == "reference":
    return lm.reference(x, qw)

  row_spec, k_spec, n_spec = _spec_entry(rows), _spec_entry(kax), _spec_entry(nax)
  middle = (None,) * (x.ndim - 2)
  x_spec = P(k_spec) if x.ndim == 1 else P(row_spec, *middle, k_spec)
  y_spec = P(n_spec) if x.ndim == 1 else P(row_spec, *middle, n_spec)
  w_spec = P(k_spec, n_spec)
  has_perm = qw.perm is not None

  has_groups_t = qw.groups_t is not None  # per-IC [2, N/g, 1, K]: prepared for the TPU

  def local(x, packed, scales, zeros, *extra):
    extra = list(extra)
    perm = extra.pop(0) if has_perm else None
    groups_t = extra.pop(0) if has_groups_t else None
    w = QuantizedWeight(packed, scales, zeros, bits=qw.bits, group_size=qw.group_size,
                        dim=qw.dim, shape=local_qw.shape, dtype=qw.dtype, perm=perm,
                        groups_t=groups_t)
    y = lm.lowbit_matmul(x, w, impl=impl, block_sizes=block_sizes, interpret=interpret)
    if kax:  # row-parallel: each shard holds a partial sum over its K rows
      y = lax.psum(y.astype(jnp.float32), kax).astype(x.dtype)
    return y

  args = ((x, qw.packed, qw.scales, qw.zeros) + ((qw.perm,) if has_perm else ())
          + ((qw.groups_t,) if has_groups_t else ()))
  specs = ((x_spec, w_spec, w_spec, w_spec) + ((P(),) if has_perm else ())
           + ((P(None, n_spec, None, k_spec),) if has_groups_t else ()))
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=y_spec,
                       check_vma=False)(*args)


# --------------------------------------------------------------------------------------------
# Hydragen attention.


def split_groups(group_sizes, batch: int, shards: int):
  """How a level's sharing groups fall on ``shards`` equal contiguous batch blocks.

  Returns ``(index, local_sizes)``: ``index int[shards, n_local]``, the global group of each
  shard's local group, and the local group sizes (the same on every shard), or raises a
  ValueError when the shards would need different group patterns (one program runs on all).
  """
  per = batch // shards
  bounds = np.cumsum((0,) + tuple(group_sizes))
  index, patterns = [], []
  for s in range(shards):
    lo, hi = s * per, (s + 1) * per
    groups = [gi for gi in range(len(group_sizes)) if bounds[gi] < hi and bounds[gi + 1] > lo]
    index.append(groups)
    patterns.append(tuple(int(min(hi, bounds[gi + 1]) - max(lo, bounds[gi])) for gi in groups))
  if len(set(patterns)) != 1:
    raise ValueError(f"sharing groups {tuple(group_sizes)} fall on the {shards} data shards of "
                     f"{per} sequences as different group patterns {patterns}; order and pad "
                     f"the batch so that every shard holds the same pattern (e.g. equal groups "
                     f"whose size divides {per} or is a multiple of it)")
  return np.asarray(index, np.int32), patterns[0]


def shared_prefix_attention(q, levels, suffix_k, suffix_v, suffix_lengths, *, mesh,
                            batch_axes=None, head_axes=None, q_positions=None, sm_scale=None,
                            impl: str = "auto", interpret: bool = False, out_dtype=None):
  """:func:`kernels_pallas.prefix_attention.shared_prefix_attention` per shard of ``mesh``.

  The batch (``q``, the suffix cache, ``suffix_lengths``, ``q_positions``) is split over
  ``batch_axes``, the heads of ``q`` and of every K/V over ``head_axes`` (contiguous blocks,
  so query head ``h`` and its kv head ``h // G`` land on the same shard). Each level's prefix
  K/V is split with its groups when every shard holds whole groups of its own, replicated when
  all shards share the same group(s), and otherwise gathered per shard (a copy of the prefix
  KV of the groups that straddle shards). Returns ``(out, lse)`` split like ``q``.
  """
  for i, level in enumerate(levels):
    if not isinstance(level, pa.PrefixLevel):
      raise ValueError(f"levels[{i}] must be a PrefixLevel, got {type(level).__name__}.")
    if level.k.ndim != 4:
      raise ValueError(f"levels[{i}].k must be [num_groups, P, Hkv, D], got {level.k.shape}.")
  if q.ndim != 4:
    raise ValueError(f"q must be [B, Sq, Hq, D], got shape {q.shape}.")
  bax, hax = _axes(mesh, batch_axes, "batch_axes"), _axes(mesh, head_axes, "head_axes")
  _disjoint(batch_axes=bax, head_axes=hax)
  d_shards, h_shards = _size(mesh, bax), _size(mesh, hax)
  b, _, hq, head_dim = q.shape
  hkv = suffix_k.shape[2]

  layout, splits = None, []
  if b % d_shards:
    layout = f"the batch B={b} does not split into {d_shards} data shards"
  elif hq % h_shards or any(k.shape[2] % h_shards for k in [suffix_k] + [l.k for l in levels]):
    layout = (f"q heads ({hq}) and kv heads ({hkv}) must both split into {h_shards} head "
              f"shards (whole GQA groups per shard)")
  else:
    for level in levels:
      try:
        pa._check_groups(level.group_sizes, level.k.shape[0], b)
        splits.append(split_groups(level.group_sizes, b, d_shards))
      except ValueError as e:
        layout = str(e)
        break

  def why_not(candidate):
    if layout is not None:
      return f"on this mesh {layout}"
    reason = pa._why_not(candidate, head_dim, hkv // h_shards, None)
    return None if reason is None else f"on this mesh's local blocks: {reason}"

  impl = common.resolve_impl(impl, kernel="prefix_attention (sharded)", why_not=why_not)
  if impl == "reference":
    return pa.shared_prefix_attention(q, levels, suffix_k, suffix_v, suffix_lengths,
                                      q_positions=q_positions, sm_scale=sm_scale,
                                      impl="reference", out_dtype=out_dtype)

  bs, hs = _spec_entry(bax), _spec_entry(hax)
  kv_spec, seq_spec = P(bs, None, hs, None), P(bs)
  args, specs, local_levels = [q, suffix_k, suffix_v, suffix_lengths], [
      kv_spec, kv_spec, kv_spec, seq_spec], []
  if q_positions is not None:
    args.append(q_positions)
    specs.append(P(bs, None))
  for level, (index, local_sizes) in zip(levels, splits):
    k, v, lengths = level.k, level.v, level.lengths
    if (index == index[0]).all():  # every shard attends the same group(s): replicate them
      group_spec = None
      if not np.array_equal(index[0], np.arange(k.shape[0])):
        k, v = k[index[0]], v[index[0]]
        lengths = None if lengths is None else lengths[index[0]]
    else:  # shard s gets the groups index[s]: its own, or copies of those it shares
      group_spec = bs
      if not np.array_equal(index.reshape(-1), np.arange(k.shape[0])):
        flat = index.reshape(-1)
        k, v = k[flat], v[flat]
        lengths = None if lengths is None else lengths[flat]
    args += [k, v]
    specs += [P(group_spec, None, hs, None)] * 2
    if lengths is not None:
      args.append(lengths)
      specs.append(P(group_spec))
    local_levels.append((local_sizes, lengths is not None))

  def local(q, sk, sv, slen, *rest):
    rest = list(rest)
    qpos = rest.pop(0) if q_positions is not None else None
    lv = []
    for sizes, has_lengths in local_levels:
      k, v = rest.pop(0), rest.pop(0)
      lv.append(pa.PrefixLevel(k, v, sizes, rest.pop(0) if has_lengths else None))
    return pa.shared_prefix_attention(q, lv, sk, sv, slen, q_positions=qpos,
                                      sm_scale=sm_scale, impl=impl, interpret=interpret,
                                      out_dtype=out_dtype)

  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs),
                       out_specs=(P(bs, None, hs, None), P(bs, None, hs)),
                       check_vma=False)(*args)
