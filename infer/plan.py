"""Inference on paper: the decode step compiled for one chip we do not have (core/targets.py).

One decode step of :mod:`models.transformer` (a token per sequence against its KV cache) is
compiled for a target's first device with that chip's compiler, tracing the kernels the chip
would run (``kernels_pallas.common.target_backend``: Triton on an H200, Mosaic on a TPU, both
for the low-bit matmul and for Hydragen attention). Per chip it reports

* weights: bf16 kernels, or int4 (any bits) ``QuantizedWeight``s in every block's linears
  (embedding and output head stay bf16): ``bits/8`` bytes per weight + scales and zeros;
* the KV cache, ``2 (K, V) x layers x tokens x kv_heads x head_dim x 2 bytes``, where tokens
  are ``B (P + S)`` for the plain cache and ``P + B S`` with Hydragen (Juravsky et al. 2024,
  arXiv 2402.05099: one copy of the shared ``P``-token prefix for the whole batch);
* temporaries, and the total against ``memory_fraction x HBM``;

and :func:`fit_batch` bisects the largest batch that fits (:func:`core.fit.fit_batch_size`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from configs import targets as targets_lib
from core import fit as fit_lib
from core import qtensor
from core import targets as core_targets
from kernels_pallas import common as kernels_common
from kernels_pallas import lowbit_matmul
from kernels_pallas.prefix_attention import PrefixLevel
from models import transformer

DEFAULT_MEMORY_FRACTION = 0.9


def _nbytes(tree) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def abstract_weights(cfg: transformer.ModelConfig, bits: int | None, group_size: int = 128):
  """``(graphdef, params)`` as ShapeDtypeStructs: bf16, or every 2-D kernel inside the blocks
  as an abstract ``bits``-bit QuantizedWeight with per-OC groups of ``group_size``."""
  cfg = dataclasses.replace(cfg, param_dtype="bfloat16", dtype="bfloat16")
  graphdef, params = transformer.abstract_params(cfg)
  if bits is None:
    return graphdef, params

  def quantize(path, leaf):
    keys = [getattr(p, "key", None) for p in path]
    if "layers" not in keys or keys[-1] != "kernel" or len(leaf.shape) != 2:
      return leaf
    k, n = leaf.shape
    g = qtensor.group_shape((k, n), group_size, "oc")
    return jax.eval_shape(lambda: qtensor.from_codes(
        jnp.zeros((k, n), jnp.int32), jnp.zeros(g, jnp.bfloat16), jnp.zeros(g, jnp.int32),
        bits=bits, group_size=group_size, dim="oc", dtype=jnp.bfloat16))

  return graphdef, jax.tree_util.tree_map_with_path(quantize, params)


def abstract_cache(cfg, batch: int, prefix_len: int, suffix_len: int, hydragen: bool,
                   dtype=jnp.bfloat16):
  """The decode cache of ``batch`` sequences sharing a ``prefix_len`` prefix, each with room
  for ``suffix_len`` own tokens: plain (every sequence stores the prefix) or Hydragen."""
  kv = lambda b, t: jax.ShapeDtypeStruct((b, t, cfg.n_kv_heads, cfg.head_dim), dtype)
  if not hydragen:
    return [{"k": kv(batch, prefix_len + suffix_len), "v": kv(batch, prefix_len + suffix_len)}
            for _ in range(cfg.n_layers)]
  return [{"k": kv(batch, suffix_len), "v": kv(batch, suffix_len),
           "levels": (PrefixLevel(kv(1, prefix_len), kv(1, prefix_len), (batch,)),),
           "offset": jax.ShapeDtypeStruct((batch,), jnp.int32)}
          for _ in range(cfg.n_layers)]


def compile_decode_step(cfg, target, *, batch: int, prefix_len: int, suffix_len: int,
                        hydragen: bool, bits: int | None, group_size: int = 128):
  """``(compiled, weights, cache)``: one decode step for ``target``'s first device."""
  if isinstance(target, str):
    target = targets_lib.get(target)
  device = core_targets.compile_devices(target)[0]
  graphdef, params = abstract_weights(cfg, bits, group_size)
  # The weights as infer.decode.Decoder holds them on that platform (lowbit_matmul.prepare).
  params = jax.eval_shape(lambda p: lowbit_matmul.prepare_params(p, target.platform), params)
  cache = abstract_cache(cfg, batch, prefix_len, suffix_len, hydragen)
  token = jax.ShapeDtypeStruct((batch, 1), jnp.int32)

  def step(params, cache, tokens, positions):
    logits, cache = transformer.apply(graphdef, params, tokens, positions, None, cache)
    return logits[:, -1], cache

  sh = SingleDeviceSharding(device)
  on = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                 tree)
  with kernels_common.target_backend(target.platform):
    lowered = jax.jit(step, donate_argnums=1).lower(on(params), on(cache), on(token), on(token))
  return lowered.compile(), params, cache


def plan(cfg, target, *, batch: int, prefix_len: int, suffix_len: int, hydragen: bool,
         bits: int | None, group_size: int = 128,
         memory_fraction: float = DEFAULT_MEMORY_FRACTION) -> dict:
  """The per-chip memory of one decode step (module docstring)."""
  if isinstance(target, str):
    target = targets_lib.get(target)
  compiled, params, cache = compile_decode_step(
      cfg, target, batch=batch, prefix_len=prefix_len, suffix_len=suffix_len,
      hydragen=hydragen, bits=bits, group_size=group_size)
  mem = core_targets.memory_stats(compiled)
  budget = memory_fraction * target.chip.hbm_bytes
  text = compiled.as_text()
  return {"target": target.name, "batch": batch, "prefix_len": prefix_len,
          "suffix_len": suffix_len, "hydragen": hydragen,
          "weights": "bf16" if bits is None else f"int{bits}",
          "weights_bytes": _nbytes(params), "kv_cache_bytes": _nbytes(cache),
          "temp_bytes": mem["temp_size_in_bytes"], **mem,
          "hbm_bytes": target.chip.hbm_bytes, "budget_bytes": int(budget),
          "fits": mem["total_bytes"] <= budget,
          "pallas_calls": text.count("__gpu$xla.gpu.triton") + text.count("tpu_custom_call")}


def fit_batch(cfg, target, *, prefix_len: int, suffix_len: int, hydragen: bool,
              bits: int | None, max_batch: int = 1024, multiple: int = 1,
              memory_fraction: float = DEFAULT_MEMORY_FRACTION,
              budget_bytes: float | None = None) -> dict:
  """The largest decode batch whose step fits one chip (bisection over compiles)."""
  if isinstance(target, str):
    target = targets_lib.get(target)
  budget = budget_bytes if budget_bytes is not None else memory_fraction * target.chip.hbm_bytes
  build = lambda b: compile_decode_step(cfg, target, batch=b, prefix_len=prefix_len,
                                        suffix_len=suffix_len, hydragen=hydragen,
                                        bits=bits)[0]
  return fit_lib.fit_batch_size(build, multiple, max_batch, budget, multiple=multiple)
