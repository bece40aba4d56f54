"""``QuantizedWeight``: the pytree a quantized linear layer carries.

Dequantization (``w_hat = s * (q - z)``) of a weight in Flax layout ``[K, N]``:

* ``dim == "oc"`` (per output channel, the usual layout): a group is ``group_size``
  consecutive input channels of one output channel. ``scales, zeros: [K // g, N]``;
  ``w_hat[k, n] = scales[k // g, n] * (q[k, n] - zeros[k // g, n])``.
* ``dim == "ic"`` (AdaDim's per input channel): a group is ``group_size`` consecutive output
  channels of one input channel. ``scales, zeros: [K, N // g]``;
  ``w_hat[k, n] = scales[k, n // g] * (q[k, n] - zeros[k, n // g])``.

Both give ``K * N / g`` (scale, zero) pairs. ``zeros`` are integer zero points (uint8; or,
once prepared for the TPU kernel, the same integers in the scales' dtype, which is exact).
``packed`` holds the codes in the layout of :mod:`quant.packing`.

``perm`` (optional, int32 ``[K]``): GPTQ with act-order and dynamic groups stores the rows in
act-order so that every group stays contiguous: packed row ``i`` is original input channel
``perm[i]``. A matmul then computes ``x[..., perm] @ w_perm`` (one gather of the small
activation instead of a ``g_idx`` lookup per weight).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from core import packing

DIMS = ("oc", "ic")


@struct.dataclass
class QuantizedWeight:
  packed: jax.Array  # int32 [K * bits // 32, N]
  scales: jax.Array  # float [K // g, N] (oc) or [K, N // g] (ic)
  zeros: jax.Array  # uint8, same shape as scales
  bits: int = struct.field(pytree_node=False)
  group_size: int = struct.field(pytree_node=False)
  dim: str = struct.field(pytree_node=False)
  shape: tuple = struct.field(pytree_node=False)  # (K, N) of the original weight
  dtype: str = struct.field(pytree_node=False)  # dtype name of the original weight
  perm: jax.Array | None = None  # int32 [K] or None
  # Optional, made at load time for the TPU kernel (kernels_pallas.lowbit_matmul.prepare):
  # per-IC scales and zeros transposed, [2, N // g, 1, K] in the scales' dtype. Never saved.
  groups_t: jax.Array | None = None

  @property
  def in_features(self) -> int:
    return self.shape[0]

  @property
  def out_features(self) -> int:
    return self.shape[1]

  def nbytes(self) -> int:
    """Bytes a matmul must read: packed words, scales, zeros (and perm)."""
    leaves = [self.packed, self.scales, self.zeros] + ([self.perm] if self.perm is not None else [])
    return int(sum(x.size * x.dtype.itemsize for x in leaves))

  def validate(self) -> "QuantizedWeight":
    """Checks that shapes agree with the metadata; raises ValueError naming the mismatch."""
    validate_layout(self.shape, bits=self.bits, group_size=self.group_size, dim=self.dim)
    k, n = self.shape
    want_packed = (packing.packed_rows(k, self.bits), n)
    if tuple(self.packed.shape) != want_packed:
      raise ValueError(f"packed has shape {self.packed.shape}, expected {want_packed} for a "
                       f"{self.bits}-bit [{k}, {n}] weight.")
    want_s = group_shape(self.shape, self.group_size, self.dim)
    for name, arr in (("scales", self.scales), ("zeros", self.zeros)):
      if tuple(arr.shape) != want_s:
        raise ValueError(f"{name} has shape {arr.shape}, expected {want_s} for dim="
                         f"{self.dim!r}, group_size={self.group_size}.")
    if self.perm is not None and tuple(self.perm.shape) != (k,):
      raise ValueError(f"perm has shape {self.perm.shape}, expected ({k},).")
    if self.groups_t is not None:
      want_t = (2, n // self.group_size, 1, k)
      if self.dim != "ic" or tuple(self.groups_t.shape) != want_t:
        raise ValueError(f"groups_t has shape {self.groups_t.shape} for dim={self.dim!r}; only "
                         f"per-IC weights carry it, as {want_t} (lowbit_matmul.prepare).")
    return self


def group_shape(shape, group_size: int, dim: str) -> tuple[int, int]:
  k, n = shape
  return (k // group_size, n) if dim == "oc" else (k, n // group_size)


def validate_layout(shape, *, bits: int, group_size: int, dim: str) -> None:
  """Raises a ValueError that says what to change if ``shape`` cannot take this layout."""
  if len(shape) != 2:
    raise ValueError(f"expected a 2-D weight [in_features, out_features], got shape {shape}.")
  if dim not in DIMS:
    raise ValueError(f"dim={dim!r} is not one of {DIMS} ('oc': groups along the input "
                     "channels of one output channel; 'ic': AdaDim's per-input-channel groups).")
  k, n = shape
  packing.check_packable(k, bits)
  grouped, axis_name = (k, "in_features (K)") if dim == "oc" else (n, "out_features (N)")
  if group_size <= 0 or grouped % group_size:
    raise ValueError(f"group_size={group_size} must be positive and divide {axis_name}="
                     f"{grouped} for dim={dim!r}; pick a divisor such as "
                     f"{_divisors_hint(grouped)}.")


def _divisors_hint(n: int) -> list[int]:
  return [d for d in (32, 64, 128, 256) if n % d == 0] or [n]


def from_codes(q, scales, zeros, *, bits: int, group_size: int, dim: str, dtype,
               perm=None) -> QuantizedWeight:
  """Packs integer codes ``q[K, N]`` with their scales/zeros into a QuantizedWeight."""
  validate_layout(q.shape, bits=bits, group_size=group_size, dim=dim)
  return QuantizedWeight(
      packed=packing.pack(q, bits), scales=scales, zeros=jnp.asarray(zeros).astype(jnp.uint8),
      bits=bits, group_size=group_size, dim=dim, shape=tuple(int(s) for s in q.shape),
      dtype=jnp.dtype(dtype).name, perm=None if perm is None else jnp.asarray(perm, jnp.int32),
  ).validate()


def expand_groups(a, qw: QuantizedWeight):
  """Broadcasts per-group ``a`` (scales or zeros) to the full ``[K, N]`` weight shape."""
  axis = 0 if qw.dim == "oc" else 1
  return jnp.repeat(a, qw.group_size, axis=axis, total_repeat_length=qw.shape[axis])


def dequantize(qw: QuantizedWeight, dtype=None):
  """``w_hat = s * (q - z)`` in the original row order, shape ``qw.shape``, dtype of w."""
  q = packing.unpack(qw.packed, qw.bits).astype(jnp.float32)
  s = expand_groups(qw.scales.astype(jnp.float32), qw)
  z = expand_groups(qw.zeros.astype(jnp.float32), qw)
  w = s * (q - z)
  if qw.perm is not None:
    w = w[jnp.argsort(qw.perm)]
  return w.astype(dtype or qw.dtype)
