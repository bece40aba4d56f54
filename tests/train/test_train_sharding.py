"""Sharding is real: same losses on 1 device and on a (data=2, fsdp=2, tensor=2) mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import lm_tiny
from core import sharding
from train import loop


def _config(microbatches=1):
  c = lm_tiny.get_config()
  c.model.n_layers = 2
  c.data.seq_len = 32
  c.train.global_batch_size = 8
  c.train.microbatches = microbatches
  c.train.steps = 4
  c.optim.warmup_steps = 1
  return c


def _batches(n, b=8, l=32, vocab=259):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    seg = np.ones((b, l), np.int32)
    seg[:, l // 2:] = 2
    seg[0, -5:] = 0  # some padding
    pos = np.concatenate([np.arange(l // 2), np.arange(l - l // 2)])[None].repeat(b, 0)
    out.append({"tokens": rng.integers(3, vocab, (b, l)).astype(np.int32),
                "segment_ids": seg, "positions": pos.astype(np.int32)})
  return out


def _run(config, mesh, batches):
  parts = loop.build(config, mesh)
  state = parts["init"]()
  losses = []
  for i, batch in enumerate(batches):
    state, m = parts["train_step"](state, sharding.to_global_batch(batch, mesh),
                                   jax.random.key_data(jax.random.key(i)))
    losses.append(float(m["loss"]))
  return losses, state, parts


def test_one_device_and_3d_mesh_give_the_same_losses():
  config = _config()
  batches = _batches(4)
  one = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  eight = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  losses1, _, _ = _run(config, one, batches)
  losses8, state8, _ = _run(config, eight, batches)
  assert losses1[-1] < losses1[0]  # it learns something even in 4 steps
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
  # Parameters really are distributed per the rules.
  p = state8["params"]
  assert p["layers"][0]["attn"]["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert p["layers"][0]["mlp"]["down_proj"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert p["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
  assert p["final_norm"]["scale"].sharding.spec == P(None)
  shard = p["layers"][0]["attn"]["q_proj"]["kernel"].addressable_shards[0].data
  assert shard.shape == (128 // 2, 128 // 2)
  # Optimizer moments follow their parameters' shardings.
  mu = jax.tree.leaves(state8["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
  mu = [m for m in mu if hasattr(m, "mu")][0].mu
  assert mu["layers"][0]["attn"]["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")


def test_gradient_accumulation_equals_full_batch():
  batches = _batches(2)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  full, _, _ = _run(_config(1), mesh, batches)
  accum, _, _ = _run(_config(4), mesh, batches)
  np.testing.assert_allclose(accum, full, rtol=2e-5)


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh({"data": 3, "fsdp": 2, "tensor": 1})
  with pytest.raises(ValueError, match="at most one mesh axis"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
