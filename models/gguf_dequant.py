"""Dequantize GGUF tensors from their block layouts (ggml's ``ggml-common.h`` block structs).

Every quantized type stores a row as consecutive blocks of ``QK = 32`` weights; each block is
little-endian bytes, ``d``/``m`` are float16, ``qs`` packs the codes. With ``j`` in
``[0, 16)`` the two nibbles of ``qs[j]`` are the weights ``j`` (low) and ``j + 16`` (high)::

  type   bytes  layout                       weight x
  Q8_0   34     d, int8 qs[32]                x[j] = d * qs[j]
  Q4_0   18     d, u8 qs[16]                  x[j] = d * (nibble - 8)
  Q4_1   20     d, m, u8 qs[16]               x[j] = d * nibble + m
  Q5_0   22     d, u32 qh, u8 qs[16]          x[j] = d * ((nibble | bit_j(qh) << 4) - 16)
  Q5_1   24     d, m, u32 qh, u8 qs[16]       x[j] = d * (nibble | bit_j(qh) << 4) + m

plus the unquantized F32, F16 and BF16 (the top 16 bits of a float32). Others (the K-quants,
IQ*, ...) raise :class:`UnsupportedTensorType` naming the type and this list; tests compare
every decoder with ``gguf.quants.dequantize`` on random blocks.
"""
from __future__ import annotations

import numpy as np

QK = 32
# name -> (bytes per block of QK weights, or None for unquantized element types)
BLOCK_BYTES = {"F32": None, "F16": None, "BF16": None,
               "Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}
SUPPORTED = tuple(BLOCK_BYTES)


class UnsupportedTensorType(ValueError):
  pass


def _f16(blocks, start):
  return blocks[:, start:start + 2].copy().view("<f2").astype(np.float32)  # [nb, 1]


def _nibbles(qs):
  """``u8[nb, 16]`` -> codes ``[nb, 32]``: low nibbles are weights 0..15, high 16..31."""
  return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32)


def _high_bits(blocks, start):
  """Bit ``j`` of the little-endian ``u32 qh`` is the fifth bit of weight ``j``."""
  qh = blocks[:, start:start + 4].copy().view("<u4")  # [nb, 1]
  return ((qh >> np.arange(QK, dtype=np.uint32)) & 1).astype(np.int32) << 4


def _decode_blocks(kind: str, blocks: np.ndarray) -> np.ndarray:
  """``u8[nb, bytes]`` -> ``f32[nb, 32]``."""
  if kind == "Q8_0":
    return _f16(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)
  if kind == "Q4_0":
    return _f16(blocks, 0) * (_nibbles(blocks[:, 2:]) - 8).astype(np.float32)
  if kind == "Q4_1":
    return _f16(blocks, 0) * _nibbles(blocks[:, 4:]).astype(np.float32) + _f16(blocks, 2)
  if kind == "Q5_0":
    codes = _nibbles(blocks[:, 6:]) | _high_bits(blocks, 2)
    return _f16(blocks, 0) * (codes - 16).astype(np.float32)
  if kind == "Q5_1":
    codes = _nibbles(blocks[:, 8:]) | _high_bits(blocks, 4)
    return _f16(blocks, 0) * codes.astype(np.float32) + _f16(blocks, 2)
  raise AssertionError(kind)


def dequantize(raw: np.ndarray, kind: str, shape) -> np.ndarray:
  """The ``float32`` array of ``shape`` (numpy order, last axis = GGUF's ``ne[0]``) stored in
  ``raw`` (the tensor's bytes, any dtype/shape) as GGUF type ``kind`` (e.g. ``"Q4_1"``)."""
  if kind not in BLOCK_BYTES:
    raise UnsupportedTensorType(
        f"GGUF tensor type {kind} is not supported; supported types: {', '.join(SUPPORTED)}. "
        "Re-export the model with one of them (e.g. llama.cpp's convert_hf_to_gguf.py "
        "--outtype f16, or llama-quantize to Q8_0/Q4_0/Q4_1).")
  shape = tuple(int(s) for s in shape)
  size = int(np.prod(shape))
  raw = np.ascontiguousarray(raw).reshape(-1)
  if kind == "F32":
    return raw.view(np.uint8).view("<f4").astype(np.float32).reshape(shape)
  if kind == "F16":
    return raw.view(np.uint8).view("<f2").astype(np.float32).reshape(shape)
  if kind == "BF16":
    bits = raw.view(np.uint8).view("<u2").astype(np.uint32) << 16
    return bits.view(np.float32).reshape(shape)
  if shape[-1] % QK:
    raise ValueError(f"a {kind} tensor's rows ({shape[-1]} weights) must be a multiple of "
                     f"the block size {QK}; the file is corrupt.")
  nbytes = BLOCK_BYTES[kind]
  blocks = raw.view(np.uint8)
  if blocks.size != size // QK * nbytes:
    raise ValueError(f"a {kind} tensor of shape {shape} needs {size // QK * nbytes} bytes, "
                     f"got {blocks.size}; the file is corrupt.")
  return _decode_blocks(kind, blocks.reshape(-1, nbytes)).reshape(shape)
