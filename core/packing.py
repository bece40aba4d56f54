"""Bit-packing of low-bit integer weights into int32 words: the one storage layout.

Weights use the Flax kernel layout ``[K, N]`` (in_features, out_features). Integer codes
``q[k, n]`` in ``[0, 2**bits)`` are packed **along K** into int32 words, so a kernel that
walks K in blocks reads whole words:

* bits in {2, 4, 8}: ``P = 32 // bits`` codes per word. Code ``q[k, n]`` lives in word row
  ``k // P`` at bit offset ``(k % P) * bits`` (lowest bits first; the GPTQ/AutoGPTQ
  ``qweight`` order). ``packed.shape == (K * bits // 32, N)``.
* bits == 3: bit planes instead of codes that straddle word boundaries (kernel friendly:
  every shift is static). The low two bits ``q & 3`` are packed as 2-bit codes
  (``K // 16`` rows), then the high bit ``q >> 2`` as 1-bit codes (``K // 32`` rows), the two
  stacked along axis 0: ``packed.shape == (3 * K // 32, N)``, still exactly 3 bits a weight.

K must be a multiple of ``32 // bits`` (of 32 for 3-bit). Words are stored as int32 (TPU
and Pallas friendly); the bit pattern is that of the uint32 word.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

SUPPORTED_BITS = (2, 3, 4, 8)


def codes_per_word(bits: int) -> int:
  """Codes a 32-bit word holds (3-bit: its 2-bit plane; see module docstring)."""
  check_bits(bits)
  return 32 if bits == 3 else 32 // bits


def check_bits(bits: int) -> None:
  if bits not in SUPPORTED_BITS:
    raise ValueError(f"bits={bits} is not supported; choose one of {SUPPORTED_BITS}.")


def check_packable(k: int, bits: int) -> None:
  """Raises unless K rows of ``bits``-bit codes pack into whole int32 words."""
  check_bits(bits)
  multiple = 32 if bits == 3 else 32 // bits
  if k % multiple:
    raise ValueError(
        f"in_features K={k} must be a multiple of {multiple} to pack {bits}-bit codes into "
        f"int32 words; pad the layer or use other bits.")


def packed_rows(k: int, bits: int) -> int:
  check_packable(k, bits)
  return k * bits // 32


def _pack_uniform(q, b: int):
  k, n = q.shape
  p = 32 // b
  q = q.astype(jnp.uint32).reshape(k // p, p, n)
  shifts = (jnp.arange(p, dtype=jnp.uint32) * b)[None, :, None]
  # Fields do not overlap, so the sum is the bitwise OR and never overflows.
  words = jnp.sum(q << shifts, axis=1, dtype=jnp.uint32)
  return lax.bitcast_convert_type(words, jnp.int32)


def _unpack_uniform(words, b: int):
  r, n = words.shape
  p = 32 // b
  w = lax.bitcast_convert_type(words, jnp.uint32)
  shifts = (jnp.arange(p, dtype=jnp.uint32) * b)[None, :, None]
  q = (w[:, None, :] >> shifts) & jnp.uint32((1 << b) - 1)
  return q.reshape(r * p, n).astype(jnp.int32)


def pack(q, bits: int):
  """Packs integer codes ``q[K, N]`` (values in [0, 2**bits)) into int32 words."""
  if q.ndim != 2:
    raise ValueError(f"pack expects a 2-D [K, N] array of codes, got shape {q.shape}.")
  check_packable(q.shape[0], bits)
  if bits == 3:
    q = q.astype(jnp.uint32)
    return jnp.concatenate([_pack_uniform(q & 3, 2), _pack_uniform(q >> 2, 1)], axis=0)
  return _pack_uniform(q, bits)


def unpack(packed, bits: int):
  """Inverse of :func:`pack`: int32 words -> int32 codes ``[K, N]``."""
  check_bits(bits)
  if packed.ndim != 2:
    raise ValueError(f"unpack expects 2-D packed words, got shape {packed.shape}.")
  if bits == 3:
    rows = packed.shape[0]
    if rows % 3:
      raise ValueError(f"3-bit packed weights need a row count divisible by 3, got {rows}.")
    lo_rows = 2 * rows // 3
    lo = _unpack_uniform(packed[:lo_rows], 2)
    hi = _unpack_uniform(packed[lo_rows:], 1)
    return lo | (hi << 2)
  return _unpack_uniform(packed, bits)
