"""The PPO learner packs each minibatch into the rows Algorithm 1 needs (rounded up to the
training devices), not a fixed block: empty rows cost compute and change nothing."""
import jax
import numpy as np
import optax
import pytest

from models import transformer
from models.configs import preset
from rl import learner as learner_lib
from rl.controller import Sample, Ticket
from rl.rollout import Trajectory


def _samples(n, rng):
  out = []
  for uid in range(n):
    prompt = list(rng.integers(3, 200, rng.integers(4, 9)))
    tokens = list(rng.integers(3, 200, rng.integers(2, 12)))
    traj = Trajectory(uid=uid, prompt=prompt, tokens=tokens,
                      logps=list(rng.normal(-2.0, 0.3, len(tokens))))
    out.append(Sample(Ticket(uid, uid // 4, prompt, 0), traj, float(rng.random() < 0.5)))
  return out


def _learner(params, graphdef, micro_batches, token_budget=32):
  return learner_lib.Learner(graphdef, params, optax.adam(1e-3), devices=jax.devices()[:2],
                             vocab_limit=256, minibatches=2, micro_batches=micro_batches,
                             token_budget=token_budget, group_size=4)


def test_rows_are_what_algorithm_1_needs_and_empty_rows_change_nothing():
  graphdef, params = transformer.init(preset("tiny", n_layers=1, mlp_dim=128), seed=0)
  samples = _samples(8, np.random.default_rng(0))
  learner = _learner(params, graphdef, micro_batches=8)
  batches = learner.pack(samples)
  rows = [b["tokens"].shape[0] for b in batches]
  assert all(r % 2 == 0 and r < 8 for r in rows), rows  # 4 samples of <= 20 tokens per minibatch
  out = learner.train(samples)
  # The same step on the full 8-row block (the old fixed shape): the same update.
  padded = _learner(params, graphdef, micro_batches=8)
  fields = learner_lib.sequence_fields(samples, 4)
  full = []
  for lo, hi in ((0, 4), (4, 8)):
    p = learner_lib.packing.pack({k: v[lo:hi] for k, v in fields.items()}, 32,
                                 num_micro_batches=8)
    full.append(jax.device_put({**p.fields, "segment_ids": p.segment_ids,
                                "positions": p.positions}, padded.rows))
  padded.pack = lambda _: full
  ref = padded.train(samples)
  np.testing.assert_allclose(out["loss"], ref["loss"], rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(learner.params), jax.tree.leaves(padded.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_minibatch_that_needs_more_rows_than_micro_batches_is_refused():
  graphdef, params = transformer.init(preset("tiny", n_layers=1, mlp_dim=128), seed=0)
  samples = _samples(8, np.random.default_rng(1))
  with pytest.raises(ValueError, match="raise rl.micro_batches or rl.token_budget"):
    _learner(params, graphdef, micro_batches=2, token_budget=20).pack(samples)
