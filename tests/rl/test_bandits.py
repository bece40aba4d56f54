"""Offline bandits: the LCB bound and choice on hand-made counts, LCB's high-probability
guarantee over seeds, the instance family, dataset sampling and bad input."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.offline import bandits as B


def test_bonus_is_hoeffding_with_a_union_bound_over_arms():
  counts = jnp.array([0, 1, 4, 100])
  b = B.hoeffding_bonus(counts, 0.1)
  log_term = math.log(2 * 4 / 0.1)
  np.testing.assert_allclose(b, [1.0, math.sqrt(log_term / 2), math.sqrt(log_term / 8),
                                 math.sqrt(log_term / 200)], rtol=1e-6)
  # Contextual: the union runs over every (context, arm) pair.
  b_cb = B.hoeffding_bonus(jnp.array([[4, 0], [1, 9]]), 0.1, num_pairs=4)
  np.testing.assert_allclose(b_cb[0, 0], math.sqrt(log_term / 8), rtol=1e-6)


def test_lcb_picks_the_well_covered_arm_greedy_the_lucky_one():
  # Arm 0: 400 pulls, mean 0.6. Arm 1: 2 pulls, both rewarded (mean 1.0). Arm 2: unseen.
  counts = jnp.array([400, 2, 0])
  sums = jnp.array([240, 2, 0])
  delta = 0.05
  scores = B.lcb_scores(counts, sums, delta)
  log_term = math.log(2 * 3 / delta)
  np.testing.assert_allclose(scores, [0.6 - math.sqrt(log_term / 800),
                                      1.0 - math.sqrt(log_term / 4), -1.0], rtol=1e-5)
  assert int(B.mab_lcb(counts, sums, delta)) == 0
  assert int(B.greedy(counts, sums)) == 1  # the winner's curse
  assert int(B.behaviour_cloning(counts)) == 0


def test_lcb_beats_bc_when_the_mode_is_suboptimal():
  # The behaviour policy mostly played arm 1 (mean 0.3); arm 0 (mean 0.8) has enough data.
  counts = jnp.array([[200, 800]])
  sums = jnp.array([[160, 240]])
  assert int(B.cb_lcb(counts, sums, 0.01)[0]) == 0
  assert int(B.behaviour_cloning(counts)[0]) == 1


def test_unseen_arms_lose_to_a_covered_arm_and_ties_are_random():
  counts = jnp.array([0, 50, 0, 0])
  sums = jnp.array([0, 0, 0, 0])  # the covered arm never paid: score 0 - b > -1 at n = 50
  assert int(B.mab_lcb(counts, sums, 0.1)) == 1
  # Greedy/BC on a context with no data: uniform over all arms; never a non-maximiser.
  keys = jax.random.split(jax.random.key(0), 4000)
  picks = np.asarray(jax.vmap(lambda k: B.behaviour_cloning(jnp.zeros(4, jnp.int32), k))(keys))
  np.testing.assert_allclose(np.bincount(picks, minlength=4) / 4000, 0.25, atol=0.03)
  picks = np.asarray(jax.vmap(lambda k: B.behaviour_cloning(jnp.array([3, 1, 3, 0]), k))(keys))
  assert set(np.unique(picks)) == {0, 2}


def test_lcb_guarantee_holds_over_seeds():
  # With probability >= 1 - delta: r(a^) >= r(a*) - 2 b(a*). Check the frequency over 2000
  # datasets on a contextual instance (C* = 5, decoy-heavy behaviour).
  delta, n = 0.1, 500
  inst = B.hard_instance(5.0, n, num_contexts=4, num_arms=6, gap=0.1)

  def violated(key):
    kd, kp = jax.random.split(key)
    counts, sums = B.sample_dataset(kd, inst, n)
    acts = B.cb_lcb(counts, sums, delta, kp)
    b = B.hoeffding_bonus(counts, delta, num_pairs=counts.size)
    r = inst.means
    r_chosen = jnp.take_along_axis(r, acts[:, None], -1)[:, 0]
    return jnp.any(r_chosen < r[:, 0] - 2 * b[:, 0] - 1e-6)

  freq = float(jnp.mean(jax.jit(jax.vmap(violated))(jax.random.split(jax.random.key(1), 2000))))
  assert freq <= delta, freq


def test_instance_family_has_the_requested_concentrability():
  for c in (1.0, 1.5, 2.0, 5.0, 20.0):
    inst = B.hard_instance(c, 1000, num_contexts=10, num_arms=10, gap=0.2)
    np.testing.assert_allclose(float(B.concentrability(inst)), c, rtol=1e-5)
    np.testing.assert_allclose(inst.behaviour.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(inst.context_probs.sum()), 1.0, rtol=1e-6)
    np.testing.assert_allclose(inst.context_probs[1:], 1e-3, rtol=1e-6)  # light contexts: 1/n
  inst = B.hard_instance(2.0, 100, num_contexts=1, num_arms=5, gap=0.5)
  assert float(B.suboptimality(inst, jnp.array([0]))) == 0.0
  np.testing.assert_allclose(float(B.suboptimality(inst, jnp.array([3]))), 0.5, rtol=1e-6)


def test_sampled_statistics_match_the_instance():
  inst = B.hard_instance(2.0, 10_000, num_contexts=3, num_arms=4, gap=0.4)
  keys = jax.random.split(jax.random.key(2), 500)
  counts, sums = jax.vmap(lambda k: B.sample_dataset(k, inst, 10_000))(keys)
  assert np.all(np.asarray(counts).sum((1, 2)) == 10_000)
  assert np.all((np.asarray(sums) >= 0) & (np.asarray(sums) <= np.asarray(counts)))
  expected = 10_000 * inst.context_probs[:, None] * inst.behaviour
  np.testing.assert_allclose(np.asarray(counts).mean(0), expected, rtol=0.02, atol=0.2)
  rate = np.asarray(sums).sum(0) / np.maximum(np.asarray(counts).sum(0), 1)
  np.testing.assert_allclose(rate[0], inst.means[0], atol=0.01)


def test_expert_data_gives_zero_suboptimality_on_seen_contexts():
  # C* = 1, one context: every method returns a* (the only arm in the data).
  inst = B.hard_instance(1.0, 256, num_contexts=1, num_arms=5, gap=0.3)
  out = jax.jit(lambda k: B.expected_suboptimality(k, inst, 256, 200))(jax.random.key(3))
  assert all(float(v) == 0.0 for v in out.values()), out


@pytest.mark.parametrize("delta", [0.0, 1.0, 1.5, -0.1])
def test_delta_outside_unit_interval_raises(delta):
  with pytest.raises(ValueError, match=r"delta=.* must lie in \(0, 1\)"):
    B.hoeffding_bonus(jnp.array([1, 2]), delta)
  with pytest.raises(ValueError, match="delta"):
    B.mab_lcb(jnp.array([1, 2]), jnp.array([0, 1]), delta)


def test_negative_counts_and_bad_sums_raise():
  with pytest.raises(ValueError, match="counts must be >= 0"):
    B.hoeffding_bonus(jnp.array([3, -1]), 0.1)
  with pytest.raises(ValueError, match="counts must be >= 0"):
    B.behaviour_cloning(jnp.array([3, -1]))
  with pytest.raises(ValueError, match=r"reward_sums must lie in \[0, counts\]"):
    B.greedy(jnp.array([3, 1]), jnp.array([4, 0]))
  with pytest.raises(ValueError, match="same shape"):
    B.mab_lcb(jnp.array([3, 1]), jnp.array([1]), 0.1)
  with pytest.raises(ValueError, match="jax.vmap it over seeds"):
    B.mab_lcb(jnp.ones((2, 3)), jnp.ones((2, 3)), 0.1)
  with pytest.raises(ValueError, match="num_arms=2 must be >= 3"):
    B.hard_instance(2.0, 100, num_contexts=1, num_arms=2, gap=0.1)
