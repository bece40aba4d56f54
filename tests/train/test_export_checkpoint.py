"""train.loop.export_checkpoint: any checkpoint of a run (finished or not) as an export, equal
to the one the loop writes, and the errors for a bad workdir, step or destination."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_cnn
from core import checkpoint as ckpt_lib
from train import loop


def digits_config(steps=20):
  c = digits_cnn.get_config()
  c.train.steps = steps
  c.train.log_every = 10
  c.train.eval_every = steps
  c.train.eval_batches = 2
  c.train.checkpoint_every = 10
  c.train.async_checkpoint = False
  c.optim.warmup_steps = 2
  return c


def _params(path):
  return ckpt_lib.load_export(path)[1]


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_unfinished_and_finished_runs_export_like_the_loop(tmp_path):
  workdir = tmp_path / "run"
  out = loop.train_and_evaluate(digits_config(), workdir, stop_after=10)
  assert out["status"] == "stopped" and not (workdir / "export").exists()

  # An unfinished run: the latest checkpoint, with how far it got.
  path = loop.export_checkpoint(workdir)
  assert path == workdir / "export_step10"
  meta = ckpt_lib.read_export_metadata(path)
  assert meta["trained_steps"] == 10 and meta["configured_steps"] == 20
  assert meta["dataset"] == "digits" and meta["model"]["name"] == "convnet"
  assert meta["dtype"] == "float32"  # the run's train.export_dtype

  # Finished: the latest checkpoint's export is the loop's own export, array for array.
  loop.train_and_evaluate(digits_config(), workdir)
  final = loop.export_checkpoint(workdir, tmp_path / "final")
  assert ckpt_lib.read_export_metadata(final)["trained_steps"] == 20
  _assert_same(_params(final), _params(workdir / "export"))
  assert ckpt_lib.read_export_metadata(workdir / "export")["model"] == \
      ckpt_lib.read_export_metadata(final)["model"]

  # An older step on request, in another dtype: step 10's params, cast.
  older = loop.export_checkpoint(workdir, tmp_path / "older", step=10, dtype="bfloat16")
  meta = ckpt_lib.read_export_metadata(older)
  assert meta["trained_steps"] == 10 and meta["dtype"] == "bfloat16"
  _assert_same(_params(older), jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params(path)))


def test_bad_workdir_step_or_destination_are_clear_errors(tmp_path):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(digits_config(steps=10), workdir)
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    loop.export_checkpoint(tmp_path)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"step 5 .*available steps: \[10\]"):
    loop.export_checkpoint(workdir, step=5)
  with pytest.raises(ckpt_lib.ExportDestinationError, match="is the source"):
    loop.export_checkpoint(workdir, workdir)  # refused before anything is restored
  first = loop.export_checkpoint(workdir)
  with pytest.raises(ckpt_lib.ExportDestinationError, match="--overwrite"):
    loop.export_checkpoint(workdir)  # never replaced silently
  assert loop.export_checkpoint(workdir, overwrite=True) == first
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text("{}")
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoints/"):
    loop.export_checkpoint(tmp_path / "empty")
