r"""Offline RL in tabular discounted MDPs: VI-LCB vs plug-in value iteration vs behaviour cloning
(Rashidinejad, Zhu, Ma, Jiao, Russell, arXiv:2103.12021, the MDP part).

MDP ``(S, A, P, r, rho, gamma)`` with rewards in ``[0, 1]``, ``V_max = 1/(1-gamma)``. Data: ``N``
i.i.d. transitions ``(s, a, r, s')`` with ``(s, a) ~ mu``, the normalised discounted occupancy of
the behaviour policy ``pi_b = (1 - lam) pi* + lam uniform``, ``s' ~ P(.|s,a)`` and Bernoulli
rewards of mean ``r(s,a)``. Sufficient statistics: ``N(s,a)``, the reward sums and the
transition counts ``N(s,a,s')``. ``C* = max_{s,a} d*(s,a) / mu(s,a)`` (``d*`` the occupancy of
``pi*``); ``lam = 0`` gives ``C* = 1`` (expert data).

**VI-LCB** (pessimistic value iteration), from ``V = 0``, ``K`` iterations:

    Q(s,a) = r^(s,a) + gamma P^(.|s,a) . V - b(s,a),  b = V_max sqrt(log(2SA/delta) / (2 N(s,a)))
    Q(s,a) = -V_max                                    where N(s,a) = 0  (r^ = 0, b = V_max)
    V(s)   = max(0, max_a Q(s,a))                      (clipped at 0: values are >= 0)

and ``pi^(s) = argmax_a Q(s,a)``. The penalty is Hoeffding's for ``r + gamma V(s') ∈ [0, V_max]``
with a union bound over the ``S A`` pairs; the paper's analysis also splits the data across
iterations (so ``V`` is independent of the samples it is applied to) and carries a larger log
factor. We use all data in every iteration (the practical variant); whether the resulting
``Q^ <= Q^{pi^}`` still holds with high probability is checked in ``tests/rl``.

**Plug-in VI**: the same iteration without ``b`` over the pairs seen (the empirical model,
certainty equivalence); pairs never seen are not chosen unless the state has no data.
**BC**: the most played action in each state.

Ties are broken uniformly at random when a ``key`` is given. Everything is pure ``jnp`` on one
dataset; vmap over seeds and ``N``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl.offline.bandits import argmax_random_ties, check_counts, check_delta


class TabularMDP(NamedTuple):
  P: jnp.ndarray      # [S, A, S] transition probabilities
  r: jnp.ndarray      # [S, A] mean rewards in [0, 1]
  rho: jnp.ndarray    # [S] initial-state distribution
  gamma: jnp.ndarray  # scalar discount


def random_mdp(key, num_states: int, num_actions: int, gamma: float = 0.9,
               dirichlet: float = 0.1) -> TabularMDP:
  """Random MDP: ``P(.|s,a) ~ Dirichlet(dirichlet)`` (small = sparse transitions, so occupancies
  differ a lot between policies), ``r ~ U(0, 1)``, ``rho`` uniform."""
  if not 0.0 <= gamma < 1.0:
    raise ValueError(f"gamma={gamma} must lie in [0, 1).")
  kp, kr = jax.random.split(key)
  alpha = jnp.full((num_states,), dirichlet)
  P = jax.random.dirichlet(kp, alpha, (num_states, num_actions))
  r = jax.random.uniform(kr, (num_states, num_actions))
  rho = jnp.full((num_states,), 1.0 / num_states)
  return TabularMDP(P, r, rho, jnp.asarray(gamma, jnp.float32))


def one_hot_policy(actions: jnp.ndarray, num_actions: int) -> jnp.ndarray:
  return jax.nn.one_hot(actions, num_actions)


# Policy evaluation and occupancies iterate their Bellman/flow equations instead of calling
# jnp.linalg.solve: batched LU custom calls inside large vmapped programs deadlocked XLA:CPU's
# two-thread intra-op pool on this machine (both workers parked in LuDecomposition's
# ParallelBatchMap). gamma^EVAL_ITERS is far below float32 resolution for gamma <= 0.95.
EVAL_ITERS = 600


def policy_q(mdp: TabularMDP, pi: jnp.ndarray, iters: int = EVAL_ITERS) -> jnp.ndarray:
  """``Q^pi [S, A]`` of a stochastic policy ``pi [S, A]`` (iterated Bellman equation)."""
  def body(_, q):
    return mdp.r + mdp.gamma * jnp.einsum("sat,t->sa", mdp.P, jnp.sum(pi * q, 1))
  return jax.lax.fori_loop(0, iters, body, jnp.zeros_like(mdp.r))


def policy_value(mdp: TabularMDP, pi: jnp.ndarray) -> jnp.ndarray:
  """``V^pi [S]``."""
  return jnp.sum(pi * policy_q(mdp, pi), axis=1)


def optimal_q(mdp: TabularMDP, iters: int = 1000) -> jnp.ndarray:
  """``Q*`` by value iteration (``gamma^iters`` below float precision for gamma <= 0.97)."""
  def body(_, q):
    return mdp.r + mdp.gamma * jnp.einsum("sat,t->sa", mdp.P, q.max(1))
  q = jax.lax.fori_loop(0, iters, body, jnp.zeros_like(mdp.r))
  return q


def optimal_policy(mdp: TabularMDP) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(pi* [S], V* [S])``, ``V*`` by :func:`policy_value` of ``pi*``."""
  pi_star = optimal_q(mdp).argmax(1)
  return pi_star, policy_value(mdp, one_hot_policy(pi_star, mdp.r.shape[1]))


def occupancy(mdp: TabularMDP, pi: jnp.ndarray, iters: int = EVAL_ITERS) -> jnp.ndarray:
  """Normalised discounted occupancy ``d(s,a) = (1-gamma) sum_t gamma^t P(s_t=s, a_t=a)``
  (iterated flow equation ``d_s = (1-gamma) rho + gamma T_pi^T d_s``)."""
  T_pi = jnp.einsum("sa,sat->st", pi, mdp.P)

  def body(_, d):
    return (1 - mdp.gamma) * mdp.rho + mdp.gamma * d @ T_pi

  d_s = jax.lax.fori_loop(0, iters, body, mdp.rho)
  return d_s[:, None] * pi


def behaviour_policy(pi_star: jnp.ndarray, lam) -> jnp.ndarray:
  """``(1 - lam) pi* + lam uniform`` (``pi_star``: ``[S, A]`` one-hot)."""
  A = pi_star.shape[1]
  return (1 - lam) * pi_star + lam / A


def concentrability(d_star: jnp.ndarray, mu: jnp.ndarray) -> jnp.ndarray:
  """``max_{d* > 0} d*/mu`` (inf if ``mu = 0`` somewhere ``d* > 0``)."""
  ratio = jnp.where(d_star > 0, d_star / jnp.where(mu > 0, mu, 1e-30), 0.0)
  return jnp.max(ratio)


def lambda_for_concentrability(mdp: TabularMDP, pi_star: jnp.ndarray, c_star,
                               iters: int = 40) -> jnp.ndarray:
  """``lam`` with ``C*(pi_b(lam)) = c_star``, by bisection on ``[0, 1]`` (``C*`` grows with
  ``lam``; returns 1 if even the uniform policy stays below ``c_star``)."""
  d_star = occupancy(mdp, pi_star)

  def c_of(lam):
    return concentrability(d_star, occupancy(mdp, behaviour_policy(pi_star, lam)))

  def body(_, lo_hi):
    lo, hi = lo_hi
    mid = 0.5 * (lo + hi)
    below = c_of(mid) < c_star
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.float32(0.0), jnp.float32(1.0)))
  return 0.5 * (lo + hi)


class Dataset(NamedTuple):
  counts: jnp.ndarray       # [S, A] N(s,a)
  reward_sums: jnp.ndarray  # [S, A]
  next_counts: jnp.ndarray  # [S, A, S] N(s,a,s')


def sample_dataset(key, mdp: TabularMDP, mu: jnp.ndarray, n) -> Dataset:
  """``n`` i.i.d. transitions with ``(s,a) ~ mu``, drawn exactly through the sufficient
  statistics (multinomial counts, multinomial next states given the counts, binomial rewards);
  ``n`` may be traced and the cost does not grow with it."""
  kc, kr, kt = jax.random.split(key, 3)
  S, A = mdp.r.shape
  counts = jax.random.multinomial(kc, jnp.asarray(n, jnp.float32), mu.reshape(-1)).reshape(S, A)
  sums = jax.random.binomial(kr, counts, mdp.r)
  keys = jax.random.split(kt, (S, A))
  next_counts = jax.vmap(jax.vmap(jax.random.multinomial))(keys, counts, mdp.P)
  return Dataset(counts, sums, next_counts)


def _empirical_model(data: Dataset):
  n = jnp.maximum(data.counts, 1.0)
  return data.reward_sums / n, data.next_counts / n[..., None], data.counts > 0


def vi_lcb(data: Dataset, gamma, delta, *, iters: int = 200, key=None):
  """VI-LCB (module docstring). Returns ``(policy [S], Q [S, A], V [S])``."""
  check_counts(data.counts)
  check_delta(delta)
  S, A = data.counts.shape
  v_max = 1.0 / (1.0 - gamma)
  r_hat, p_hat, seen = _empirical_model(data)
  bonus = v_max * jnp.sqrt(jnp.log(2.0 * S * A / delta) / (2.0 * jnp.maximum(data.counts, 1.0)))

  def q_of(v):
    q = r_hat + gamma * jnp.einsum("sat,t->sa", p_hat, v) - bonus
    return jnp.where(seen, q, -v_max)

  def body(_, v):
    return jnp.maximum(0.0, q_of(v).max(1))

  v = jax.lax.fori_loop(0, iters, body, jnp.zeros((S,)))
  q = q_of(v)
  return argmax_random_ties(q, key), q, jnp.maximum(0.0, q.max(1))


def plugin_vi(data: Dataset, gamma, *, iters: int = 200, key=None):
  """Plug-in (certainty-equivalence) VI on the seen pairs. Returns ``(policy, Q, V)``."""
  check_counts(data.counts)
  r_hat, p_hat, seen = _empirical_model(data)

  def q_of(v):
    return jnp.where(seen, r_hat + gamma * jnp.einsum("sat,t->sa", p_hat, v), -jnp.inf)

  def body(_, v):
    q = q_of(v)
    return jnp.where(seen.any(1), q.max(1), 0.0)

  v = jax.lax.fori_loop(0, iters, body, jnp.zeros((data.counts.shape[0],)))
  q = q_of(v)
  return argmax_random_ties(q, key), q, jnp.where(seen.any(1), q.max(1), 0.0)


def behaviour_cloning(data: Dataset, key=None) -> jnp.ndarray:
  """Most played action per state (random where the state has no data)."""
  check_counts(data.counts)
  return argmax_random_ties(data.counts.astype(jnp.float32), key)


def suboptimality(mdp: TabularMDP, actions: jnp.ndarray, pi_star: jnp.ndarray) -> jnp.ndarray:
  """``J(pi*) - J(pi) = rho . (V* - V^pi)`` for deterministic policies ``actions``, ``pi_star``
  (``[S]``). Both are evaluated in one batched call, so a policy equal to ``pi*`` scores exactly
  0, not float noise."""
  A = mdp.r.shape[1]
  v = jax.vmap(lambda a: policy_value(mdp, one_hot_policy(a, A)))(jnp.stack([pi_star, actions]))
  return jnp.dot(mdp.rho, v[0] - v[1])


METHODS = ("vi_lcb", "plugin", "bc")


def policies(key, data: Dataset, gamma, delta, iters: int = 200) -> dict[str, jnp.ndarray]:
  k1, k2, k3 = jax.random.split(key, 3)
  return {"vi_lcb": vi_lcb(data, gamma, delta, iters=iters, key=k1)[0],
          "plugin": plugin_vi(data, gamma, iters=iters, key=k2)[0],
          "bc": behaviour_cloning(data, key=k3)}
