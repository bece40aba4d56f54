"""COAT: AdamW with FP8 optimizer states and dynamic range expansion (Xi et al. 2024,
arXiv:2410.19313, ICLR 2025), as optax transforms.

**State codec.** A moment tensor ``x`` is cut into groups of ``G = group_size`` consecutive
elements along its *last* axis (a row whose length is not a multiple of ``G`` ends in a partial
group). For each group, with ``max = max|x| + 1e-30`` and ``min = min_{x != 0}|x| + 1e-30``:

    R = max / min,   c = sqrt(max) sqrt(min),   k = floor(16 log2(F^2 / 2) / log2 R) / 16
    y = sign(x) (|x| / c)^k,   scale = (max / c)^k / F,   q = fp8(clip(y / scale, -F, F))

and ``x ~= sign(q) (|q| scale)^(1/k) c`` decodes it. ``F`` is the format's largest value (448
for E4M3, 57344 for E5M2). The expansion ``f(x) = sign(x)|x|^k`` stretches the group's narrow
range (about 1e3 for m, 1e1 for v) over FP8's (about 2e5 for E4M3): ``(|y|/scale)`` spans
``[F / R^k, F]`` with ``R^k <= F^2/2``, so no nonzero element underflows and the small ones keep
several significant bits. ``k`` lies on the 1/16 grid, clipped to ``[1/16, 64]`` so that a group
with ``R = 1`` (all-zero, one nonzero, all equal) has a finite ``k`` and zeros decode to zero
(the reference CUDA kernel gets ``k = inf`` there and decodes zeros as ``0^0 c = c``).
``expand=False`` is plain per-group absmax scaling (``scale = max|x| / F``, 1 for a zero group:
the reference's non-expanded kernel divides by zero there).

Layout, chosen for sharding: ``q`` has ``x``'s shape and ``scale``, ``k``, ``sqrt_minmax`` have
``x``'s shape with the last axis divided by ``G`` (rounded up), so the parameter's
``PartitionSpec`` applies to every part (a metadata dim that does not divide its mesh axes is
replicated; :func:`core.sharding.sharding_like`). With the last dim a multiple of ``G`` the groups
are exactly the reference's 128 contiguous flattened elements.

**Optimizer.** :func:`coat_adamw` is ``optax.adamw`` (decoupled weight decay, bias correction)
with both moments decoded to fp32 at the start of ``update`` and re-encoded at its end:

    m = b1 m + (1 - b1) g        v = b2 v + (1 - b2) g^2
    u = -lr ((m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p)

Leaves with fewer than ``min_size`` elements (norm scales, biases) keep fp32 moments, as
bitsandbytes' ``min_8bit_size``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

FORMATS = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
K_GRID = 16          # k is a multiple of 1/K_GRID (the reference's expand_min)
K_MIN, K_MAX = 1.0 / K_GRID, 64.0
QUANT_MIN = 1e-30    # added to max and min so that log2(max / min) is defined


def _check_format(fmt: str, name: str = "fmt"):
  if fmt not in FORMATS:
    raise ValueError(f"{name}={fmt!r} is not an FP8 format; use one of {sorted(FORMATS)}.")
  return FORMATS[fmt]


def _check_group_size(group_size) -> int:
  if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
      or group_size <= 0:
    raise ValueError(f"group_size={group_size!r} must be a positive integer (COAT uses 128).")
  return int(group_size)


@dataclasses.dataclass(frozen=True)
class Fp8Groups:
  """A tensor stored in FP8 with per-group metadata (see the module docstring).

  ``q``: FP8, the tensor's shape. ``scale``, ``k``, ``sqrt_minmax``: fp32, the tensor's shape
  with the last axis ``ceil(n / group_size)`` (a 0-d tensor counts as shape ``(1,)``);
  ``k`` and ``sqrt_minmax`` are None without expansion. ``dtype``: the tensor's dtype name.
  """
  q: jax.Array
  scale: jax.Array
  k: jax.Array | None
  sqrt_minmax: jax.Array | None
  group_size: int
  dtype: str

  @property
  def shape(self):
    return self.q.shape

  @property
  def nbytes(self) -> int:
    return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize
               for a in (self.q, self.scale, self.k, self.sqrt_minmax) if a is not None)


jax.tree_util.register_dataclass(Fp8Groups, data_fields=["q", "scale", "k", "sqrt_minmax"],
                                 meta_fields=["group_size", "dtype"])


def _to_groups(x: jax.Array, group_size: int) -> jax.Array:
  """``(..., n) -> (..., ceil(n/G), G)``, the last group zero-padded (zeros change neither
  the max nor the min-nonzero of a group)."""
  x = x.reshape(x.shape or (1,))
  n = x.shape[-1]
  m = -(-n // group_size)
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, m * group_size - n)])
  return x.reshape(x.shape[:-1] + (m, group_size))


def _from_groups(g: jax.Array, shape) -> jax.Array:
  flat_shape = shape or (1,)
  g = g.reshape(g.shape[:-2] + (-1,))[..., :flat_shape[-1]]
  return g.reshape(shape)


def expansion_exponent(max_abs: jax.Array, min_abs: jax.Array, fmax: float) -> jax.Array:
  """``k = floor(16 log2(F^2/2) / log2(max/min)) / 16`` clipped to ``[1/16, 64]``; ``max``
  and ``min`` already include the ``1e-30`` offset."""
  log_ratio = jnp.log2(max_abs / min_abs)
  budget = math.log2(fmax * fmax / 2.0)
  k = jnp.floor(budget / jnp.where(log_ratio > 0, log_ratio, 1.0) * K_GRID) / K_GRID
  return jnp.clip(jnp.where(log_ratio > 0, k, K_MAX), K_MIN, K_MAX)


def quantize_groups(x, *, fmt: str = "e4m3", group_size: int = 128,
                    expand: bool = True) -> Fp8Groups:
  """Encodes ``x`` as :class:`Fp8Groups` (FP8 ``fmt``, per-group scale, expansion if
  ``expand``). Never produces NaN/inf for finite ``x``: all-zero groups, single nonzeros and
  values far beyond the format's range are handled. Jittable."""
  fp8 = _check_format(fmt)
  group_size = _check_group_size(group_size)
  x = jnp.asarray(x)
  fmax = float(jnp.finfo(fp8).max)
  g = _to_groups(x.astype(jnp.float32), group_size)
  a = jnp.abs(g)
  amax = jnp.max(a, axis=-1)
  if expand:
    amin = jnp.min(jnp.where(a > 0, a, jnp.inf), axis=-1)
    amin = jnp.where(jnp.isfinite(amin), amin, amax)  # no nonzero: min = max, R = 1
    mx, mn = amax + QUANT_MIN, amin + QUANT_MIN
    c = jnp.sqrt(mx) * jnp.sqrt(mn)  # two roots: mx * mn underflows fp32 for tiny groups
    k = expansion_exponent(mx, mn, fmax)
    y = jnp.sign(g) * (a / c[..., None]) ** k[..., None]
    scale = (mx / c) ** k / fmax
  else:
    k = c = None
    y = g
    scale = jnp.where(amax > 0, amax / fmax, 1.0)
  # e4m3fn has no inf: anything past F (rounding of y / scale) would become NaN; clip first.
  q = jnp.clip(y / scale[..., None], -fmax, fmax)
  q = _from_groups(q, x.shape).astype(fp8)
  return Fp8Groups(q=q, scale=scale, k=k, sqrt_minmax=c, group_size=group_size,
                   dtype=jnp.dtype(x.dtype).name)


def zeros_groups(shape, *, fmt: str = "e4m3", group_size: int = 128, expand: bool = True,
                 dtype=jnp.float32) -> Fp8Groups:
  """``quantize_groups(jnp.zeros(shape, dtype), ...)`` built directly (optimizer ``init``: no
  quantizer to trace per leaf)."""
  fp8 = _check_format(fmt)
  group_size = _check_group_size(group_size)
  meta = tuple(shape[:-1]) + (-(-shape[-1] // group_size),) if shape else (1,)
  full = lambda v: jnp.full(meta, v, jnp.float32)
  if expand:  # max = min = 1e-30: R = 1, k = K_MAX, c = 1e-30, scale = 1 / F
    scale, k, c = full(1.0 / float(jnp.finfo(fp8).max)), full(K_MAX), full(QUANT_MIN)
  else:
    scale, k, c = full(1.0), None, None
  return Fp8Groups(q=jnp.zeros(shape, fp8), scale=scale, k=k, sqrt_minmax=c,
                   group_size=group_size, dtype=jnp.dtype(dtype).name)


def dequantize_groups(g: Fp8Groups) -> jax.Array:
  """Decodes :class:`Fp8Groups` back to an array of the original shape and dtype."""
  y = _to_groups(g.q.astype(jnp.float32), g.group_size) * g.scale[..., None]
  if g.k is not None:
    # |y|^(1/k) with 1/k >= 1/64 > 0: zeros stay zero.
    y = jnp.sign(y) * jnp.abs(y) ** (1.0 / g.k[..., None]) * g.sqrt_minmax[..., None]
  return _from_groups(y, g.q.shape).astype(g.dtype)


# ------------------------------------------------------------------------------------------------
# The optimizer
# ------------------------------------------------------------------------------------------------


class ScaleByCoatAdamState(NamedTuple):
  """``mu``/``nu``: trees shaped like the params whose leaves are :class:`Fp8Groups` (leaves of
  at least ``min_size`` elements) or fp32 arrays."""
  count: jax.Array
  mu: Any
  nu: Any


def _is_groups(x) -> bool:
  return isinstance(x, Fp8Groups)


def scale_by_coat_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                       group_size: int = 128, m_format: str = "e4m3", v_format: str = "e4m3",
                       expand: bool = True, min_size: int = 4096
                       ) -> optax.GradientTransformation:
  """``optax.scale_by_adam`` (bias-corrected ``m^ / (sqrt(v^) + eps)``) whose moments are stored
  as :class:`Fp8Groups`; fp32 math inside ``update``."""
  _check_format(m_format, "m_format")
  _check_format(v_format, "v_format")
  group_size = _check_group_size(group_size)
  for name, b in (("b1", b1), ("b2", b2)):
    if not 0.0 <= float(b) < 1.0:
      raise ValueError(f"{name}={b} must lie in [0, 1) (AdamW uses b1=0.9, b2=0.999).")
  if math.isnan(float(eps)) or float(eps) < 0:
    raise ValueError(f"eps={eps} must be >= 0.")
  if min_size < 0:
    raise ValueError(f"min_size={min_size} must be >= 0 (leaves smaller than it stay fp32).")

  def quantized(x) -> bool:
    return math.prod(x.shape) >= min_size

  def encode(x, fmt, like):
    if quantized(like):
      return quantize_groups(x, fmt=fmt, group_size=group_size, expand=expand)
    return x

  def decode(s):
    return dequantize_groups(s).astype(jnp.float32) if _is_groups(s) else s

  def init_fn(params):
    def zeros(fmt):
      def leaf(p):
        if quantized(p):
          return zeros_groups(jnp.shape(p), fmt=fmt, group_size=group_size, expand=expand)
        return jnp.zeros(jnp.shape(p), jnp.float32)
      return leaf
    return ScaleByCoatAdamState(count=jnp.zeros([], jnp.int32),
                                mu=jax.tree.map(zeros(m_format), params),
                                nu=jax.tree.map(zeros(v_format), params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    c1 = 1 - jnp.asarray(b1, jnp.float32) ** count
    c2 = 1 - jnp.asarray(b2, jnp.float32) ** count

    def leaf(g, m_s, v_s):
      g32 = g.astype(jnp.float32)
      m = (1 - b1) * g32 + b1 * decode(m_s)
      v = (1 - b2) * g32 * g32 + b2 * decode(v_s)
      u = (m / c1) / (jnp.sqrt(v / c2) + eps)
      return u.astype(g.dtype), encode(m, m_format, g), encode(v, v_format, g)

    out = jax.tree.map(leaf, updates, state.mu, state.nu, is_leaf=_is_groups)
    treedef = jax.tree.structure(updates)
    u, mu, nu = (treedef.unflatten(x) for x in zip(*treedef.flatten_up_to(out)))
    return u, ScaleByCoatAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def coat_adamw(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8, weight_decay: float = 0.0, *, group_size: int = 128,
               m_format: str = "e4m3", v_format: str = "e4m3", expand: bool = True,
               min_size: int = 4096, mask=None) -> optax.GradientTransformation:
  """AdamW with FP8 moments (COAT, arXiv:2410.19313; equations in the module docstring).

  Args:
    learning_rate: scalar or optax schedule.
    b1, b2, eps: Adam's moment decays and denominator epsilon.
    weight_decay: decoupled decay ``wd`` (``optax.adamw``'s), masked by ``mask``.
    group_size: elements per quantization group along the last axis (COAT: 128).
    m_format, v_format: ``"e4m3"`` (COAT's default for both) or ``"e5m2"``.
    expand: COAT's dynamic range expansion; False is per-group absmax scaling.
    min_size: leaves with fewer elements keep fp32 moments.
    mask: optax-style weight-decay mask (pytree of bools or a callable of the params).

  Returns:
    ``optax.chain(scale_by_coat_adam, add_decayed_weights, scale_by_learning_rate)``, the same
    chain as ``optax.adamw``.
  """
  if not callable(learning_rate):
    lr = float(learning_rate)
    if math.isnan(lr) or lr < 0:
      raise ValueError(f"learning_rate={learning_rate} must be >= 0 (or an optax schedule).")
  if not callable(weight_decay) and (math.isnan(float(weight_decay)) or weight_decay < 0):
    raise ValueError(f"weight_decay={weight_decay} must be >= 0 (0 disables decay).")
  return optax.chain(
      scale_by_coat_adam(b1, b2, eps, group_size=group_size, m_format=m_format,
                         v_format=v_format, expand=expand, min_size=min_size),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def state_nbytes(state) -> int:
  """Bytes of an optimizer state (concrete or ``jax.eval_shape`` output), FP8 parts included."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
