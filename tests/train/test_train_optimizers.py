"""train/ + optim/: LAMB and SSO are picked by name from the config and train the real model."""
import jax
import numpy as np
import pytest

from configs import lm_tiny
from train import optimizer as optimizer_lib
from core import sharding
from train import loop


def _config(name):
  c = lm_tiny.get_config()
  c.model.n_layers = 1
  c.data.seq_len = 32
  c.train.global_batch_size = 8
  c.train.steps = 8
  c.optim.name = name
  c.optim.warmup_steps = 1
  return c


def _batch(seed):
  rng = np.random.default_rng(seed)
  text = rng.integers(3, 40, (8, 33))  # a small alphabet: learnable in a few steps
  return {"tokens": text[:, :32].astype(np.int32), "segment_ids": np.ones((8, 32), np.int32),
          "positions": np.broadcast_to(np.arange(32, dtype=np.int32), (8, 32)).copy()}


@pytest.mark.parametrize("name", ["lamb", "sso"])
def test_optimizer_by_name_trains_the_model(name):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  parts = loop.build(_config(name), mesh)
  state = parts["init"]()
  batch = sharding.to_global_batch(_batch(0), mesh)
  losses = []
  for i in range(8):
    state, m = parts["train_step"](state, batch, jax.random.key_data(jax.random.key(i)))
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] - 0.3, losses
  if name == "sso":
    assert int(state["sso"].expensive_grad_calls) == 8  # one expensive gradient per batch
    assert int(state["sso"].inner_steps) == 8 * 4


def test_unknown_optimizer_lists_the_available_ones():
  c = _config("adafactorz")
  with pytest.raises(ValueError, match="available: adamw, coat_adamw, lamb, sgd, sgld, sso"):
    optimizer_lib.make_optimizer(c.optim, 10)


@pytest.mark.parametrize("field,value,match", [
    ("lr", -1.0, "lr"),
    ("lamb.trust_clip", (2.0, 1.0), "trust_clip"),
    ("sso.m", 0, "m=0"),
    ("sso.eta", 0.0, "eta"),
])
def test_bad_hyperparameters_fail_before_compiling(field, value, match):
  name = "sso" if field.startswith("sso") else "lamb"
  c = _config(name)
  section, _, key = field.rpartition(".")
  target = c.optim if not section else c.optim[section]
  with c.unlocked():
    target[key] = value
  with pytest.raises(ValueError, match=match):
    optimizer_lib.make_optimizer(c.optim, 10)
