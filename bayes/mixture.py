r"""Bayesian mixture predictors under log-loss, from samples and in closed form.

The learner of the Universality lens (Feder, Urbanke, Fogel, arXiv:2506.07661) predicts with the
posterior mixture

    q(y | x, D) = ∫ p(y | x, theta) p(theta | D) dtheta ≈ (1/S) sum_s p(y | x, theta_s)

where ``theta_s`` are posterior samples (SGLD iterates, an ensemble). Its loss is the log-loss
``-log q(y|x, D)``; its *regret* on a sequence is the cumulative log-loss minus that of the best
single model in hindsight. The paper's claim: the regret is governed by the prior weight of the
models KL-close to the truth (``-log w(B_eps) + n eps`` in the classical form, Barron 1988), not
by the size of the class.

**Average probabilities, never logits.** :func:`mixture_log_predictive` computes
``logsumexp_s log p_s - log S``, the log of the average probability, in log space.
:func:`logit_average_log_predictive` (softmax of the mean logits) is what "averaging the
ensemble's outputs" often means in code, and it is a different predictor:

* the mixture never loses more than ``log S`` to its best member on any outcome:
  ``-log q(y) <= min_s -log p_s(y) + log S``; the logit average has no such bound (one member
  confidently wrong drags the geometric mean down with it);
* the logit average is the normalised *geometric* mean of the members' distributions, so it is
  more confident than the mixture wherever the members disagree (``tests/bayes`` checks
  ``sigma(5) = 0.9933`` against the mixture's ``(sigma(10) + sigma(0)) / 2 = 0.7500``);
* only the mixture is the posterior predictive; the logit average is not a Bayesian predictor.

Closed forms (for checking samplers): the Bernoulli class with a uniform prior (Laplace's rule
of succession ``(k+1)/(n+2)``; sequence probability ``1 / ((n+1) C(n,k))``, worst-case regret
``log(n+1)``), and Bayesian linear regression with a Gaussian prior and known noise.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, logsumexp


# ------------------------------------------------------------------------------------------------
# Mixtures from samples
# ------------------------------------------------------------------------------------------------


def mixture_log_predictive(log_probs: jnp.ndarray, axis: int = 0) -> jnp.ndarray:
  """``log (1/S) sum_s exp(log_probs_s)`` over the sample ``axis`` (S = its length).

  ``log_probs`` are each sample's log-probabilities (of the observed labels, or of every class:
  the result is then a normalised log-distribution again).
  """
  log_probs = jnp.asarray(log_probs)
  s = log_probs.shape[axis]
  if s == 0:
    raise ValueError("mixture_log_predictive needs at least one sample along axis "
                     f"{axis}; got shape {log_probs.shape}.")
  return logsumexp(log_probs, axis=axis) - math.log(s)


def logit_average_log_predictive(logits: jnp.ndarray, axis: int = 0) -> jnp.ndarray:
  """``log_softmax(mean_s logits_s)``: the logit average, for contrast (not a mixture)."""
  return jax.nn.log_softmax(jnp.mean(jnp.asarray(logits), axis=axis), axis=-1)


def cumulative_log_loss(log_probs_observed: jnp.ndarray) -> jnp.ndarray:
  """Running sum of ``-log q(y_t | past)`` along the last (time) axis, in nats."""
  return jnp.cumsum(-jnp.asarray(log_probs_observed), axis=-1)


def regret_vs_best(learner_log_probs: jnp.ndarray, model_log_probs: jnp.ndarray) -> jnp.ndarray:
  """Regret after each step against the best single model in hindsight (finite class).

  Args:
    learner_log_probs: ``[T]`` the learner's ``log q(y_t | past)`` of each observed outcome.
    model_log_probs: ``[M, T]`` each model's ``log p_m(y_t | past)`` of the same outcomes.

  Returns:
    ``[T]``: ``L_t(learner) - min_m L_t(m)`` with ``L_t`` the cumulative log-loss up to ``t``
    (the best model may change with ``t``: "in hindsight" of the first ``t`` outcomes).
  """
  learner = cumulative_log_loss(learner_log_probs)
  best = jnp.min(cumulative_log_loss(model_log_probs), axis=0)
  return learner - best


# ------------------------------------------------------------------------------------------------
# Bernoulli class, uniform prior: Laplace's rule
# ------------------------------------------------------------------------------------------------


def _check_bernoulli_counts(k, n):
  if not isinstance(k, jax.core.Tracer) and not isinstance(n, jax.core.Tracer):
    k_, n_ = jnp.asarray(k), jnp.asarray(n)
    if bool(jnp.any(k_ < 0)) or bool(jnp.any(k_ > n_)):
      raise ValueError(f"need 0 <= k <= n for Bernoulli counts, got k={k}, n={n}.")


def laplace_predictive(k, n) -> jnp.ndarray:
  """``P(next = 1 | k ones in n) = (k+1)/(n+2)``: the uniform-prior Bernoulli mixture."""
  _check_bernoulli_counts(k, n)
  return (jnp.asarray(k, jnp.float32) + 1.0) / (jnp.asarray(n, jnp.float32) + 2.0)


def bernoulli_mixture_log_prob(k, n) -> jnp.ndarray:
  """``log ∫ theta^k (1-theta)^(n-k) dtheta = -log((n+1) C(n, k))``: one sequence with k ones."""
  _check_bernoulli_counts(k, n)
  k = jnp.asarray(k, jnp.float32)
  n = jnp.asarray(n, jnp.float32)
  # betaln rather than three gammaln: the latter cancel ~n log n in float32 (5e-4 off at k=0,
  # n=1e4); betaln is exact to 1e-6 there. Mid-range k still carries float32 error ~1e-3 at 1e4.
  return betaln(k + 1, n - k + 1)


def bernoulli_ml_log_prob(k, n) -> jnp.ndarray:
  """Best single Bernoulli in hindsight: ``k log(k/n) + (n-k) log(1-k/n)`` (0 log 0 = 0)."""
  _check_bernoulli_counts(k, n)
  k = jnp.asarray(k, jnp.float32)
  n = jnp.asarray(n, jnp.float32)
  safe_n = jnp.maximum(n, 1.0)
  xlogy = lambda a, b: jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, b, 1.0)), 0.0)
  return xlogy(k, k / safe_n) + xlogy(n - k, (n - k) / safe_n)


def bernoulli_regret(k, n) -> jnp.ndarray:
  """Regret of Laplace's mixture vs the ML Bernoulli on a sequence with ``k`` ones in ``n``.

  Exactly ``log((n+1) C(n,k)) - n H(k/n)``; at most :func:`bernoulli_regret_bound`.
  """
  return bernoulli_ml_log_prob(k, n) - bernoulli_mixture_log_prob(k, n)


def bernoulli_regret_bound(n) -> jnp.ndarray:
  """``log(n+1)``: the worst case over sequences of :func:`bernoulli_regret` (k = 0 or n)."""
  return jnp.log1p(jnp.asarray(n, jnp.float32))


def bernoulli_kl(p, q) -> jnp.ndarray:
  """``KL(Bern(p) || Bern(q))`` in nats."""
  p, q = jnp.asarray(p), jnp.asarray(q)
  xlogy = lambda a, b: jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a / b, 1.0)), 0.0)
  return xlogy(p, q) + xlogy(1 - p, 1 - q)


# ------------------------------------------------------------------------------------------------
# Bayesian linear regression: y = x^T theta + N(0, noise_var), theta ~ N(0, I / prior_precision)
# ------------------------------------------------------------------------------------------------


class GaussianPosterior(NamedTuple):
  mean: jnp.ndarray  # [d]
  cov: jnp.ndarray   # [d, d]


def blr_posterior(x: jnp.ndarray, y: jnp.ndarray, *, prior_precision: float,
                  noise_var: float) -> GaussianPosterior:
  """Exact posterior ``N(m, Sigma)``: ``Sigma = (a I + X^T X/s2)^-1``, ``m = Sigma X^T y/s2``."""
  if not prior_precision > 0 or not noise_var > 0:
    raise ValueError(f"prior_precision={prior_precision} and noise_var={noise_var} must be > 0.")
  d = x.shape[-1]
  precision = prior_precision * jnp.eye(d) + x.T @ x / noise_var
  cov = jnp.linalg.inv(precision)
  cov = 0.5 * (cov + cov.T)
  return GaussianPosterior(cov @ (x.T @ y) / noise_var, cov)


def gaussian_logpdf(y, mean, var) -> jnp.ndarray:
  return -0.5 * (jnp.log(2 * jnp.pi * var) + jnp.square(y - mean) / var)


def blr_predictive_logpdf(post: GaussianPosterior, x: jnp.ndarray, y: jnp.ndarray, *,
                          noise_var: float) -> jnp.ndarray:
  """Exact posterior predictive ``log N(y; x^T m, s2 + x^T Sigma x)`` per row of ``x``."""
  var = noise_var + jnp.einsum("nd,de,ne->n", x, post.cov, x)
  return gaussian_logpdf(y, x @ post.mean, var)


def blr_log_likelihood(theta: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray, *,
                       noise_var: float) -> jnp.ndarray:
  """Per-example ``log N(y; x^T theta, s2)`` (one model: a single posterior sample or the MAP)."""
  return gaussian_logpdf(y, x @ theta, noise_var)
