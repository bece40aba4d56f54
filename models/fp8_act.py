"""COAT's FP8 activations (Xi et al. 2024, arXiv:2410.19313 §5): what the backward pass keeps.

What changes is mainly the residual kept for the backward pass, which is stored in FP8 E4M3
and dequantized there (``jax.custom_vjp``,
so the FP8 tensors are what the compiled program holds between forward and backward):

* linear layers (:func:`dots`): the input ``x`` with one per-tensor scale,
  ``s = max(amax(x), 1e-10 F) / F``, ``q = e4m3(x / s)`` (``F = 448``); one quantized copy serves
  every kernel that reads ``x`` (q/k/v, gate/up). ``dW = deq(q)^T g``, ``dx = g W^T``.
* non-linear layers (:func:`rmsnorm`, :func:`swiglu`): inputs with per-1x16-group scales
  (``s_g = max(amax_g, 1e-10 F) / F`` for 16 consecutive elements of the last axis), because
  norm inputs lose accuracy under a single coarse scale (COAT's mixed granularity); the
  backward pass is the exact VJP of the layer evaluated at the dequantized inputs.

The forward linear layers run E4M3 x E4M3 with the two per-tensor scales on GPUs (FP8 GEMMs
on H100/H200); on backends without FP8 matmuls (the CPU, TPUs up to v6e) the forward matmul
is the unquantized one. The backward matmuls run in the compute dtype from the dequantized
input everywhere.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

FP8 = jnp.float8_e4m3fn
FMAX = 448.0
SCALE_MIN = 1e-10  # COAT's SCALE_MIN_THRES: an all-zero tensor/group gets a tiny, finite scale
GROUP = 16


def quantize_tensor(x):
  """``(q, scale)``: E4M3 with one fp32 scale for the whole tensor."""
  amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
  scale = jnp.maximum(amax, SCALE_MIN * FMAX) / FMAX
  return jnp.clip(x.astype(jnp.float32) / scale, -FMAX, FMAX).astype(FP8), scale


def dequantize_tensor(q, scale, dtype):
  return (q.astype(jnp.float32) * scale).astype(dtype)


def quantize_1x16(x):
  """``(q, scales)``: E4M3 with an fp32 scale per 16 consecutive elements of the last axis
  (which must be a multiple of 16)."""
  n = x.shape[-1]
  if n % GROUP:
    raise ValueError(f"fp8_activations needs feature dims divisible by {GROUP}; got {n}.")
  g = x.astype(jnp.float32).reshape(x.shape[:-1] + (n // GROUP, GROUP))
  scale = jnp.maximum(jnp.max(jnp.abs(g), axis=-1, keepdims=True), SCALE_MIN * FMAX) / FMAX
  q = jnp.clip(g / scale, -FMAX, FMAX).astype(FP8)
  return q.reshape(x.shape), scale[..., 0]


def dequantize_1x16(q, scale, dtype):
  n = q.shape[-1]
  g = q.astype(jnp.float32).reshape(q.shape[:-1] + (n // GROUP, GROUP)) * scale[..., None]
  return g.reshape(q.shape).astype(dtype)


def _stored(*residuals):
  """Keeps the FP8 residuals as buffers: without the barrier XLA fuses the (elementwise)
  quantization into its backward-pass consumers and keeps the wide input alive instead,
  which undoes the saving (measured on the compiled H200 train step, reports/coat.py)."""
  return jax.lax.optimization_barrier(residuals)


def _after(grads, *residuals):
  """The residuals, tied to the incoming gradients: the backward pass dequantizes only once
  they exist. Without it XLA may dequantize right after the forward quantization (the result
  depends on forward values alone) and keep the wide copy until the backward pass, which
  undoes the saving again (seen in the H200 step's buffer live ranges)."""
  return jax.lax.optimization_barrier((grads, residuals))


# --- linear layers: x @ W_i for several kernels sharing one quantized x ----------------------


def _matmul(x, w):
  return jnp.einsum("...k,kn->...n", x, w.astype(x.dtype))


def fp8_matmul(q, scale, w, dtype):
  """``deq(q) @ deq(e4m3(w))`` as one E4M3 x E4M3 GEMM with f32 accumulation, both per-tensor
  scales applied to its output (XLA:GPU fuses them into the GEMM's epilogue)."""
  qw, w_scale = quantize_tensor(w)
  y = jnp.einsum("...k,kn->...n", q, qw, preferred_element_type=jnp.float32)
  return (y * (scale * w_scale)).astype(dtype)


def _forward(x, q, scale, kernels):
  """The forward products. On GPUs, E4M3 x E4M3 (COAT's FP8 linear layers: XLA:GPU runs the
  FP8 GEMM on the tensor cores of sm89+, H100/H200); elsewhere (the CPU; TPUs up to v6e have
  no FP8 matrix unit) the unquantized product, so there the forward is exactly the plain
  model's. Chosen when the program is lowered for its platform (deviceless AOT included)."""
  return jax.lax.platform_dependent(
      x, q, scale, kernels,
      cuda=lambda x, q, s, ks: tuple(fp8_matmul(q, s, w, x.dtype) for w in ks),
      default=lambda x, q, s, ks: tuple(_matmul(x, w) for w in ks))


@jax.custom_vjp
def dots(x, kernels):
  """``tuple(x @ w for w in kernels)`` (E4M3 x E4M3 on GPUs, :func:`_forward`); the backward
  pass keeps ``x`` in E4M3 (per-tensor)."""
  return _forward(x, *quantize_tensor(x), kernels)


def _dots_fwd(x, kernels):
  q, scale = _stored(*quantize_tensor(x))
  return _forward(x, q, scale, kernels), (q, scale, kernels, jnp.zeros((), x.dtype))


def _dots_bwd(res, grads):
  q, scale, kernels, like = res
  grads, (q, scale) = _after(grads, q, scale)
  x = dequantize_tensor(q, scale, like.dtype)
  dx = sum(jnp.einsum("...n,kn->...k", g, w.astype(g.dtype)) for g, w in zip(grads, kernels))
  batch_axes = tuple(range(x.ndim - 1))
  dws = tuple(jnp.tensordot(x, g.astype(x.dtype), axes=(batch_axes, batch_axes)).astype(w.dtype)
              for g, w in zip(grads, kernels))
  return dx.astype(like.dtype), dws


dots.defvjp(_dots_fwd, _dots_bwd)


# --- non-linear layers: exact VJP at the dequantized 1x16-group inputs -----------------------


def _rmsnorm(x, scale, eps):
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rmsnorm(x, scale, eps):
  """RMSNorm (as ``models.layers.RMSNorm``); the backward pass keeps ``x`` in 1x16 E4M3."""
  return _rmsnorm(x, scale, eps)


def _rmsnorm_fwd(x, scale, eps):
  q, s = _stored(*quantize_1x16(x))
  return _rmsnorm(x, scale, eps), (q, s, scale, jnp.zeros((), x.dtype))


def _rmsnorm_bwd(eps, res, g):
  q, s, scale, like = res
  g, (q, s) = _after(g, q, s)
  _, vjp = jax.vjp(lambda a, b: _rmsnorm(a, b, eps), dequantize_1x16(q, s, like.dtype), scale)
  return vjp(g)


rmsnorm.defvjp(_rmsnorm_fwd, _rmsnorm_bwd)


def _swiglu(a, b):
  return jax.nn.silu(a) * b


@jax.custom_vjp
def swiglu(a, b):
  """``silu(a) * b``; the backward pass keeps ``a`` and ``b`` in 1x16 E4M3."""
  return _swiglu(a, b)


def _swiglu_fwd(a, b):
  return _swiglu(a, b), (*_stored(*quantize_1x16(a), *quantize_1x16(b)), jnp.zeros((), a.dtype))


def _swiglu_bwd(res, g):
  qa, sa, qb, sb, like = res
  g, (qa, sa, qb, sb) = _after(g, qa, sa, qb, sb)
  _, vjp = jax.vjp(_swiglu, dequantize_1x16(qa, sa, like.dtype),
                   dequantize_1x16(qb, sb, like.dtype))
  return vjp(g)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
