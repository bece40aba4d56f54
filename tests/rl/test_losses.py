"""rl/losses.py against a direct numpy transcription of AReaL Eq. 5 (arXiv:2505.24298)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import losses


def eq5_numpy(logp, prox, behav, adv, mask, eps, eps_high=None, dual=None, cap=None):
  """Eq. 5 written token by token with Python loops: the reference."""
  eps_high = eps if eps_high is None else eps_high
  total, count = 0.0, 0.0
  for b in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      if not mask[b, t]:
        continue
      a = adv[b, t]
      u = np.exp(logp[b, t] - prox[b, t])
      w = np.exp(prox[b, t] - behav[b, t])
      if cap is not None:
        w = min(w, cap)
      objective = min(u * a, min(max(u, 1 - eps), 1 + eps_high) * a)
      token_loss = -objective
      if dual is not None and a < 0:
        token_loss = min(token_loss, -dual * a)
      total += w * token_loss
      count += 1
  return total / max(count, 1)


def random_inputs(seed, b=4, t=7, spread=0.5):
  rng = np.random.default_rng(seed)
  behav = rng.normal(-1.5, 0.5, (b, t))
  prox = behav + rng.normal(0, spread, (b, t))
  logp = prox + rng.normal(0, spread, (b, t))
  adv = rng.normal(0, 1.5, (b, t))
  mask = rng.random((b, t)) < 0.7
  return logp, prox, behav, adv, mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kw", [
    {},
    {"clip_eps_high": 0.28},
    {"dual_clip": 3.0},
    {"behav_weight_cap": 1.2},
    {"clip_eps": 0.1, "clip_eps_high": 0.3, "dual_clip": 2.0, "behav_weight_cap": 2.0},
])
def test_decoupled_loss_equals_eq5_transcription(seed, kw):
  logp, prox, behav, adv, mask = random_inputs(seed)
  loss, stats = losses.decoupled_ppo_loss(logp, prox, behav, adv, mask, **kw)
  want = eq5_numpy(logp, prox, behav, adv, mask, kw.get("clip_eps", 0.2),
                   kw.get("clip_eps_high"), kw.get("dual_clip"), kw.get("behav_weight_cap"))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  assert float(stats.num_tokens) == mask.sum()
  w = np.exp(prox - behav)
  if "behav_weight_cap" in kw:
    w = np.minimum(w, kw["behav_weight_cap"])
  np.testing.assert_allclose(float(stats.behav_weight_mean), w[mask].mean(), rtol=1e-5)


def test_inputs_exercise_every_branch():
  """The random inputs above really hit clipping, dual clipping and the cap (else the
  transcription test would not check them)."""
  logp, prox, behav, adv, mask = random_inputs(0)
  _, s = losses.decoupled_ppo_loss(logp, prox, behav, adv, mask, dual_clip=1.5,
                                   behav_weight_cap=1.2)
  assert 0 < float(s.clip_frac) < 1
  assert 0 < float(s.dual_clip_frac) < 1
  assert 0 < float(s.behav_weight_capped_frac) < 1


@pytest.mark.parametrize("kw", [{}, {"clip_eps_high": 0.3, "dual_clip": 3.0}])
def test_equals_ppo_when_behaviour_is_proximal(kw):
  logp, prox, _, adv, mask = random_inputs(5)
  dec, s_dec = losses.decoupled_ppo_loss(logp, prox, prox, adv, mask, **kw)
  ppo, s_ppo = losses.ppo_loss(logp, prox, adv, mask, **kw)
  np.testing.assert_allclose(float(dec), float(ppo), rtol=1e-6)
  np.testing.assert_allclose(float(s_dec.clip_frac), float(s_ppo.clip_frac))
  np.testing.assert_allclose(float(s_dec.behav_weight_mean), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(s_dec.behav_prox_kl), 0.0, atol=1e-7)


def test_decoupled_differs_from_naive_ppo_off_policy():
  """Off-policy, naive PPO (trust region around pi_behav) is a different objective."""
  logp, prox, behav, adv, mask = random_inputs(6)
  dec, _ = losses.decoupled_ppo_loss(logp, prox, behav, adv, mask)
  naive, _ = losses.ppo_loss(logp, behav, adv, mask)
  assert abs(float(dec) - float(naive)) > 1e-3


def test_per_sequence_advantages_broadcast():
  logp, prox, behav, _, mask = random_inputs(7)
  adv_seq = np.array([1.0, -0.5, 2.0, -1.0])
  a, _ = losses.decoupled_ppo_loss(logp, prox, behav, adv_seq, mask)
  b, _ = losses.decoupled_ppo_loss(logp, prox, behav, np.repeat(adv_seq[:, None], 7, 1), mask)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_gradient_is_zero_on_masked_tokens_and_finite_with_garbage_padding():
  logp, prox, behav, adv, mask = random_inputs(8)
  # Padding positions carry junk (-inf behaviour log-prob): must not leak NaN into the grad.
  behav = np.where(mask, behav, -np.inf)
  prox = np.where(mask, prox, np.inf)
  grad = jax.grad(lambda lp: losses.decoupled_ppo_loss(lp, prox, behav, adv, mask,
                                                       dual_clip=3.0)[0])(jnp.asarray(logp))
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  assert np.all(grad[~mask] == 0)
  assert np.any(grad[mask] != 0)


def test_gradient_matches_finite_difference_and_jit():
  logp, prox, behav, adv, mask = random_inputs(9, spread=0.05)  # inside the clip range
  f = jax.jit(lambda lp: losses.decoupled_ppo_loss(lp, prox, behav, adv, mask,
                                                   behav_weight_cap=1.5)[0])
  g = np.asarray(jax.grad(f)(jnp.asarray(logp, jnp.float32)))
  # Unclipped region: d loss / d logp_t = -w_t u_t A_t m_t / sum m.
  u = np.exp(logp - prox)
  w = np.minimum(np.exp(prox - behav), 1.5)
  want = -w * u * adv * mask / mask.sum()
  np.testing.assert_allclose(g, want, rtol=2e-4, atol=1e-6)


def test_all_masked_gives_zero_loss_not_nan():
  logp, prox, behav, adv, _ = random_inputs(1)
  loss, stats = losses.decoupled_ppo_loss(logp, prox, behav, adv, np.zeros_like(logp))
  assert float(loss) == 0.0 and float(stats.num_tokens) == 0.0


@pytest.mark.parametrize("kw,match", [
    ({"clip_eps": 0.0}, "clip_eps=0.0 must be > 0"),
    ({"clip_eps": -0.1}, "clip_eps=-0.1 must be > 0"),
    ({"clip_eps_high": 0.0}, "clip_eps_high"),
    ({"dual_clip": 1.0}, "dual_clip=1.0 must be > 1"),
    ({"behav_weight_cap": 0.0}, "behav_weight_cap=0.0 must be > 0"),
    ({"behav_weight_cap": -2.0}, "behav_weight_cap=-2.0 must be > 0"),
])
def test_bad_hyperparameters(kw, match):
  logp, prox, behav, adv, mask = random_inputs(0)
  with pytest.raises(ValueError, match=match):
    losses.decoupled_ppo_loss(logp, prox, behav, adv, mask, **kw)


def test_shape_mismatch_errors():
  logp, prox, behav, adv, mask = random_inputs(0)
  with pytest.raises(ValueError, match="behav_logp has shape"):
    losses.decoupled_ppo_loss(logp, prox, behav[:, :-1], adv, mask)
  with pytest.raises(ValueError, match="mask has shape"):
    losses.decoupled_ppo_loss(logp, prox, behav, adv, mask[:2])
  with pytest.raises(ValueError, match="advantages has shape"):
    losses.decoupled_ppo_loss(logp, prox, behav, adv[:, :3], mask)
  with pytest.raises(ValueError, match="old_logp has shape"):
    losses.ppo_loss(logp, prox[:1], adv, mask)


def test_group_normalized_advantages_rows_and_ids_agree():
  rng = np.random.default_rng(0)
  r = rng.integers(0, 2, (5, 4)).astype(np.float32)
  r[2] = 1.0  # a group where every answer is right: no signal
  a = np.asarray(losses.group_normalized_advantages(r, eps=1e-6))
  want = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(a[2], 0.0)
  # The same answers shuffled, with group ids.
  perm = rng.permutation(20)
  ids = np.repeat(np.arange(5), 4)[perm]
  a_ids = losses.group_normalized_advantages(r.reshape(-1)[perm], ids)
  np.testing.assert_allclose(np.asarray(a_ids), a.reshape(-1)[perm], rtol=1e-5, atol=1e-6)
  jitted = jax.jit(lambda x, g: losses.group_normalized_advantages(x, g, num_groups=5))
  np.testing.assert_allclose(np.asarray(jitted(r.reshape(-1)[perm], ids)), np.asarray(a_ids),
                             rtol=1e-6, atol=1e-7)
  centred = losses.group_normalized_advantages(r, scale=False)
  np.testing.assert_allclose(np.asarray(centred), r - r.mean(1, keepdims=True), atol=1e-6)


def test_group_normalized_advantages_bad_input():
  with pytest.raises(ValueError, match="pass \\[prompts, answers_per_prompt\\]"):
    losses.group_normalized_advantages(np.zeros(6))
  with pytest.raises(ValueError, match="same length"):
    losses.group_normalized_advantages(np.zeros(6), np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="must be integers"):
    losses.group_normalized_advantages(np.zeros(6), np.zeros(6))
