"""Quantized exports: a params tree with ``QuantizedWeight`` kernels, saved and restored exactly.

Layout on disk (an extension of :func:`train.checkpoint.export_params`'s format)::

  DIR/export.json   {"format": "effijax-export", "version": 1, "dtype": "float32",
                     "model": {...}, "tokenizer": "...",
                     "quantization": {"method", "bits", "group_size", "dim", "calib_mode",
                                      "layouts": {"layers.0.attn.q_proj.kernel":
                                                  {"bits", "group_size", "dim", "shape",
                                                   "dtype", "scales_dtype", "perm"}, ...},
                                      "linears": [per-linear dim choice and errors]}}
  DIR/params/       Orbax: the params tree with every QuantizedWeight replaced by the dict
                    {"packed" int32, "scales", "zeros" uint8[, "perm" int32]}

A QuantizedWeight's static fields (bits, group size, dim, shape, dtype) are pytree *metadata*,
which Orbax does not store; they go to JSON and the arrays to Orbax, and loading rebuilds the
QuantizedWeight and validates it. Writing is atomic (a temporary directory renamed into place),
so a failed run never leaves a half-written export.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from models import transformer as T
from quant import packing, qtensor
from train import checkpoint as ckpt_lib

ARRAY_FIELDS = ("packed", "scales", "zeros")


def _is_qw(x) -> bool:
  return isinstance(x, qtensor.QuantizedWeight)


def _walk(tree, prefix=()):
  """Yields ``(path tuple, leaf)`` of a nested dict, QuantizedWeights as leaves."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _walk(v, prefix + (k,))
  else:
    yield prefix, tree


def path_name(path) -> str:
  return ".".join(str(p) for p in path)


def _replace(tree, fn, prefix=()):
  if isinstance(tree, dict):
    return {k: _replace(v, fn, prefix + (k,)) for k, v in tree.items()}
  return fn(prefix, tree)


def split_quantized(params):
  """``(arrays, layouts)``: a tree of plain arrays for Orbax and the static metadata."""
  layouts = {}

  def to_arrays(path, leaf):
    if not _is_qw(leaf):
      return leaf
    leaf.validate()
    layouts[path_name(path)] = {
        "bits": leaf.bits, "group_size": leaf.group_size, "dim": leaf.dim,
        "shape": list(leaf.shape), "dtype": leaf.dtype,
        "scales_dtype": jnp.dtype(leaf.scales.dtype).name, "perm": leaf.perm is not None}
    out = {name: getattr(leaf, name) for name in ARRAY_FIELDS}
    if leaf.perm is not None:
      out["perm"] = leaf.perm
    return out

  return _replace(params, to_arrays), layouts


def _stored_structs(layout):
  k, n = layout["shape"]
  gshape = qtensor.group_shape((k, n), layout["group_size"], layout["dim"])
  out = {"packed": jax.ShapeDtypeStruct((packing.packed_rows(k, layout["bits"]), n), jnp.int32),
         "scales": jax.ShapeDtypeStruct(gshape, jnp.dtype(layout["scales_dtype"])),
         "zeros": jax.ShapeDtypeStruct(gshape, jnp.uint8)}
  if layout["perm"]:
    out["perm"] = jax.ShapeDtypeStruct((k,), jnp.int32)
  return out


def join_quantized(arrays, layouts):
  """Inverse of :func:`split_quantized`."""

  def rebuild(tree, prefix=()):
    name = path_name(prefix)
    if name in layouts:
      lay = layouts[name]
      return qtensor.QuantizedWeight(
          packed=jnp.asarray(tree["packed"]), scales=jnp.asarray(tree["scales"]),
          zeros=jnp.asarray(tree["zeros"]), bits=int(lay["bits"]),
          group_size=int(lay["group_size"]), dim=str(lay["dim"]),
          shape=tuple(int(s) for s in lay["shape"]), dtype=str(lay["dtype"]),
          perm=jnp.asarray(tree["perm"]) if lay["perm"] else None).validate()
    if isinstance(tree, dict):
      return {k: rebuild(v, prefix + (k,)) for k, v in tree.items()}
    return tree

  return rebuild(arrays)


def save_quantized(path: str | os.PathLike, params, meta: dict) -> Path:
  """Writes a quantized export atomically; returns its path.

  Args:
    path: the export directory (replaced only once the new export is complete).
    params: params whose quantized kernels are QuantizedWeights (others: float arrays, kept
      in float32 so scales and dense params round-trip exactly).
    meta: must hold ``"model"`` (the model config dict) and ``"quantization"`` (a dict:
      method, bits, ...); other keys (``"tokenizer"``, ``"source"``...) are stored as they are.
  """
  for key in ("model", "quantization"):
    if key not in meta:
      raise ValueError(f"meta must have a {key!r} entry, got keys {sorted(meta)}.")
  arrays, layouts = split_quantized(params)
  if not layouts:
    raise ValueError("params hold no QuantizedWeight; save dense params with "
                     "train.checkpoint.export_params instead.")
  extra = {k: v for k, v in meta.items() if k not in ("model", "quantization")}
  extra["quantization"] = {**meta["quantization"], "layouts": layouts}
  return ckpt_lib.export_params(path, arrays, model_config=dict(meta["model"]),
                                dtype="float32", extra=extra)


def is_quantized_export(path: str | os.PathLike) -> bool:
  return "quantization" in ckpt_lib.read_export_metadata(path)


def load_quantized(path: str | os.PathLike):
  """``(meta, params)`` of a quantized export; params carry QuantizedWeight kernels."""
  path = Path(path).absolute()
  meta = ckpt_lib.read_export_metadata(path)
  quant = meta.get("quantization")
  if not isinstance(quant, dict) or "layouts" not in quant:
    raise ValueError(f"{path} is a dense export (no 'quantization' entry in export.json); "
                     "load it with train.checkpoint.load_export, or quantize it with "
                     "`python quant/main.py --checkpoint ...`.")
  cfg = T.ModelConfig.from_dict(meta["model"])
  layouts = quant["layouts"]
  _, abstract = T.abstract_params(cfg)
  dtype = jnp.dtype(meta.get("dtype", "float32"))

  def target_leaf(p, leaf):
    name = path_name(p)
    if name in layouts:
      if tuple(layouts[name]["shape"]) != tuple(leaf.shape):
        raise ValueError(f"quantized export {path}: {name} has shape {layouts[name]['shape']}"
                         f" but the model config says {list(leaf.shape)}.")
      return _stored_structs(layouts[name])
    return jax.ShapeDtypeStruct(leaf.shape, dtype)

  target = _replace(abstract, target_leaf)
  unknown = set(layouts) - {path_name(p) for p, _ in _walk(abstract)}
  if unknown:
    raise ValueError(f"quantized export {path} names params the model does not have: "
                     f"{sorted(unknown)[:4]}.")
  try:
    # Orbax stores dict keys as strings; restore with string keys, then the model's key types.
    restored = ocp.StandardCheckpointer().restore(path / "params", ckpt_lib._str_keys(target))  # pylint: disable=protected-access
    arrays = ckpt_lib._keys_like(restored, target)  # pylint: disable=protected-access
  except Exception as e:  # Orbax raises many types for mismatched or corrupt trees.
    raise ValueError(f"quantized export {path} could not be restored against its model "
                     f"config ({type(e).__name__}: {str(e)[:300]}).") from e
  return meta, join_quantized(arrays, layouts)
