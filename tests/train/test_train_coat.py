"""COAT in the real train loop: FP8 moments sharded with their parameters, sharded == one
device, gradient accumulation, resume after SIGKILL through train/main.py, and bit-exact
restore 8 -> 4 -> 1."""
import os
import subprocess

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from core import checkpoint as ckpt_lib
from core import sharding
from optim import coat
from tests import sigkill
from tests.train import test_train_loop as loop_tests
from tests.train import test_train_sharding as sharding_tests
from tests.train.conftest import small_config
from train import loop


def _coat(config):
  config.optim.name = "coat_adamw"
  config.model.mlp_dim = 256  # up_proj (128, 256): two groups per row, split by tensor=2
  config.model.n_layers = 1  # compiles dominate CPU test time
  return config


def _moments(state):
  return state["opt_state"][1][0]  # chain(clip, chain(coat, decay, lr)) -> coat's state


@pytest.fixture(scope="module")
def runs():
  """4 steps of the same batches on 1 device (full batches) and on a (2, 2, 2) mesh with 2
  microbatches: one comparison covers sharding and gradient accumulation (compiles dominate
  CPU test time, so the tests below share these two)."""
  batches = sharding_tests._batches(4)
  one = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  eight = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  losses1, state1, _ = sharding_tests._run(_coat(sharding_tests._config(1)), one, batches)
  losses8, state8, _ = sharding_tests._run(_coat(sharding_tests._config(2)), eight, batches)
  return losses1, state1, losses8, state8


def test_sharded_and_accumulated_equal_one_device_and_moments_shard_like_params(runs):
  losses1, state1, losses8, state8 = runs
  assert losses1[-1] < losses1[0]
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
  mu8 = _moments(state8).mu["layers"][0]
  q_proj, up_proj = mu8["attn"]["q_proj"]["kernel"], mu8["mlp"]["up_proj"]["kernel"]
  assert isinstance(q_proj, coat.Fp8Groups) and q_proj.q.dtype == jnp.float8_e4m3fn
  assert q_proj.q.sharding.spec == P("fsdp", "tensor")
  assert q_proj.scale.shape == (128, 1) and q_proj.scale.sharding.spec == P("fsdp", None)
  for part in (up_proj.q, up_proj.scale, up_proj.k, up_proj.sqrt_minmax):
    assert part.sharding.spec == P("fsdp", "tensor"), part.shape
  assert up_proj.q.addressable_shards[0].data.shape == (64, 128)
  assert up_proj.scale.addressable_shards[0].data.shape == (64, 1)
  # Small leaves (norm scales) keep fp32 moments.
  assert _moments(state8).mu["final_norm"]["scale"].dtype == jnp.float32
  # The decoded moments agree: fp32 sums in another order can move a value across an FP8
  # rounding boundary (or a group's min, hence its k), and that rounding feeds the next step's
  # moment, so a few entries drift by some roundings; nearly all are identical.
  m1 = np.asarray(coat.dequantize_groups(
      _moments(state1).mu["layers"][0]["mlp"]["up_proj"]["kernel"]))
  m8 = np.asarray(coat.dequantize_groups(up_proj))
  # Entries near 0 (sums of cancelling gradients) carry fp32 noise of the gradient's scale.
  rel = np.abs(m8 - m1) / (np.abs(m1) + 1e-3 * np.abs(m1).max())
  assert np.median(rel) < 1e-3 and np.mean(rel > 0.07) < 0.03, (np.median(rel), rel.max())


def test_checkpoint_restores_bit_exactly_on_8_4_1_devices(runs, tmp_path):
  state = runs[3]
  config = _coat(sharding_tests._config(2))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(4, state, {"it": 4})
  ckpt.wait()
  want = jax.device_get(state)
  emb = _moments(want).mu["embed"]["embedding"]
  assert emb.q.dtype == jnp.float8_e4m3fn
  assert np.abs(emb.q.astype(np.float32)).max() == 448.0  # trained: not all-zero moments
  for n, axes in ((4, {"data": 1, "fsdp": 4, "tensor": 1}),
                  (1, {"data": 1, "fsdp": 1, "tensor": 1})):
    mesh = sharding.make_mesh(axes, jax.devices()[:n])
    parts = loop.build(config, mesh)
    target = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
    restored, data_state = ckpt.restore(4, target)
    assert data_state == {"it": 4}
    g = _moments(restored).mu["layers"][0]["attn"]["q_proj"]["kernel"]
    assert len(g.q.sharding.device_set) == n and g.q.dtype == jnp.float8_e4m3fn
    if n == 4:
      assert g.q.sharding.spec == P("fsdp", None) and g.scale.sharding.spec == P("fsdp", None)
    chex.assert_trees_all_equal(jax.device_get(restored), want)
  ckpt.close()


def test_main_py_with_accumulation_resumes_after_sigkill_bit_exactly(data_dir, tmp_path):
  """train/main.py with coat_adamw and 2 microbatches, killed (SIGKILL) after its step-3
  checkpoint and rerun, logs the same losses as an uninterrupted run, bit for bit: the FP8
  moments and their group metadata come back exactly from Orbax."""
  config = _coat(small_config(data_dir, steps=9, checkpoint_every=3, eval_every=1000,
                              microbatches=2, async_checkpoint=False))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # 1 device: compiles faster
  ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
  ref = subprocess.run(loop_tests._main_args(config, ref_dir), env=env, capture_output=True,
                       text=True)
  assert ref.returncode == 0, ref.stderr[-2000:]
  sigkill.kill_after_checkpoint(loop_tests._main_args(config, run_dir), env,
                                run_dir / "checkpoints" / "3")
  assert max(loop_tests._losses(run_dir)) < 9
  rerun = subprocess.run(loop_tests._main_args(config, run_dir), env=env, capture_output=True,
                         text=True)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  want, got = loop_tests._losses(ref_dir), loop_tests._losses(run_dir)
  assert sorted(got) == list(range(1, 10))
  assert all(got[step] == want[step] for step in got), (got, want)
  assert got[9] < got[1]
