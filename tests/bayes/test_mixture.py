"""Bayesian mixtures: the Bernoulli mixture equals Laplace's rule and the exact posterior
predictive, regret bounds, probability vs logit averaging, Bayesian linear regression against
the marginal likelihood, an SGLD mixture against the exact predictive, and bad input."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import comb

from bayes import mixture as mx
from optim.sgld import sgld


def test_laplace_rule_is_the_mixture_of_the_posterior():
  # The uniform-prior posterior after k ones in n is Beta(k+1, n-k+1); the mixture of
  # P(next = 1 | theta_s) = theta_s over a fine midpoint grid weighted by the likelihood
  # (a ratio of two mixtures) is the exact posterior predictive.
  grid = (np.arange(200_000) + 0.5) / 200_000
  for k, n in ((0, 0), (0, 5), (3, 10), (17, 20)):
    loglik = k * np.log(grid) + (n - k) * np.log1p(-grid)
    num = mx.mixture_log_predictive(jnp.asarray(loglik + np.log(grid)))
    den = mx.mixture_log_predictive(jnp.asarray(loglik))
    np.testing.assert_allclose(float(jnp.exp(num - den)), (k + 1) / (n + 2), rtol=1e-5)
    np.testing.assert_allclose(float(mx.laplace_predictive(k, n)), (k + 1) / (n + 2), rtol=1e-6)
  # And from posterior samples (Monte Carlo): within 4 standard errors.
  theta = np.random.default_rng(0).beta(4, 8, size=100_000)  # k = 3, n = 10
  mc = float(jnp.exp(mx.mixture_log_predictive(jnp.log(jnp.asarray(theta)))))
  assert abs(mc - 4 / 12) < 4 * theta.std() / math.sqrt(theta.size)


def test_sequential_laplace_predictions_give_the_sequence_probability():
  x = np.random.default_rng(1).random(300) < 0.3
  ones_before = np.concatenate([[0], np.cumsum(x)[:-1]])
  p1 = np.asarray(mx.laplace_predictive(ones_before, np.arange(300)))
  log_q = np.where(x, np.log(p1), np.log1p(-p1))
  total = float(mx.cumulative_log_loss(jnp.asarray(log_q))[-1])
  np.testing.assert_allclose(-total, float(mx.bernoulli_mixture_log_prob(x.sum(), 300)),
                             rtol=1e-5)
  k = int(x.sum())
  np.testing.assert_allclose(-total, -math.log(301 * comb(300, k, exact=True)), rtol=1e-5)


def test_bernoulli_regret_and_its_bound():
  n = 1000
  k = jnp.arange(n + 1)
  regret = np.asarray(mx.bernoulli_regret(k, n))
  bound = float(mx.bernoulli_regret_bound(n))
  assert np.all(regret <= bound + 1e-3) and np.all(regret >= 0)
  np.testing.assert_allclose(regret[[0, -1]], bound, rtol=1e-5)  # worst case: all 0s or all 1s
  # In the middle: log(n+1) - log(2^n / C(n, n/2)) ~ (1/2) log n - (1/2) log(pi/2) (Stirling).
  np.testing.assert_allclose(regret[n // 2], 0.5 * math.log(n) - 0.5 * math.log(math.pi / 2),
                             atol=2e-3)


def test_finite_class_mixture_regret_is_at_most_log_m():
  # Uniform prior over M Bernoulli models: q(x^t) = mean_m p_m(x^t), so the regret against the
  # best model in hindsight is at most log M on *every* sequence.
  models = np.linspace(0.05, 0.95, 10)
  x = np.random.default_rng(2).random(500) < 0.62
  step = np.where(x[None, :], np.log(models)[:, None], np.log1p(-models)[:, None])  # [M, T]
  cum = np.cumsum(step, 1)
  mix_cum = np.asarray(mx.mixture_log_predictive(jnp.asarray(cum)))
  learner = np.diff(np.concatenate([[0.0], mix_cum]))
  regret = np.asarray(mx.regret_vs_best(jnp.asarray(learner), jnp.asarray(step)))
  assert np.all(regret <= math.log(10) + 1e-4), regret.max()
  assert regret[-1] > 0


def test_probability_average_vs_logit_average():
  # The documented example: members p(1) = sigma(10) and 1/2 (logits [0, 10] and [0, 0]).
  logits = jnp.array([[0.0, 10.0], [0.0, 0.0]])
  mixture = jnp.exp(mx.mixture_log_predictive(jax.nn.log_softmax(logits)))
  logit_avg = jnp.exp(mx.logit_average_log_predictive(logits))
  np.testing.assert_allclose(mixture[1], (jax.nn.sigmoid(10.0) + 0.5) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(mixture[1]), 0.7500, atol=1e-4)
  np.testing.assert_allclose(float(logit_avg[1]), float(jax.nn.sigmoid(5.0)), rtol=1e-6)
  np.testing.assert_allclose(float(logit_avg[1]), 0.9933, atol=1e-4)
  # The mixture never loses more than log S to its best member; the logit average can.
  z = jax.random.normal(jax.random.key(0), (8, 1000, 5)) * 4  # S=8 members, 1000 cases, 5 classes
  y = jax.random.randint(jax.random.key(1), (1000,), 0, 5)
  logp = jnp.take_along_axis(jax.nn.log_softmax(z), y[None, :, None], -1)[..., 0]
  mix_loss = -mx.mixture_log_predictive(logp)
  assert bool(jnp.all(mix_loss <= jnp.min(-logp, 0) + math.log(8) + 1e-5))
  wrong = jnp.array([[-5.0, 5.0], [100.0, 0.0]])  # member 1 right, member 2 confidently wrong
  y1_loss_logit = -mx.logit_average_log_predictive(wrong)[1]
  y1_loss_mix = -mx.mixture_log_predictive(jax.nn.log_softmax(wrong))[1]
  best = -jax.nn.log_softmax(wrong[0])[1]
  assert float(y1_loss_mix) <= float(best) + math.log(2) + 1e-6
  assert float(y1_loss_logit) > float(best) + 40  # 47.5 nats against 0.0067


def test_blr_predictive_is_the_marginal_likelihood_ratio():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  y = jnp.asarray(x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=12), jnp.float32)
  a, s2 = 2.0, 0.09

  def log_evidence(xx, yy):  # y ~ N(0, X X^T / a + s2 I)
    cov = np.asarray(xx) @ np.asarray(xx).T / a + s2 * np.eye(len(yy))
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (logdet + np.asarray(yy) @ np.linalg.solve(cov, np.asarray(yy))
                   + len(yy) * math.log(2 * math.pi))

  post = mx.blr_posterior(x[:-1], y[:-1], prior_precision=a, noise_var=s2)
  pred = float(mx.blr_predictive_logpdf(post, x[-1:], y[-1:], noise_var=s2)[0])
  np.testing.assert_allclose(pred, log_evidence(x, y) - log_evidence(x[:-1], y[:-1]), atol=2e-3)
  ridge = np.linalg.solve(np.asarray(x[:-1]).T @ np.asarray(x[:-1]) + a * s2 * np.eye(3),
                          np.asarray(x[:-1]).T @ np.asarray(y[:-1]))
  np.testing.assert_allclose(post.mean, ridge, rtol=1e-3, atol=1e-4)  # posterior mean = ridge


def test_sgld_mixture_matches_the_exact_predictive():
  rng = np.random.default_rng(4)
  n, d, a, s2 = 30, 2, 1.0, 0.25
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jnp.asarray(x @ np.array([0.7, -1.2]) + 0.5 * rng.normal(size=n), jnp.float32)
  x_test = jnp.asarray(rng.normal(size=(200, d)) * 2, jnp.float32)
  y_test = jnp.asarray(x_test @ np.array([0.7, -1.2]) + 0.5 * rng.normal(size=200), jnp.float32)
  post = mx.blr_posterior(x, y, prior_precision=a, noise_var=s2)
  exact = mx.blr_predictive_logpdf(post, x_test, y_test, noise_var=s2)

  def grad(theta):  # mean NLL + (-log prior) / N
    return x.T @ (x @ theta - y) / (n * s2) + a * theta / n

  h = 0.02 * float(jnp.min(jnp.linalg.eigvalsh(post.cov)))

  def chain(seed):
    tx = sgld(h, num_data=n, seed=seed)

    def body(c, _):
      th, st = c
      u, st = tx.update(grad(th), st)
      return (th + u, st), None

    c, _ = jax.lax.scan(body, (jnp.zeros(d), tx.init(jnp.zeros(d))), None, length=1000)

    def keep(c, _):  # then 10 samples, 50 steps apart
      c, _ = jax.lax.scan(body, c, None, length=50)
      return c, c[0]

    _, kept = jax.lax.scan(keep, c, None, length=10)
    return kept

  samples = jax.jit(jax.vmap(chain))(jnp.arange(1000)).reshape(-1, d)  # 10,000 samples
  per_sample = jax.vmap(lambda th: mx.blr_log_likelihood(th, x_test, y_test, noise_var=s2))(
      samples)
  sgld_mix = mx.mixture_log_predictive(per_sample)
  map_plugin = mx.blr_log_likelihood(post.mean, x_test, y_test, noise_var=s2)
  gap_sgld = float(jnp.mean(jnp.abs(sgld_mix - exact)))
  assert gap_sgld < 0.01, gap_sgld
  # MAP ignores the posterior spread: a larger log-loss than the exact predictive on average.
  assert float(jnp.mean(exact - map_plugin)) > 0.0


def test_bad_input_raises():
  with pytest.raises(ValueError, match="at least one sample"):
    mx.mixture_log_predictive(jnp.zeros((0, 3)))
  with pytest.raises(ValueError, match="0 <= k <= n"):
    mx.laplace_predictive(5, 3)
  with pytest.raises(ValueError, match="0 <= k <= n"):
    mx.bernoulli_mixture_log_prob(-1, 3)
  with pytest.raises(ValueError, match="must be > 0"):
    mx.blr_posterior(jnp.ones((3, 2)), jnp.ones(3), prior_precision=0.0, noise_var=1.0)
