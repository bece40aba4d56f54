"""Building blocks of the models: Linear, RMSNorm, Embed, RoPE.

Every parameter carries ``logical_axes`` metadata (see :mod:`core.sharding`). ``Linear``
computes ``x @ kernel`` through :func:`dot`, the single place where a kernel that is not a
plain array goes to its own matmul: a small registry maps weight types to matmuls
(:func:`register_weight_type`); ``core.qtensor.QuantizedWeight`` -> the low-bit Pallas matmul.
An FP8 weight type joins with one more ``register_weight_type`` call.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from core import sharding
from core.qtensor import QuantizedWeight
from kernels_pallas import sharded as sharded_kernels
from kernels_pallas.lowbit_matmul import lowbit_matmul
from models import fp8_act

_MATMULS: dict[type, Callable] = {}
_SHARDED_MATMULS: dict[type, Callable] = {}


def register_weight_type(weight_type: type, matmul: Callable,
                         sharded: Callable | None = None) -> None:
  """``Linear`` computes ``matmul(x, kernel)`` for kernels of ``weight_type``.

  ``sharded(x, kernel, *, mesh, row_axes, k_axes, n_axes)`` (optional) is the same matmul per
  shard of a mesh; :func:`dot` uses it inside ``core.sharding.axis_rules`` on a mesh of more
  than one device (a Pallas kernel cannot be partitioned by XLA: kernels_pallas.sharded).
  """
  if weight_type in _MATMULS and _MATMULS[weight_type] is not matmul:
    raise ValueError(f"{weight_type.__name__} already has a matmul registered.")
  _MATMULS[weight_type] = matmul
  if sharded is not None:
    _SHARDED_MATMULS[weight_type] = sharded


register_weight_type(QuantizedWeight, lowbit_matmul, sharded=sharded_kernels.lowbit_matmul)


def _normal(rngs: nnx.Rngs, shape, std: float, dtype):
  return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def _flat(axes) -> tuple:
  return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def matmul_mesh_axes(x_shape, kernel_shape, logical_axes):
  """``(mesh, row_axes, k_axes, n_axes)`` for ``x @ kernel`` under the active axis rules, or
  None off a mesh (or on one device, or without the kernel's logical axes).

  Rows (``x``'s leading dim) follow the ``batch`` rule, the kernel's dims its logical axes. A
  mesh axis that already splits the rows is taken off the kernel's dims: FSDP's ``embed``
  shards are gathered for the matmul, as XLA does for a dense kernel. What remains on K is
  row-parallel (attention out, MLP down: ``heads``/``mlp`` over ``tensor``), on N
  column-parallel (q/k/v, gate/up).
  """
  active = sharding.active()
  if active is None or logical_axes is None:
    return None
  rules, mesh = active
  if mesh.size == 1:
    return None
  rows = (sharding.logical_to_spec(("batch",), (x_shape[0],), rules, mesh)[0]
          if len(x_shape) >= 2 else None)
  k_axes, n_axes = sharding.logical_to_spec(logical_axes, tuple(kernel_shape), rules, mesh)
  taken = set(_flat(rows))
  keep = lambda axes: tuple(a for a in _flat(axes) if a not in taken) or None
  return mesh, rows, keep(k_axes), keep(n_axes)


def dot(x, kernel, logical_axes=None):
  """``x @ kernel``: a dense array, or a registered weight type's own matmul (per shard when
  axis rules on a mesh are active and the kernel's ``logical_axes`` are given)."""
  matmul = _MATMULS.get(type(kernel))
  if matmul is not None:
    sharded = _SHARDED_MATMULS.get(type(kernel))
    placed = sharded and matmul_mesh_axes(x.shape, kernel.shape, logical_axes)
    if placed:
      mesh, rows, k_axes, n_axes = placed
      return sharded(x, kernel, mesh=mesh, row_axes=rows, k_axes=k_axes, n_axes=n_axes)
    return matmul(x, kernel)
  return jnp.einsum("...k,kn->...n", x, kernel.astype(x.dtype))


class Linear(nnx.Module):
  """Bias-free linear layer, kernel in Flax layout ``[in_features, out_features]``."""

  def __init__(self, in_features: int, out_features: int, *, logical_axes, rngs: nnx.Rngs,
               param_dtype=jnp.float32, std: float | None = None):
    std = in_features**-0.5 if std is None else std
    self.kernel = nnx.Param(_normal(rngs, (in_features, out_features), std, param_dtype),
                            logical_axes=tuple(logical_axes))

  def __call__(self, x):
    # [...] would index a QuantizedWeight; the logical axes place it on a mesh.
    return dot(x, self.kernel.get_value(),
               logical_axes=self.kernel.get_metadata().get("logical_axes"))


class RMSNorm(nnx.Module):
  """``y = x / sqrt(mean(x^2) + eps) * scale``, computed in f32."""

  def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32,
               fp8_activations: bool = False):
    self.eps = eps
    self.fp8_activations = fp8_activations  # keep x for the backward pass in 1x16 E4M3
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))

  def __call__(self, x):
    if self.fp8_activations:
      return fp8_act.rmsnorm(x, self.scale[...], self.eps)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Embed(nnx.Module):
  """Token embedding; ``attend`` reuses it as the output projection (tied embeddings)."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    # std 1/sqrt(dim): with tied embeddings the output logits start at unit scale.
    self.embedding = nnx.Param(_normal(rngs, (vocab_size, dim), dim**-0.5, param_dtype),
                               logical_axes=("vocab", "embed"))

  def __call__(self, tokens, dtype):
    return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)

  def attend(self, x):
    return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype))


def rope(x, positions, *, theta: float):
  """Rotary position embedding (rotate-half form) on ``x[..., seq, heads, head_dim]``."""
  head_dim = x.shape[-1]
  freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = positions[..., None].astype(jnp.float32) * freq  # [..., seq, head_dim/2]
  sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
