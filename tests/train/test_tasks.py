"""The task seam: a second task (digits classification with a convnet) trains, evaluates,
resumes and exports through the unchanged loop; strategies work with any task; configs load
light; the loop validates everything before it writes anything."""
import json
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from configs import digits_cnn, lm_tiny
from core import checkpoint as ckpt_lib
from data import digits
from models import convnet, registry
from train import loop, tasks
from tests import snapshot


def digits_config(steps=60, **train):
  c = digits_cnn.get_config()
  c.train.steps = steps
  c.train.log_every = 20
  c.train.eval_every = steps
  c.train.checkpoint_every = 20
  c.train.async_checkpoint = False
  c.optim.warmup_steps = 5
  for k, v in train.items():
    c.train[k] = v
  return c


def test_digits_trains_through_the_loop_and_exports(tmp_path):
  out = loop.train_and_evaluate(digits_config(steps=120), tmp_path)
  assert out["status"] == "complete" and out["step"] == 120
  assert out["eval_accuracy"] > 0.75  # chance: 0.1
  assert out["eval_examples"] == len(digits.split_arrays("validation")[1])
  meta, params = ckpt_lib.load_export(tmp_path / "export")
  module, cfg = registry.from_dict(meta["model"])
  assert module is convnet and meta["dataset"] == "digits" and meta["trained_steps"] == 120
  # The exported params classify the validation split as the loop's eval did.
  images, labels = digits.split_arrays("validation")
  graphdef, abstract = convnet.abstract_params(cfg)
  _, typed = ckpt_lib.load_export(tmp_path / "export", abstract)
  acc = np.mean(np.argmax(convnet.apply(graphdef, typed, images), -1) == labels)
  np.testing.assert_allclose(acc, out["eval_accuracy"], atol=1e-6)


def test_digits_resume_is_exact(tmp_path):
  ref = loop.train_and_evaluate(digits_config(steps=40), tmp_path / "ref")
  loop.train_and_evaluate(digits_config(steps=40), tmp_path / "run", stop_after=20)
  out = loop.train_and_evaluate(digits_config(steps=40), tmp_path / "run")
  assert out["loss"] == ref["loss"] and out["eval_loss"] == ref["eval_loss"]
  again = loop.train_and_evaluate(digits_config(steps=40), tmp_path / "run")
  assert again["status"] == "already_complete" and again["eval_loss"] == ref["eval_loss"]


def test_sso_strategy_trains_the_classifier_too(tmp_path):
  """SSO only calls task.forward and task.loss: it works on a task it was not written for."""
  c = digits_config(steps=30)
  c.optim.name = "sso"
  c.optim.sso.m = 2
  c.optim.warmup_steps = 4
  out = loop.train_and_evaluate(c, tmp_path)
  assert out["expensive_grad_calls"] == 30
  assert out["eval_accuracy"] > 0.5


def test_sharded_classifier_equals_single_device(tmp_path):
  c = digits_config(steps=10)
  one = loop.train_and_evaluate(c, tmp_path / "one", devices=jax.devices()[:1])
  c8 = digits_config(steps=10)
  c8.mesh.data, c8.mesh.fsdp = 4, 2
  eight = loop.train_and_evaluate(c8, tmp_path / "eight")
  np.testing.assert_allclose(eight["loss"], one["loss"], rtol=2e-5)
  np.testing.assert_allclose(eight["eval_loss"], one["eval_loss"], rtol=2e-5)


def test_unknown_task_and_model_name_are_clear_errors():
  c = digits_config()
  c.task = "detect"
  with pytest.raises(ValueError, match="unknown task 'detect'.*classify, lm"):
    tasks.build(c)
  c = lm_tiny.get_config()
  c.model.name = "convnet"
  with pytest.raises(ValueError, match="unknown ConvNetConfig keys"):
    tasks.build(c)


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.train, "steps", 30), r"optim.warmup_steps=60 must be smaller.*"
     r"--config.optim.warmup_steps=3"),
    (lambda c: setattr(c.optim, "name", "adamm"), "unknown optimizer 'adamm'"),
    (lambda c: setattr(c.optim, "lr", -1.0), "lr=-1.0 must be >= 0"),
    (lambda c: setattr(c.train, "global_batch_size", 12), r"does not split over the mesh's "
     r"data x fsdp = 8 devices"),
    (lambda c: setattr(c.train, "microbatches", 3), "not divisible by train.microbatches=3"),
])
def test_bad_configs_fail_before_anything_is_written(tmp_path, change, match):
  c = lm_tiny.get_config()
  change(c)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    loop.train_and_evaluate(c, workdir)
  assert not workdir.exists()


def test_a_bad_config_leaves_an_existing_workdir_untouched(tmp_path):
  loop.train_and_evaluate(digits_config(steps=20), tmp_path)
  before = snapshot.digest(tmp_path)
  c = digits_config(steps=20)
  c.optim.name = "nadam"
  with pytest.raises(ValueError, match="unknown optimizer 'nadam'"):
    loop.train_and_evaluate(c, tmp_path)
  assert snapshot.digest(tmp_path) == before


def test_loading_a_config_imports_nothing_heavy():
  code = ("import sys, configs.lm_tiny, configs.lm_7b, configs.digits_cnn;"
          "configs.lm_tiny.get_config(); configs.digits_cnn.get_config();"
          "heavy = [m for m in ('jax', 'flax', 'tensorflow_datasets', 'tensorflow', 'grain',"
          " 'orbax', 'optax') if m in sys.modules]; print(heavy)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert json.loads(out.stdout.strip().replace("'", '"')) == []


def test_sgld_through_the_loop_keeps_thinned_samples_that_resume_exactly(tmp_path):
  """--config.optim.name=sgld: the Langevin sampler trains through the unchanged loop and
  train.snapshot_* keeps thinned post-burn-in samples (exports); a run interrupted and resumed
  keeps the same samples; their mixture predicts at least as well as its members on average."""
  import math  # pylint: disable=g-import-not-at-top
  from bayes import mixture  # pylint: disable=g-import-not-at-top

  def config():
    c = digits_config(steps=40)
    c.optim.name = "sgld"
    c.optim.lr = 2 * 1e-2 / 1257  # h = 2 lr / N: an SGD step of 1e-2 in the drift
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0
    c.optim.sgld.num_data = 1257  # the digits' train split
    c.optim.sgld.preconditioner = "rmsprop"
    c.optim.sgld.prior_std = 1.0
    c.train.snapshot_start, c.train.snapshot_every = 20, 5
    return c

  out = loop.train_and_evaluate(config(), tmp_path / "ref")
  samples = loop.snapshots(tmp_path / "ref")
  assert [int(p.name.split("_")[1]) for p in samples] == [20, 25, 30, 35, 40]
  loop.train_and_evaluate(config(), tmp_path / "run", stop_after=30)
  loop.train_and_evaluate(config(), tmp_path / "run")
  for a, b in zip(samples, loop.snapshots(tmp_path / "run")):
    chex.assert_trees_all_equal(ckpt_lib.load_export(a)[1], ckpt_lib.load_export(b)[1])
  assert out["eval_accuracy"] > 0.3
  # The mixture of the samples: log of the average probability.
  images, labels = digits.split_arrays("validation")
  graphdef, abstract = convnet.abstract_params(convnet.Config())
  log_probs = jax.numpy.stack([
      jax.nn.log_softmax(convnet.apply(graphdef, ckpt_lib.load_export(p, abstract)[1], images))
      for p in samples])
  picked = log_probs[:, np.arange(len(labels)), labels]
  mix = mixture.mixture_log_predictive(picked, axis=0)
  assert float(-mix.mean()) <= float(-picked.mean()) + 1e-6  # Jensen
  assert math.isfinite(float(-mix.mean()))


def test_sgld_without_num_data_is_a_clear_error(tmp_path):
  c = digits_config()
  c.optim.name = "sgld"
  with pytest.raises(ValueError, match=r"needs --config.optim.sgld.num_data=N"):
    loop.train_and_evaluate(c, tmp_path)
