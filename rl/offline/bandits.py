r"""Offline multi-armed and contextual bandits: LCB, greedy and behaviour cloning
(Rashidinejad, Zhu, Ma, Jiao, Russell, "Bridging Offline RL and Imitation Learning: A Tale of
Pessimism", arXiv:2103.12021).

Data: ``N`` pairs ``(s_i, a_i)`` with ``s_i ~ rho``, ``a_i ~ mu(.|s_i)`` (the behaviour policy)
and rewards ``r_i ∈ [0, 1]`` with mean ``r(s_i, a_i)``. Sufficient statistics per ``(s, a)``:
the count ``N(s,a)`` and the reward sum. A multi-armed bandit is the one-context case.

* **LCB** (pessimism): ``a^(s) = argmax_a r^(s,a) - b(s,a)`` with the Hoeffding penalty

      b(s,a) = sqrt(log(2 |S||A| / delta) / (2 N(s,a)))          (|S| = 1 for a MAB)

  and ``r^ = 0, b = 1`` where ``N(s,a) = 0``. With probability ``>= 1 - delta`` every
  ``|r^ - r| <= b`` (Hoeffding + a union bound over the pairs), so ``r(a^) >= r(a*) - 2 b(a*)``:
  only the *optimal* action needs to be covered. The paper's rate: ``~ sqrt(C* log(.)/N)``, with
  ``C* = max_s 1/mu(pi*(s)|s)`` the single-policy concentrability.
* **Greedy**: ``argmax r^(s,a)`` over the actions seen in ``s`` (the empirical best; the
  winner's curse of rarely-sampled actions is its failure mode).
* **Behaviour cloning (BC)**: the most played action in ``s``.

Ties (and contexts without data) are broken uniformly at random when a ``key`` is given, so no
method is favoured by the order of the actions; without a key the lowest index wins.

Every policy function takes one dataset's arrays (``[A]`` for a MAB, ``[S, A]`` for a CB) and is
pure ``jnp``: ``jax.vmap`` it over seeds and dataset sizes, ``jax.jit`` the whole simulation.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


# ------------------------------------------------------------------------------------------------
# Input checks (on concrete arrays; inside jit the shapes are checked, values cannot be)
# ------------------------------------------------------------------------------------------------


def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_delta(delta) -> None:
  if _concrete(delta):
    d = float(delta)
    if not 0.0 < d < 1.0:
      raise ValueError(f"delta={delta} must lie in (0, 1): it is the failure probability of the "
                       "confidence bounds (the paper's analysis uses delta = 1/N).")


def check_counts(counts, name: str = "counts") -> None:
  if _concrete(counts):
    c = jnp.asarray(counts)
    if c.size and bool(jnp.any(c < 0)):
      raise ValueError(f"{name} must be >= 0; got a minimum of {float(c.min())}.")


def check_reward_sums(counts, reward_sums) -> None:
  if jnp.shape(counts) != jnp.shape(reward_sums):
    raise ValueError(f"counts {jnp.shape(counts)} and reward_sums {jnp.shape(reward_sums)} "
                     "must have the same shape.")
  if _concrete(counts) and _concrete(reward_sums):
    c, r = jnp.asarray(counts), jnp.asarray(reward_sums)
    if c.size and (bool(jnp.any(r < -1e-6)) or bool(jnp.any(r > c + 1e-6))):
      raise ValueError("reward_sums must lie in [0, counts]: rewards are in [0, 1].")


# ------------------------------------------------------------------------------------------------
# Estimators
# ------------------------------------------------------------------------------------------------


def hoeffding_bonus(counts: jnp.ndarray, delta, num_pairs: int | None = None) -> jnp.ndarray:
  """``b = sqrt(log(2 num_pairs / delta) / (2 N))``; 1 where ``N = 0``.

  ``num_pairs``: the size of the union bound, ``|A|`` for a MAB (default: the last axis),
  ``|S||A|`` for a contextual bandit.
  """
  check_counts(counts)
  check_delta(delta)
  counts = jnp.asarray(counts, jnp.float32)
  num_pairs = counts.shape[-1] if num_pairs is None else num_pairs
  if num_pairs < 1:
    raise ValueError(f"num_pairs={num_pairs} must be >= 1.")
  log_term = jnp.log(2.0 * num_pairs / jnp.asarray(delta, jnp.float32))
  return jnp.where(counts > 0, jnp.sqrt(log_term / (2.0 * jnp.maximum(counts, 1.0))), 1.0)


def empirical_means(counts: jnp.ndarray, reward_sums: jnp.ndarray) -> jnp.ndarray:
  """``r^ = sum / N``, 0 where ``N = 0``."""
  counts = jnp.asarray(counts, jnp.float32)
  return jnp.where(counts > 0, jnp.asarray(reward_sums, jnp.float32) / jnp.maximum(counts, 1.0),
                   0.0)


def argmax_random_ties(scores: jnp.ndarray, key=None) -> jnp.ndarray:
  """Argmax over the last axis; ties uniformly at random if ``key`` is given."""
  if key is None:
    return jnp.argmax(scores, axis=-1)
  is_max = scores >= jnp.max(scores, axis=-1, keepdims=True)
  return jax.random.categorical(key, jnp.where(is_max, 0.0, -jnp.inf), axis=-1)


def lcb_scores(counts, reward_sums, delta, num_pairs: int | None = None) -> jnp.ndarray:
  """``r^ - b`` (the pessimistic value of each action)."""
  check_reward_sums(counts, reward_sums)
  return empirical_means(counts, reward_sums) - hoeffding_bonus(counts, delta, num_pairs)


def mab_lcb(counts, reward_sums, delta, key=None) -> jnp.ndarray:
  """LCB arm of a multi-armed bandit (``counts``, ``reward_sums``: ``[A]``)."""
  _check_ndim(counts, 1, "mab_lcb")
  return argmax_random_ties(lcb_scores(counts, reward_sums, delta), key)


def cb_lcb(counts, reward_sums, delta, key=None) -> jnp.ndarray:
  """LCB action per context of a contextual bandit (``[S, A]`` in, ``[S]`` out)."""
  _check_ndim(counts, 2, "cb_lcb")
  return argmax_random_ties(lcb_scores(counts, reward_sums, delta, num_pairs=jnp.size(counts)), key)


def greedy(counts, reward_sums, key=None) -> jnp.ndarray:
  """Empirical best over the actions seen (per context); random if none was seen."""
  check_counts(counts)
  check_reward_sums(counts, reward_sums)
  means = empirical_means(counts, reward_sums)
  return argmax_random_ties(jnp.where(jnp.asarray(counts) > 0, means, -jnp.inf), key)


def behaviour_cloning(counts, key=None) -> jnp.ndarray:
  """Most played action (per context); random if none was seen."""
  check_counts(counts)
  return argmax_random_ties(jnp.asarray(counts, jnp.float32), key)


def _check_ndim(counts, ndim, fn):
  if jnp.ndim(counts) != ndim:
    raise ValueError(f"{fn} takes one dataset's counts with {ndim} axes "
                     f"({'[A]' if ndim == 1 else '[S, A]'}), got shape {jnp.shape(counts)}; "
                     "jax.vmap it over seeds.")


# ------------------------------------------------------------------------------------------------
# Instances, datasets, evaluation
# ------------------------------------------------------------------------------------------------


class BanditInstance(NamedTuple):
  """A contextual bandit with a behaviour policy (a MAB is ``S = 1``)."""
  context_probs: jnp.ndarray  # [S] rho
  behaviour: jnp.ndarray      # [S, A] mu(a|s)
  means: jnp.ndarray          # [S, A] r(s, a) in [0, 1] (Bernoulli rewards)


def concentrability(inst: BanditInstance) -> jnp.ndarray:
  """``C* = max_{s: rho(s) > 0} 1 / mu(pi*(s)|s)`` (``d*(s,a)/mu(s,a)`` with ``d* = rho x pi*``)."""
  best = jnp.argmax(inst.means, axis=-1)
  mu_star = jnp.take_along_axis(inst.behaviour, best[:, None], axis=-1)[:, 0]
  ratio = jnp.where(inst.context_probs > 0, 1.0 / mu_star, 0.0)
  return jnp.max(ratio)


def sample_dataset(key, inst: BanditInstance, n) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(counts, reward_sums)`` of ``n`` i.i.d. samples, drawn exactly through the sufficient
  statistics: ``N(s,a) ~ Multinomial(n, rho(s) mu(a|s))``, ``sum | N ~ Binomial(N, r(s,a))``.

  ``n`` may be traced (vmap over dataset sizes); the cost does not grow with ``n``.
  """
  k_counts, k_rewards = jax.random.split(key)
  joint = (inst.context_probs[:, None] * inst.behaviour).reshape(-1)
  counts = jax.random.multinomial(k_counts, jnp.asarray(n, jnp.float32), joint)
  counts = counts.reshape(inst.behaviour.shape)
  sums = jax.random.binomial(k_rewards, counts, inst.means)
  return counts, sums


def suboptimality(inst: BanditInstance, actions: jnp.ndarray) -> jnp.ndarray:
  """``sum_s rho(s) (max_a r(s,a) - r(s, actions[s]))``; ``actions``: ``[S]`` (or a scalar)."""
  actions = jnp.reshape(actions, (-1,))
  chosen = jnp.take_along_axis(inst.means, actions[:, None], axis=-1)[:, 0]
  return jnp.sum(inst.context_probs * (jnp.max(inst.means, axis=-1) - chosen))


def hard_instance(c_star, n, *, num_contexts: int, num_arms: int, gap,
                  rare_fraction: float = 0.3) -> BanditInstance:
  """The instance family the report takes the worst case over (all arguments may be traced).

  * Contexts: with ``S > 1``, ``S - 1`` *light* contexts of probability ``1/n`` each (a constant
    fraction of them is missing from a dataset of size ``n``: the ``S/N`` imitation term) and
    one heavy context with the rest. ``S = 1`` is a multi-armed bandit.
  * Behaviour, in every context: ``mu(a*) = 1/C*``; of the rest, ``1 - rare_fraction`` goes to
    one *decoy* arm (the most played arm once ``C* > 2``: BC's failure) and ``rare_fraction`` is
    spread over the ``A - 2`` *rare* arms (greedy's winner's curse).
  * Bernoulli rewards: ``r(a*) = (1 + gap)/2``, every other arm ``(1 - gap)/2``.

  Requires ``n >= S - 1`` and ``A >= 3``.
  """
  if num_arms < 3:
    raise ValueError(f"num_arms={num_arms} must be >= 3 (optimal, decoy and rare arms).")
  c_star = jnp.asarray(c_star, jnp.float32)
  n = jnp.asarray(n, jnp.float32)
  rest = 1.0 - 1.0 / c_star
  arm = jnp.concatenate([jnp.stack([1.0 / c_star, rest * (1.0 - rare_fraction)]),
                         jnp.full((num_arms - 2,), rest * rare_fraction / (num_arms - 2))])
  behaviour = jnp.broadcast_to(arm, (num_contexts, num_arms))
  if num_contexts == 1:
    rho = jnp.ones((1,))
  else:
    light = jnp.full((num_contexts - 1,), 1.0 / n)
    rho = jnp.concatenate([jnp.reshape(1.0 - jnp.sum(light), (1,)), light])
  gap = jnp.asarray(gap, jnp.float32)
  row = jnp.concatenate([jnp.reshape((1.0 + gap) / 2, (1,)),
                         jnp.full((num_arms - 1,), 1.0) * (1.0 - gap) / 2])
  means = jnp.broadcast_to(row, (num_contexts, num_arms))
  return BanditInstance(rho, behaviour, means)


def lcb_delta(n) -> jnp.ndarray:
  """``delta = 1/N``, the choice behind the paper's expected-suboptimality rates."""
  return 1.0 / jnp.maximum(jnp.asarray(n, jnp.float32), 2.0)


METHODS = ("lcb", "greedy", "bc")


def policies(key, counts, reward_sums, delta) -> dict[str, jnp.ndarray]:
  """Every method's action per context for one dataset (``[S, A]``): ``{name: [S]}``."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {"lcb": cb_lcb(counts, reward_sums, delta, k1),
          "greedy": greedy(counts, reward_sums, k2),
          "bc": behaviour_cloning(counts, k3)}


def expected_suboptimality(key, inst: BanditInstance, n, num_seeds: int) -> dict[str, jnp.ndarray]:
  """Monte-Carlo ``E[suboptimality]`` of each method over ``num_seeds`` datasets of size ``n``.

  Vmapped over seeds inside; vmap this over ``n`` and instance parameters, then jit.
  """
  def one(k):
    kd, kp = jax.random.split(k)
    counts, sums = sample_dataset(kd, inst, n)
    acts = policies(kp, counts, sums, lcb_delta(n))
    return {m: suboptimality(inst, a) for m, a in acts.items()}

  per_seed = jax.vmap(one)(jax.random.split(key, num_seeds))
  return {m: jnp.mean(v) for m, v in per_seed.items()}
