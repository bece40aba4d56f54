"""SSO: exact-inner-solve projection (vs numpy lstsq), monotone full-batch descent on real data,
the expensive-gradient counter, errors on bad settings."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_breast_cancer

from optim import sso


def linear_apply(params, batch):
  return batch["x"] @ params["w"] + params["b"]


def logistic_loss(z, batch):  # per-example beta = 1/4
  return jnp.mean(jax.nn.softplus(z) - batch["y"] * z)


def squared_loss(z, batch):  # per-example beta = 1
  return 0.5 * jnp.mean(jnp.square(z - batch["y"]))


@functools.cache
def breast_cancer():
  x, y = load_breast_cancer(return_X_y=True)
  x = (x - x.mean(0)) / x.std(0)
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


@pytest.mark.parametrize("inner", ["armijo", "sgd"])
@pytest.mark.parametrize("k", [1, 3])
def test_exact_inner_solve_is_least_squares_projection(inner, k):
  rng = np.random.default_rng(0)
  n, d, eta = 200, 6, 0.7
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.normal(size=(n, k)).astype(np.float32)
  theta0 = rng.normal(size=(d, k)).astype(np.float32)
  apply_fn = lambda p, b: b["x"] @ p
  loss_fn = lambda z, b: jnp.mean(jnp.sum(jnp.cos(z) * b["y"] + 0.3 * z**2, -1))  # not quadratic

  if inner == "sgd":  # gradient descent at 1/L_S; L_S = lambda_max(X^T X) / (eta n)
    inner = optax.sgd(eta * n / np.linalg.eigvalsh(x.T @ x).max())
  step = jax.jit(functools.partial(sso.sso_step, apply_fn=apply_fn, loss_fn=loss_fn, eta=eta,
                                   m=300, inner=inner))
  batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
  theta1, _, metrics = step(jnp.asarray(theta0), sso.init(theta0), batch)

  z_t = x @ theta0
  grad = jax.grad(loss_fn)(jnp.asarray(z_t), batch)
  target = np.asarray(sso.target_step(z_t, grad, eta, n))
  # Per-example gradient g_i = n * G_i: the target is z_t - eta * g.
  g_i = np.sin(z_t) * -y + 0.6 * z_t
  np.testing.assert_allclose(target, z_t - eta * g_i, rtol=1e-4, atol=1e-5)
  expected, *_ = np.linalg.lstsq(x.astype(np.float64), target.astype(np.float64), rcond=None)
  np.testing.assert_allclose(theta1, expected, rtol=1e-3, atol=1e-4)
  assert np.abs(expected - theta0).max() > 0.1  # the step really moved theta
  assert int(metrics["expensive_grad_calls"]) == 1


@pytest.mark.parametrize("loss_fn, eta", [(logistic_loss, 4.0), (squared_loss, 1.0)])
def test_full_batch_loss_never_increases_with_eta_at_most_one_over_beta(loss_fn, eta):
  batch = breast_cancer()
  d = batch["x"].shape[1]
  params = {"w": jnp.zeros((d,)), "b": jnp.zeros(())}
  step = jax.jit(functools.partial(sso.sso_step, apply_fn=linear_apply, loss_fn=loss_fn, eta=eta,
                                   m=5))
  state = sso.init(params)
  losses, surrogate_ends = [], []
  for _ in range(40):
    params, state, metrics = step(params, state, batch)
    losses.append(float(metrics["loss"]))
    surrogate_ends.append(float(metrics["surrogate_end"]))
  losses.append(float(loss_fn(linear_apply(params, batch), batch)))
  losses = np.array(losses)
  # Majorize-minimize: L(theta_{t+1}) <= S_t(theta_{t+1}) <= S_t(theta_t) = L(theta_t).
  tol = 1e-6 * losses[0]
  assert np.all(np.diff(losses) <= tol), np.diff(losses).max()
  assert np.all(losses[1:] <= np.array(surrogate_ends) + tol)
  assert losses[-1] < 0.5 * losses[0]  # and it makes real progress
  assert int(state.expensive_grad_calls) == 40


def test_large_eta_breaks_the_upper_bound():
  # The bound is not vacuous: with eta far above 1/beta the surrogate no longer majorizes the
  # loss (L(theta_{t+1}) > S_t(theta_{t+1}) somewhere along the run).
  batch = breast_cancer()
  params = {"w": jnp.zeros((batch["x"].shape[1],)), "b": jnp.zeros(())}
  step = jax.jit(functools.partial(sso.sso_step, apply_fn=linear_apply, loss_fn=squared_loss,
                                   eta=50.0, m=20))
  state, violations = sso.init(params), 0
  for _ in range(10):
    params, state, metrics = step(params, state, batch)
    next_loss = float(squared_loss(linear_apply(params, batch), batch))
    violations += next_loss > float(metrics["surrogate_end"]) + 1e-4
  assert violations > 0


def test_expensive_gradient_counter_and_inv_sqrt_schedule():
  batch = breast_cancer()
  params = {"w": jnp.zeros((batch["x"].shape[1],)), "b": jnp.zeros(())}
  opt = sso.make_sso(2.0, apply_fn=linear_apply, loss_fn=logistic_loss, m=3,
                     eta_schedule="inv_sqrt")
  step = jax.jit(opt.step)
  state = opt.init(params)
  calls = 0
  loss_evals = 0

  def counting_loss(z, b):
    nonlocal loss_evals
    loss_evals += 1  # counts traces, not executions: must stay 1 per compiled step
    return logistic_loss(z, b)

  for t in range(1, 8):
    params, state, metrics = step(params, state, batch)
    calls += 1
    assert int(metrics["expensive_grad_calls"]) == calls == int(state.expensive_grad_calls)
    assert float(metrics["eta"]) == pytest.approx(2.0 / np.sqrt(t), rel=1e-6)
    assert int(metrics["surrogate_evals"]) >= 2 * 3  # each inner step: a gradient + >= 1 trial
  assert int(state.step) == 7 and int(state.inner_steps) == 21
  # The target-space gradient is taken once per outer step: trace one step and count.
  jax.make_jaxpr(functools.partial(sso.sso_step, apply_fn=linear_apply, loss_fn=counting_loss,
                                   eta=1.0, m=4))(params, state, batch)
  assert loss_evals == 1


def test_armijo_search_accepts_sufficient_decrease_and_refuses_ascent():
  fun = lambda p: jnp.sum((p - 3.0) ** 2)
  new, info = sso.armijo_search(fun, jnp.zeros(2), 10.0, sso.ArmijoConfig(c=0.5, backtrack=0.5))
  # From 0: grad -6 per coordinate, ||g||^2 = 72; steps 10, 5, ..., 0.3125 is the first that
  # satisfies f(0 - a g) <= 18 - 36 a, i.e. a <= 1/3.
  assert float(info.step_size) == pytest.approx(0.3125) and bool(info.accepted)
  assert int(info.evals) == 6
  np.testing.assert_allclose(new, 6 * 0.3125 * np.ones(2), rtol=1e-6)
  # A function whose every trial point is worse (NaN) is never stepped on.
  nan_fun = lambda p: jnp.where(jnp.all(p == 0.0), jnp.sum(p) + 1.0, jnp.nan) + jnp.sum(p)
  same, info = sso.armijo_search(nan_fun, jnp.zeros(2), 1.0, sso.ArmijoConfig(max_backtracks=5))
  assert not bool(info.accepted) and int(info.evals) == 5
  np.testing.assert_array_equal(same, 0.0)


def test_target_ndim_sets_examples_for_sequence_outputs():
  # Outputs [B, T, V] (LM logits): n = B*T examples, the vocabulary axis is the target.
  z = jnp.zeros((2, 5, 7))
  assert sso._num_examples(z, None, None) == 10.0
  assert sso._num_examples(z, 2, None) == 2.0
  assert sso._num_examples(jnp.zeros((9,)), None, None) == 9.0
  with pytest.raises(ValueError, match="target_ndim=4 exceeds"):
    sso._num_examples(z, 4, None)


@pytest.mark.parametrize("kwargs, match", [
    (dict(m=0), "m=0"),
    (dict(m=2.5), "m=2.5"),
    (dict(eta=0.0), "eta=0.0"),
    (dict(eta=-1.0), "eta=-1.0"),
    (dict(eta=float("nan")), "eta=nan"),
    (dict(eta="big"), "eta='big'"),
    (dict(eta_schedule="cosine"), "eta_schedule"),
    (dict(inner="adam"), "inner='adam'"),
    (dict(inner=42), "inner=42"),
    (dict(armijo=sso.ArmijoConfig(c=1.5)), "armijo.c"),
    (dict(armijo=sso.ArmijoConfig(backtrack=1.0)), "armijo.backtrack"),
    (dict(armijo=sso.ArmijoConfig(init_step_size=0.0)), "init_step_size"),
    (dict(armijo=sso.ArmijoConfig(expand=0.5)), "armijo.expand"),
    (dict(armijo={"c": 0.1, "shrink": 0.5}), "unknown fields"),
    (dict(target_ndim=-1), "target_ndim"),
])
def test_bad_settings_raise_before_compilation(kwargs, match):
  kwargs = {"eta": 1.0, "m": 3, **kwargs}
  with pytest.raises(ValueError, match=match):
    sso.make_sso(kwargs.pop("eta"), apply_fn=linear_apply, loss_fn=logistic_loss, **kwargs)


def test_step_without_functions_raises():
  opt = sso.make_sso(1.0, m=2)
  with pytest.raises(ValueError, match="apply_fn"):
    opt.step({"w": jnp.zeros(3), "b": jnp.zeros(())}, opt.init(None), breast_cancer())
