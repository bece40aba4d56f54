"""Orbax checkpointing for training runs, and params-only exports.

One small wrapper so the rest of the code never touches Orbax directly (its API moves; the
v0 -> v1 switch should touch only this file).

* **Run checkpoints** (``WORKDIR/checkpoints/<step>/``): ``state`` (step, params, optimizer
  state) and ``data`` (the input iterator's state, JSON), saved asynchronously; the newest
  ``keep`` are kept. Orbax writes into a temporary directory and renames it when complete, so a
  killed run never leaves a checkpoint that looks finished; a restore that fails names the
  checkpoint and leaves every checkpoint on disk untouched.
* **Restore onto any mesh**: the caller passes abstract arrays (``jax.ShapeDtypeStruct`` with
  the *new* shardings), so a checkpoint saved on 8 devices loads on 1 or 4.
* **Exports** (``export_params``/``load_export``): params only, cast to bf16 or f32, plus the
  model config and tokenizer spec as JSON — what ``quant/`` and ``infer/`` read.
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

EXPORT_FORMAT = "effijax-export"
EXPORT_VERSION = 1


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored; the message names it and what to do."""


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
    try:
      out = self._mngr.restore(
          int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                             data=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for truncated/corrupt files.
      others = [s for s in self.all_steps() if s != step]
      raise CheckpointError(
          f"checkpoint {path} could not be restored ({type(e).__name__}: {str(e)[:300]}). "
          f"It was left as it is. Other checkpoints in {self.directory}: {others or 'none'}; "
          "restore one with --config.train.restore_step=STEP, or move the bad one aside."
      ) from e
    return out["state"], dict(out["data"] or {})

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (restore targets)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


# --------------------------------------------------------------------------------------------
# Params-only exports
# --------------------------------------------------------------------------------------------


def export_params(path: str | os.PathLike, params, *, model_config: dict, dtype="bfloat16",
                  extra: dict | None = None) -> Path:
  """Writes params (cast to ``dtype``) + metadata to ``path`` atomically; returns the path.

  The export is built in a sibling temporary directory and renamed into place only when
  complete; an existing export at ``path`` is replaced only after the new one is whole.
  """
  path = Path(path).absolute()
  if dtype not in ("bfloat16", "float32"):
    raise ValueError(f"export dtype must be 'bfloat16' or 'float32', got {dtype!r}.")
  tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
  cast = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, params)
  try:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / "params", cast)
    ckptr.wait_until_finished()
    meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "dtype": dtype,
            "model": model_config, **(extra or {})}
    (tmp / "export.json").write_text(json.dumps(meta, indent=2))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written export behind
    raise
  if path.exists():
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old)
  else:
    os.rename(tmp, path)
  logging.info("exported params (%s) to %s", dtype, path)
  return path


def read_export_metadata(path: str | os.PathLike) -> dict:
  path = Path(path)
  meta_file = path / "export.json"
  if not meta_file.exists():
    raise ValueError(f"{path} is not an effijax export (no export.json); export one with "
                     "`python train/main.py ... --config.train.export=True` or "
                     "train.checkpoint.export_params().")
  meta = json.loads(meta_file.read_text())
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
  """``(metadata, params)``. With ``abstract_params`` (shapes/shardings), shapes are checked
  and the params come back with the same tree structure (int layer keys included)."""
  path = Path(path).absolute()
  meta = read_export_metadata(path)
  if "quantization" in meta:
    raise ValueError(f"{path} is a quantized export ({meta['quantization'].get('method')}, "
                     f"{meta['quantization'].get('bits')}-bit); load it with "
                     "quant.export.load_quantized().")
  ckptr = ocp.StandardCheckpointer()
  if abstract_params is None:
    params = ckptr.restore(path / "params")
  else:
    like, abstract_params = abstract_params, _str_keys(abstract_params)
    stored = ckptr.metadata(path / "params")
    stored_tree = getattr(stored, "item_metadata", stored)
    want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    have = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_flatten_with_path(stored_tree)[0]}
    if want != have:
      diff = sorted(set(want.items()) ^ set(have.items()))[:6]
      raise ValueError(f"export {path} does not match the model config: differing params "
                       f"(path, shape) {diff}.")
    dtype = meta["dtype"]
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype,
                                                         sharding=getattr(x, "sharding", None)),
                          abstract_params)
    params = _keys_like(ckptr.restore(path / "params", target), like)
  return meta, params
