"""Uniform group quantizers (AdaDim and GPTQ flavours) and round-to-nearest (RTN).

A group ``x`` (``g`` weights sharing one scale ``s`` and integer zero point ``z``) with
``maxq = 2**bits - 1`` is quantized as

    q = clip(round(x / s) + z, 0, maxq),        x_hat = s * (q - z)

(``round`` is round-half-to-even, as in torch and numpy). The flavours differ only in how
``(s, z)`` are chosen from the group's range ``[xmin, xmax]``:

* ``zero_in_range=False`` -- AdaDim / AWQ (Heo et al. 2024, "Rethinking Channel Dimensions to
  Isolate Outliers for Low-bit Weight Quantization of Large Language Models", ICLR 2024;
  ``adadim/quantize/quantizer.py::pseudo_quantize_tensor``): the range is the group's own
  ``min..max``; ``s = max(xmax - xmin, 1e-5) / maxq``, ``z = clip(-round(xmin / s), 0, maxq)``.
  A group whose values are all positive (or all negative) gets ``z`` clipped to 0 (maxq), so
  its codes can saturate; we reproduce this AWQ behaviour rather than silently changing it.
* ``zero_in_range=True`` -- GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training
  Quantization for Generative Pre-trained Transformers", ICLR 2023; ``quant.py::Quantizer``):
  the range is widened to include 0, ``xmin = min(xmin, 0)``, ``xmax = max(xmax, 0)``; an
  all-zero group uses ``[-1, 1]``; ``s = (xmax - xmin) / maxq``, ``z = round(-xmin / s)``
  (always in ``[0, maxq]``, so 0 is exactly representable).

``sym=True`` (GPTQ style) uses the symmetric range ``[-a, a]`` with
``a = max(|xmin|, |xmax|)`` and the fixed zero point ``z = (maxq + 1) / 2``, so
``s = 2a / maxq`` (and ``max(2a, 1e-5) / maxq`` in the AdaDim flavour). This equals GPTQ's rule
for every group with a negative value; for an all-non-negative group GPTQ keeps ``[0, xmax]``
(whose upper half then saturates), a quirk we do not reproduce.

Layout (weights in Flax layout ``[K, N]`` = [in_features, out_features], see
:mod:`quant.qtensor`): ``dim="oc"`` groups ``g`` consecutive input channels of one output
channel (scales ``[K/g, N]``); ``dim="ic"`` (AdaDim's per-input-channel groups) groups ``g``
consecutive output channels of one input channel (scales ``[K, N/g]``). Both give ``K*N/g``
pairs. Scales are kept in float32 (the precision the quantizer used), zero points are
integers in ``[0, maxq]`` stored as uint8.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from core import packing, qtensor

ADADIM_MIN_RANGE = 1e-5  # clamp on (xmax - xmin) in AdaDim/AWQ's quantizer


def max_code(bits: int) -> int:
  packing.check_bits(bits)
  return 2**bits - 1


def find_params(x, *, bits: int, axis: int, zero_in_range: bool = False, sym: bool = False):
  """Scale and zero point of the groups of ``x`` reduced along ``axis`` (kept as size 1).

  Returns float arrays ``(scale, zero)`` (``zero`` holds integer values) in ``x``'s float
  dtype (float32 for lower precision inputs).
  """
  maxq = max_code(bits)
  x = _compute_dtype(x)
  xmin = jnp.min(x, axis=axis, keepdims=True)
  xmax = jnp.max(x, axis=axis, keepdims=True)
  if zero_in_range:
    xmin = jnp.minimum(xmin, 0)
    xmax = jnp.maximum(xmax, 0)
  if sym:
    xmax = jnp.maximum(jnp.abs(xmin), jnp.abs(xmax))
    xmin = -xmax
  if zero_in_range:
    all_zero = (xmin == 0) & (xmax == 0)
    xmin = jnp.where(all_zero, -1, xmin)
    xmax = jnp.where(all_zero, 1, xmax)
    scale = exact_divide(xmax - xmin, maxq)
  else:
    scale = exact_divide(jnp.maximum(xmax - xmin, ADADIM_MIN_RANGE), maxq)
  if sym:
    zero = jnp.full_like(scale, (maxq + 1) / 2)
  elif zero_in_range:
    zero = jnp.round(exact_divide(-xmin, scale))
  else:
    zero = jnp.clip(-jnp.round(exact_divide(xmin, scale)), 0, maxq)
  return scale, zero


def quantize_codes(x, scale, zero, *, bits: int):
  """``q = clip(round(x / s) + z, 0, maxq)`` as floats holding integers."""
  return jnp.clip(jnp.round(exact_divide(_compute_dtype(x), scale)) + zero, 0, max_code(bits))


def dequantize_codes(q, scale, zero):
  """``x_hat = s * (q - z)``."""
  return scale * (q - zero)


def exact_divide(a, b):
  """IEEE ``a / b``, elementwise after broadcasting.

  XLA rewrites division by a broadcast or a constant as multiplication by its reciprocal,
  which is off by an ulp and moves exact ties to the other code than the reference's true
  division (e.g. ``-a / s = -(maxq + 1) / 2`` at the negative end of every symmetric group).
  The barrier hides the divisor from that rewrite.
  """
  a, b = jnp.broadcast_arrays(a, jnp.asarray(b, a.dtype))
  return a / lax.optimization_barrier(b)


def _compute_dtype(x):
  x = jnp.asarray(x)
  return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


def _grouped(w, group_size: int, dim: str):
  """``[K, N]`` -> groups along axis 1 (oc: ``[K/g, g, N]``) or axis 2 (ic: ``[K, N/g, g]``)."""
  k, n = w.shape
  if dim == "oc":
    return w.reshape(k // group_size, group_size, n), 1
  return w.reshape(k, n // group_size, group_size), 2


def quantize(w, *, bits: int, group_size: int, dim: str, zero_in_range: bool = False,
             sym: bool = False):
  """Integer codes and per-group parameters of ``w[K, N]`` in the QuantizedWeight layout.

  Returns ``(q, scales, zeros)``: int32 codes ``[K, N]``, float scales and integer-valued
  float zeros of shape ``qtensor.group_shape(w.shape, group_size, dim)``.
  """
  check_args(w, bits=bits, group_size=group_size, dim=dim)
  return _quantize(w, bits=bits, group_size=group_size, dim=dim,
                   zero_in_range=bool(zero_in_range), sym=bool(sym))


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "dim", "zero_in_range",
                                             "sym"))
def _quantize(w, *, bits, group_size, dim, zero_in_range, sym):
  wg, axis = _grouped(_compute_dtype(w), group_size, dim)
  scale, zero = find_params(wg, bits=bits, axis=axis, zero_in_range=zero_in_range, sym=sym)
  q = quantize_codes(wg, scale, zero, bits=bits).reshape(w.shape).astype(jnp.int32)
  return q, jnp.squeeze(scale, axis), jnp.squeeze(zero, axis)


def fake_quant(w, *, bits: int, group_size: int, dim: str, zero_in_range: bool = False,
               sym: bool = False):
  """Quantize-dequantize ``w`` (same shape and dtype); equals ``dequantize(rtn(w, ...))``."""
  q, scales, zeros = quantize(w, bits=bits, group_size=group_size, dim=dim,
                              zero_in_range=zero_in_range, sym=sym)
  axis = 0 if dim == "oc" else 1
  s = jnp.repeat(scales, group_size, axis=axis)
  z = jnp.repeat(zeros, group_size, axis=axis)
  return dequantize_codes(q.astype(s.dtype), s, z).astype(w.dtype)


def rtn(w, *, bits: int, group_size: int, dim: str, zero_in_range: bool = False,
        sym: bool = False) -> qtensor.QuantizedWeight:
  """Round-to-nearest group quantization of a Flax weight ``w[K, N]`` to a QuantizedWeight.

  ``dim="oc"``: groups of ``group_size`` consecutive input channels within one output channel;
  ``dim="ic"``: groups of ``group_size`` consecutive output channels within one input channel.
  """
  check_finite("w", w)
  q, scales, zeros = quantize(w, bits=bits, group_size=group_size, dim=dim,
                              zero_in_range=zero_in_range, sym=sym)
  return qtensor.from_codes(q, scales, zeros, bits=bits, group_size=group_size, dim=dim,
                            dtype=w.dtype)


def check_args(w, *, bits: int, group_size: int, dim: str) -> None:
  """Raises a ValueError naming the problem for a weight that cannot take this layout."""
  shape = getattr(w, "shape", None)
  if shape is None:
    raise ValueError(f"w must be an array [in_features, out_features], got {type(w).__name__}.")
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"w must be a floating point weight, got dtype {w.dtype}.")
  if isinstance(group_size, bool) or not isinstance(group_size, int):
    raise ValueError(f"group_size must be an int, got {group_size!r}.")
  qtensor.validate_layout(tuple(shape), bits=bits, group_size=group_size, dim=dim)


def check_finite(name: str, x) -> None:
  """Raises a ValueError if a concrete ``x`` holds NaN or inf (skipped under tracing)."""
  if isinstance(x, jax.core.Tracer):
    return
  bad = int(jnp.size(x) - jnp.count_nonzero(jnp.isfinite(x)))
  if bad:
    raise ValueError(f"{name} has {bad} non-finite (NaN/inf) entries; quantization needs "
                     f"finite values -- check the checkpoint or the calibration data.")
