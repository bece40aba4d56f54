"""The training loop end to end: learning, exact resume after SIGKILL, restore onto other
device counts, and the errors a user can run into (bad keys, bad workdir, corrupt
checkpoint, NaN loss)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from core import checkpoint as ckpt_lib
from train import metrics as metrics_lib
from core import sharding
from train import loop
from tests import sigkill, snapshot

ROOT = Path(__file__).resolve().parents[2]
from tests.train.conftest import MAX_FILES, small_config  # noqa: F401


def _main_args(config, workdir, *extra):
  args = [sys.executable, str(ROOT / "train" / "main.py"), "--config",
          str(ROOT / "configs" / "lm_tiny.py"), "--workdir", str(workdir)]
  def flags(prefix, section):
    for k, v in section.items():
      if hasattr(v, "items"):  # a sub-section such as optim.lamb
        flags(f"{prefix}.{k}", v)
      elif v is not None and not isinstance(v, (tuple, list)):
        args.append(f"--config.{prefix}.{k}={v}")
  for section in ("model", "data", "train", "optim"):
    flags(section, config[section])
  return args + list(extra)


def _losses(workdir):
  return {r["step"]: r["loss"] for r in metrics_lib.read_metrics(workdir) if "loss" in r}


def test_trains_evaluates_and_exports(data_dir, tmp_path):
  config = small_config(data_dir, steps=8, eval_every=8)
  config.optim.lr = 1e-2
  out = loop.train_and_evaluate(config, tmp_path)
  losses = _losses(tmp_path)
  assert sorted(losses) == list(range(1, 9))
  assert losses[8] < losses[1]
  assert np.isfinite(out["eval_loss"]) and out["eval_bits_per_byte"] > 0
  np.testing.assert_allclose(out["eval_perplexity"], np.exp(out["eval_loss"]), rtol=1e-5)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["n_layers"] == 1
  meta, params = ckpt_lib.load_export(tmp_path / "export")
  assert meta["model"]["n_layers"] == 1 and meta["tokenizer"] == "byte"
  assert params["embed"]["embedding"].shape == (384, 128)
  # With the model's abstract params: shapes checked, int layer keys as nnx.merge needs.
  from models import transformer  # pylint: disable=g-import-not-at-top
  cfg = transformer.ModelConfig.from_dict(
      {k: v for k, v in config.model.to_dict().items() if k != "name"})
  _, typed = ckpt_lib.load_export(tmp_path / "export", transformer.abstract_params(cfg)[1])
  np.testing.assert_array_equal(typed["layers"][0]["attn"]["q_proj"]["kernel"],
                                params["layers"]["0"]["attn"]["q_proj"]["kernel"])
  other = transformer.abstract_params(transformer.preset("tiny", n_layers=2))[1]
  with pytest.raises(ValueError, match="does not match the model config"):
    ckpt_lib.load_export(tmp_path / "export", other)


def test_resume_after_sigkill_is_exact(data_dir, tmp_path):
  config = small_config(data_dir, steps=30, checkpoint_every=3, eval_every=1000,
                        async_checkpoint=False)
  env = dict(os.environ)
  ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
  subprocess.run(_main_args(config, ref_dir), check=True, env=env, capture_output=True)
  sigkill.kill_after_checkpoint(_main_args(config, run_dir), env, run_dir / "checkpoints" / "3")
  killed_at = max(_losses(run_dir) or {0: 0})
  assert killed_at < 30
  subprocess.run(_main_args(config, run_dir), check=True, env=env, capture_output=True)
  ref, resumed = _losses(ref_dir), _losses(run_dir)
  assert sorted(resumed) == list(range(1, 31))
  for step in range(1, 31):  # bit-for-bit on CPU: same data order, same params
    assert resumed[step] == ref[step], (step, resumed[step], ref[step])


def test_checkpoint_restores_onto_other_device_counts(data_dir, tmp_path):
  config = small_config(data_dir)
  mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  parts8 = loop.build(config, mesh8)
  state = parts8["init"]()
  batch = {k: np.ones((8, 32), np.int32) for k in ("tokens", "segment_ids", "positions")}
  state, _ = parts8["train_step"](state, sharding.to_global_batch(batch, mesh8),
                                  jax.random.key_data(jax.random.key(0)))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(1, state, {"it": 1})
  ckpt.wait()
  want = jax.device_get(state)
  for n, axes in ((1, {"data": 1, "fsdp": 1, "tensor": 1}),
                  (4, {"data": 1, "fsdp": 4, "tensor": 1})):
    mesh = sharding.make_mesh(axes, jax.devices()[:n])
    parts = loop.build(config, mesh)
    target = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
    restored, data_state = ckpt.restore(1, target)
    assert data_state == {"it": 1}
    leaf = restored["params"]["layers"][0]["attn"]["q_proj"]["kernel"]
    assert len(leaf.sharding.device_set) == n
    chex.assert_trees_all_equal(jax.device_get(restored), want)
  ckpt.close()


def test_corrupt_checkpoint_is_named_and_older_ones_survive(data_dir, tmp_path):
  config = small_config(data_dir, steps=6, checkpoint_every=3, async_checkpoint=False)
  loop.train_and_evaluate(config, tmp_path)
  ckpt_dir = tmp_path / "checkpoints"
  assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [3, 6]
  for f in (ckpt_dir / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "ocdbt" not in f.name:
      f.write_bytes(b"\0" * 7)  # truncate and scramble every data file
  before = sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*"))
  config.train.steps = 9
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/6 could not be restored"):
    loop.train_and_evaluate(config, tmp_path)
  assert sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*")) == before
  config.train.restore_step = 3  # the older checkpoint is intact and resumes
  out = loop.train_and_evaluate(config, tmp_path)
  assert out["step"] == 9
  # The corrupt one was moved aside, not deleted.
  assert len(list((tmp_path / "checkpoints_superseded").glob("6-*/state"))) == 1
  # Keeping restore_step=3 in a rerun does not move the new checkpoints aside again: it was
  # applied once (WORKDIR/restore.json); the finished run is reported and re-evaluated.
  before = snapshot.digest(ckpt_dir)
  out = loop.train_and_evaluate(config, tmp_path)
  assert out["status"] == "already_complete" and out["step"] == 9
  assert snapshot.digest(ckpt_dir) == before
  assert len(list((tmp_path / "checkpoints_superseded").iterdir())) == 1


def test_missing_metadata_is_reported_as_incomplete_not_a_pytree_mismatch(data_dir, tmp_path):
  config = small_config(data_dir, steps=3, checkpoint_every=3, async_checkpoint=False)
  loop.train_and_evaluate(config, tmp_path)
  (tmp_path / "checkpoints" / "3" / "state" / "_METADATA").unlink()
  config.train.steps = 6
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/3 is incomplete: "
                     r"state/_METADATA missing"):
    loop.train_and_evaluate(config, tmp_path)


def test_sigterm_saves_and_exits_75_then_the_rerun_finishes(data_dir, tmp_path):
  config = small_config(data_dir, steps=400, checkpoint_every=1000, eval_every=1000,
                        async_checkpoint=False, log_every=1)
  proc = subprocess.Popen(_main_args(config, tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not _losses(tmp_path):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 75, out[-2000:]
  assert "(preempted); rerun the same command to resume" in out
  saved = ckpt_lib.Checkpointer(tmp_path / "checkpoints").latest_step()
  assert 0 < saved < 400
  config.train.steps = saved + 2
  result = loop.train_and_evaluate(config, tmp_path)
  assert result["status"] == "complete" and result["step"] == saved + 2
  meta = ckpt_lib.read_export_metadata(tmp_path / "export")
  assert meta["trained_steps"] == saved + 2  # the export is the newest checkpoint's


def test_incompatible_workdir_is_refused_unless_overwrite(data_dir, tmp_path):
  config = small_config(data_dir)
  loop.prepare_workdir(config, tmp_path, overwrite=False)
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
  other = small_config(data_dir)
  other.model.d_model = 64
  other.model.mlp_dim = 128
  with pytest.raises(loop.IncompatibleWorkdirError,
                     match=r"model\.d_model, model\.mlp_dim differ.*--overwrite"):
    loop.prepare_workdir(other, tmp_path, overwrite=False)
  longer = small_config(data_dir, steps=100)  # only the length changed: still resumable
  loop.prepare_workdir(longer, tmp_path, overwrite=False)
  loop.prepare_workdir(other, tmp_path, overwrite=True)
  assert not (tmp_path / "metrics.jsonl").exists()


def test_run_saved_before_a_config_key_existed_still_resumes(data_dir, tmp_path):
  """A key added to configs/common.py later is absent from an old run's config.json; at its
  default value it must not make the run unresumable, at another value it must."""
  config = small_config(data_dir)
  loop.prepare_workdir(config, tmp_path, overwrite=False)
  saved = json.loads((tmp_path / "config.json").read_text())
  key = "fp8_activations"  # added to the transformer's config after runs already existed
  del saved["model"][key]  # as written by a version of effijax before `key` existed
  (tmp_path / "config.json").write_text(json.dumps(saved))
  loop.check_workdir(small_config(data_dir), tmp_path, overwrite=False)
  changed = small_config(data_dir)
  changed.model[key] = True
  with pytest.raises(loop.IncompatibleWorkdirError, match=rf"model\.{key} differ"):
    loop.check_workdir(changed, tmp_path, overwrite=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
  config = small_config(data_dir, steps=6, checkpoint_every=1, async_checkpoint=False)
  config.optim.lr = 1e30  # step 1 runs at lr 0 (warmup), step 2 blows the params up
  config.optim.grad_clip = 0.0
  config.optim.warmup_steps = 3
  config.optim.schedule = "constant"
  with pytest.raises(FloatingPointError, match=r"last good checkpoint is step 1"):
    loop.train_and_evaluate(config, tmp_path)
  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_unprepared_tfds_dataset_is_a_clear_error(data_dir, tmp_path):
  config = small_config(data_dir)
  config.data.name = "lm1b"
  with pytest.raises(ValueError, match="lm1b"):
    loop.train_and_evaluate(config, tmp_path)
