"""Orbax checkpoints of training runs, and exports: the one module that touches Orbax.

Its API moves (the v0 -> v1 switch should touch only this file), so everything else goes
through these functions.

* **Run checkpoints** (``WORKDIR/checkpoints/<step>/``): ``state`` (step, params, optimizer
  state) and ``data`` (the input iterator's state, JSON), saved asynchronously; the newest
  ``keep`` are kept. Orbax writes into a temporary directory and renames it when complete, so a
  killed run never leaves a checkpoint that looks finished; a restore that fails names the
  checkpoint and leaves every checkpoint on disk untouched.
* **Restore onto any mesh**: the caller passes abstract arrays (``jax.ShapeDtypeStruct`` with
  the *new* shardings), so a checkpoint saved on 8 devices loads on 1 or 4.
* **Exports** (:func:`save_export` / :func:`load_export`): params only, plus JSON metadata
  (the model config, the tokenizer spec, ...). What ``quant/`` and ``infer/`` read::

    DIR/export.json   {"format": "effijax-export", "version": 1, "dtype": "float32",
                       "model": {...}, "tokenizer": "...", ...,
                       "quantization": {..., "layouts": {"layers.0.attn.q_proj.kernel":
                                         {"bits", "group_size", "dim", "shape", "dtype",
                                          "scales_dtype", "perm"}, ...}}}   (quantized only)
    DIR/params/       Orbax: the params tree; a QuantizedWeight is stored as the dict
                      {"packed" int32, "scales", "zeros" uint8[, "perm" int32]}

  A ``QuantizedWeight``'s static fields are pytree metadata, which Orbax does not store; they
  go to the JSON and loading rebuilds and validates the weight. Writing is atomic (a sibling
  temporary directory renamed into place) and never replaces anything but an export of the
  same kind, and that only when asked (:func:`check_export_destination`).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from core import packing, qtensor

EXPORT_FORMAT = "effijax-export"
EXPORT_VERSION = 1
EXPORT_DTYPES = ("bfloat16", "float32")
# What marks a directory as a training run's workdir (train/ writes these).
WORKDIR_MARKERS = ("checkpoints", "config.json", "metrics.jsonl")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored; the message names it and what to do."""


class ExportDestinationError(ValueError):
  """An export would be written where it could destroy something; the message says what."""


# --------------------------------------------------------------------------------------------
# Run checkpoints
# --------------------------------------------------------------------------------------------


class Checkpointer:

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self._mngr = ocp.CheckpointManager(self.directory, item_names=("state", "data"),
                                       options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, data_state: dict | None, *, force: bool = True) -> bool:
    return self._mngr.save(
        int(step), force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data_state or {})))

  def set_aside_after(self, step: int) -> list[Path]:
    """Moves checkpoints newer than ``step`` to ``<dir>_superseded/`` (nothing is deleted).

    A run resumed from an older step would otherwise collide with, or be mixed up with, the
    newer (possibly corrupt) checkpoints it is replacing.
    """
    moved = []
    for s in self.all_steps():
      if s > step:
        dest = self.directory.with_name(self.directory.name + "_superseded") / \
            f"{s}-{uuid.uuid4().hex[:6]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.directory / str(s), dest)
        moved.append(dest)
    if moved:
      self._mngr.reload()
    return moved

  def reached_preemption(self, step: int) -> bool:
    return self._mngr.reached_preemption(int(step))

  def restore(self, step: int, abstract_state):
    """Restores ``(state, data_state)`` at ``step`` with the shardings in ``abstract_state``."""
    path = self.directory / str(step)
    others = [s for s in self.all_steps() if s != step]
    what_to_do = (f"It was left as it is. Other checkpoints in {self.directory}: "
                  f"{others or 'none'}; restore one with --config.train.restore_step=STEP, or "
                  "move the bad one aside.")
    missing = _missing_files(path)
    if missing:
      raise CheckpointError(f"checkpoint {path} is incomplete: {', '.join(missing)} "
                            f"missing. {what_to_do}")
    try:
      out = self._mngr.restore(
          int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                             data=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for truncated/corrupt files.
      raise CheckpointError(f"checkpoint {path} could not be restored "
                            f"({_short_reason(e, path)}). {what_to_do}") from e
    return out["state"], dict(out["data"] or {})

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def _short_reason(e: Exception, path: Path) -> str:
  """One line for a failed restore: the innermost cause's first line (it names the file or
  array that could not be read); Orbax/TensorStore errors can run to hundreds of lines."""
  del path
  chain, c = [], e
  while c is not None and len(chain) < 16:
    chain.append(c)
    c = c.__cause__ or c.__context__
  root = chain[-1]
  text = str(root).strip()
  first = text.splitlines()[0] if text else ""
  return f"{type(root).__name__}: {first[:300]}"


# Files every complete item of a run checkpoint has (Orbax writes them last).
_REQUIRED = ("state/_METADATA", "_CHECKPOINT_METADATA")


def _missing_files(path: Path) -> list[str]:
  return [f for f in _REQUIRED if not (path / f).exists()]


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (restore targets)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


# --------------------------------------------------------------------------------------------
# Where an export may be written
# --------------------------------------------------------------------------------------------


def is_export(path: str | os.PathLike) -> bool:
  return (Path(path) / "export.json").is_file()


def export_kind(meta: dict) -> str:
  return "quantized" if "quantization" in meta else "dense"


def check_export_destination(path: str | os.PathLike, *, kind: str, overwrite: bool = False,
                             sources=()) -> Path:
  """Refuses every destination an export could destroy; returns the absolute path.

  An export is written only into a path that does not exist, an empty directory, or (with
  ``overwrite``) an existing export of the same ``kind`` ("dense" / "quantized"). Never into
  one of its ``sources`` or a directory that holds one, a training workdir, a file, or a
  non-empty directory that is not an export.
  """
  path = Path(path).absolute()
  for src in sources:
    src = Path(src).absolute()
    if path == src or path in src.parents:
      raise ExportDestinationError(
          f"--out {path} {'is' if path == src else 'contains'} the source {src}; writing there "
          "would destroy it. Choose a new directory, e.g. a sibling of the source.")
  if not path.exists():
    return path
  if not path.is_dir():
    raise ExportDestinationError(f"--out {path} is a file, not a directory; choose a new "
                                 "directory for the export.")
  if is_export(path):
    old = export_kind(read_export_metadata(path))
    if old != kind:
      raise ExportDestinationError(
          f"--out {path} holds a {old} export; a {kind} export never replaces it. Choose a "
          "new directory.")
    if not overwrite:
      raise ExportDestinationError(
          f"--out {path} already holds a {kind} export. Choose a new directory, or pass "
          "--overwrite to replace it.")
    return path
  markers = [m for m in WORKDIR_MARKERS if (path / m).exists()]
  if markers:
    raise ExportDestinationError(
        f"--out {path} is a training workdir (it has {', '.join(markers)}); an export there "
        f"would replace the run. Write it to a new directory such as {path / 'my_export'}.")
  if any(path.iterdir()):
    raise ExportDestinationError(
        f"--out {path} is a non-empty directory that is not an effijax export; nothing in it "
        "is replaced. Choose a new or empty directory.")
  return path


# --------------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------------


def _is_qw(x) -> bool:
  return isinstance(x, qtensor.QuantizedWeight)


def path_name(path) -> str:
  return ".".join(str(p) for p in path)


def _map_with_path(tree, fn, prefix=()):
  """``fn(path tuple, leaf)`` over a nested dict whose QuantizedWeights count as leaves."""
  if isinstance(tree, dict):
    return {k: _map_with_path(v, fn, prefix + (k,)) for k, v in tree.items()}
  return fn(prefix, tree)


def _leaf_paths(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaf_paths(v, prefix + (k,))
  else:
    yield prefix


def _split_quantized(params):
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
    # A weight prepared for a kernel (zeros in the scales' dtype, groups_t) is saved in the
    # stored layout: uint8 zero points (exact), no kernel copies.
    out = {"packed": leaf.packed, "scales": leaf.scales, "zeros": leaf.zeros.astype(jnp.uint8)}
    if leaf.perm is not None:
      out["perm"] = leaf.perm
    return out

  return _map_with_path(params, to_arrays), layouts


def _stored_structs(layout, sharding=None):
  """The arrays one stored QuantizedWeight restores into."""
  k, n = layout["shape"]
  gshape = qtensor.group_shape((k, n), layout["group_size"], layout["dim"])
  out = {"packed": jax.ShapeDtypeStruct((packing.packed_rows(k, layout["bits"]), n), jnp.int32,
                                        sharding=sharding),
         "scales": jax.ShapeDtypeStruct(gshape, jnp.dtype(layout["scales_dtype"]),
                                        sharding=sharding),
         "zeros": jax.ShapeDtypeStruct(gshape, jnp.uint8, sharding=sharding)}
  if layout["perm"]:
    out["perm"] = jax.ShapeDtypeStruct((k,), jnp.int32, sharding=sharding)
  return out


def _join_quantized(arrays, layouts):
  """Inverse of :func:`_split_quantized`."""

  def walk(tree, prefix=()):
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
      return {k: walk(v, prefix + (k,)) for k, v in tree.items()}
    return tree

  return walk(arrays)


def save_export(path: str | os.PathLike, params, *, model: dict, dtype: str = "bfloat16",
                extra: dict | None = None, quantization: dict | None = None,
                overwrite: bool = False, sources=(), files: dict[str, str] | None = None) -> Path:
  """Writes params + metadata to ``path`` atomically; returns the path.

  Args:
    path: the export directory; checked by :func:`check_export_destination` first.
    params: a nested dict of arrays; QuantizedWeight leaves make a quantized export.
    model: the model config dict (``export.json["model"]``).
    dtype: dense float leaves are cast to it ("bfloat16" or "float32"); the arrays inside a
      QuantizedWeight keep their own dtypes.
    extra: more JSON metadata (``tokenizer``, ``source``, ``trained_steps``...).
    quantization: required when params hold QuantizedWeights (method, bits, ...); the
      per-weight layouts are added to it.
    overwrite: replace an existing export of the same kind.
    sources: paths this export is made from; it may never be written over them.
    files: ``{name: text}`` written beside ``export.json`` in the same atomic step (an
      importer's ``tokenizer.json``, ``tokenizer_config.json``...); plain names only.
  """
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"export dtype must be one of {EXPORT_DTYPES}, got {dtype!r}.")
  arrays, layouts = _split_quantized(params)
  if layouts and quantization is None:
    raise ValueError("params hold QuantizedWeights: pass quantization={method, bits, ...}.")
  if quantization is not None and not layouts:
    raise ValueError("quantization metadata was given but params hold no QuantizedWeight.")
  kind = "quantized" if layouts else "dense"
  files = dict(files or {})
  bad = [n for n in files if n != Path(n).name or n in ("export.json", "params") or
         n.startswith(".")]
  if bad:
    raise ValueError(f"files {bad} must be plain file names other than export.json/params.")
  path = check_export_destination(path, kind=kind, overwrite=overwrite, sources=sources)
  meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "dtype": dtype,
          "model": dict(model), **(extra or {})}
  if layouts:
    meta["quantization"] = {**quantization, "layouts": layouts}
  quantized_paths = {name for name in layouts}

  def cast(p, x):
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    inside_qw = path_name(p[:-1]) in quantized_paths
    return x.astype(dtype) if floating and not inside_qw else x

  arrays = _map_with_path(arrays, cast)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
  try:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / "params", arrays)
    ckptr.wait_until_finished()
    (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    for name, text in files.items():
      (tmp / name).write_text(text)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written export behind
    raise
  if path.exists() and is_export(path):  # allowed above: same kind, --overwrite
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old)
  else:
    if path.exists():  # an empty directory
      path.rmdir()
    os.rename(tmp, path)
  logging.info("wrote %s export (%s) to %s", kind, dtype, path)
  return path


def read_export_metadata(path: str | os.PathLike) -> dict:
  path = Path(path)
  meta_file = path / "export.json"
  if not path.is_dir():
    raise ValueError(f"{path} is not a directory; pass an effijax export (WORKDIR/export "
                     "written by train/main.py, or the --out of quant/main.py).")
  if not meta_file.exists():
    raise ValueError(f"{path} is not an effijax export (no export.json); export one with "
                     "`python train/main.py ... --config.train.export=True`.")
  try:
    meta = json.loads(meta_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{meta_file} is not valid JSON ({e}); the export is damaged.") from e
  if meta.get("format") != EXPORT_FORMAT:
    raise ValueError(f"{meta_file} has format {meta.get('format')!r}, expected "
                     f"{EXPORT_FORMAT!r}.")
  return meta


def _str_keys(tree):
  """Orbax stores dict keys as strings (the layer list's 0, 1, ... become '0', '1', ...)."""
  if isinstance(tree, dict):
    return {str(k): _str_keys(v) for k, v in tree.items()}
  return tree


def _keys_like(tree, like):
  """``tree`` (string keys, as restored) with the key types of ``like`` (the model's)."""
  if isinstance(like, dict):
    return {k: _keys_like(tree[str(k)], v) for k, v in like.items()}
  return tree


def load_export(path: str | os.PathLike, abstract_params=None):
  """``(metadata, params)`` of a dense or quantized export.

  ``abstract_params`` (the model's dense params as ShapeDtypeStructs, optionally with
  shardings): shapes are checked against it, and the params come back with its tree structure
  (int layer keys included), quantized kernels as QuantizedWeights. Without it the stored tree
  is returned as it is (string keys).
  """
  path = Path(path).absolute()
  meta = read_export_metadata(path)
  layouts = (meta.get("quantization") or {}).get("layouts", {})
  ckptr = ocp.StandardCheckpointer()
  if abstract_params is None:
    try:
      return meta, _join_quantized(ckptr.restore(path / "params"), layouts)
    except Exception as e:  # Orbax raises many types for corrupt trees.
      raise ValueError(f"export {path} could not be read ({_short_reason(e, path)}).") from e
  known = {path_name(p) for p in _leaf_paths(abstract_params)}
  unknown = sorted(set(layouts) - known)
  if unknown:
    raise ValueError(f"export {path} quantizes params the model does not have: {unknown[:4]}.")
  dtype = jnp.dtype(meta.get("dtype", "float32"))

  def target_leaf(p, leaf):
    name, sharding = path_name(p), getattr(leaf, "sharding", None)
    if name in layouts:
      if tuple(layouts[name]["shape"]) != tuple(leaf.shape):
        raise ValueError(f"export {path}: {name} has shape {layouts[name]['shape']} but the "
                         f"model config says {list(leaf.shape)}.")
      return _stored_structs(layouts[name])
    return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=sharding)

  target = _map_with_path(abstract_params, target_leaf)
  stored = ckptr.metadata(path / "params")
  stored_tree = getattr(stored, "item_metadata", stored)
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
          jax.tree_util.tree_flatten_with_path(_str_keys(target))[0]}
  have = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
          jax.tree_util.tree_flatten_with_path(stored_tree)[0]}
  if want != have:
    diff = sorted(set(want.items()) ^ set(have.items()))[:6]
    raise ValueError(f"export {path} does not match the model config: differing params "
                     f"(path, shape) {diff}.")
  try:
    restored = ckptr.restore(path / "params", _str_keys(target))
  except Exception as e:  # Orbax raises many types for corrupt files.
    raise ValueError(f"export {path} could not be restored ({_short_reason(e, path)}).") from e
  return meta, _join_quantized(_keys_like(restored, target), layouts)
