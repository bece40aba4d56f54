r"""SSO: stochastic surrogate optimization in target space (Lavington, Vaswani, Babanezhad,
Schmidt, Le Roux; "Target-based Surrogates for Stochastic Optimization", ICML 2023,
arXiv:2302.02607).

Write the training loss as a function of the model outputs ("targets") ``z = f_theta(X)``:
``L(z) = loss_fn(z, batch)``. One SSO outer step on a batch:

1. *Expensive* target-space gradient, once: ``z_t = f_theta_t(X)``, ``G_t = dL/dz (z_t)``.
2. ``m`` *cheap* parameter steps on the surrogate, starting from ``theta_t``:

       S_t(theta) = L(z_t) + <G_t, f_theta(X) - z_t> + 1/(2 eta_t n) ||f_theta(X) - z_t||^2

   where ``n`` is the number of examples in the batch (all output axes but the trailing
   ``target_ndim`` ones; logits ``[B, T, V]`` give ``n = B*T``) and ``||.||`` sums over everything.

**Reduction convention.** ``loss_fn`` is the *mean* over the ``n`` examples of a per-example
loss ``l(z_i, y_i)`` (the train loop's convention). Then ``g_i = n G_t,i = dl/dz_i`` is the
per-example gradient and, up to the constant, ``S_t = mean_i[<g_i, f_i> + ||f_i - z_i||^2/(2 eta)]``
(``f_i``, ``z_i`` one example's output vector, the squared norm summed over its ``k`` output dims).
Its minimiser over unconstrained ``z`` is the target-space SGD step ``z_t - eta g`` (see
:func:`target_step`), so one exactly-solved SSO step is that step followed by the least-squares
projection onto ``{f_theta(X)}``: projected SGD in target space. If every ``l(., y)`` is
``beta``-smooth (``beta = 1`` for ``(z - y)^2 / 2``, ``1/4`` for the logistic loss), ``eta <= 1/beta``
makes ``S_t`` a global upper bound of ``L(f_theta(X))`` touching it at ``theta_t``; in the
full-batch setting every inner step that lowers ``S_t`` then lowers the loss (majorize-minimize).
``eta`` is per-example and does not depend on the batch size. With a sum-reduced ``loss_fn``
pass ``eta / n`` (or ``num_examples=1``).

**Relation to the official code** (PyTorch, ``optimizers/sgd_fmdopt.py``): it minimises
``mean_{n k entries}(g * f / e + (f - z_t)^2)`` with ``g`` the gradient of a *sum*-reduced loss
(``reduction='sum'`` in ``loaders/load_exp.py``, so ``g`` is per-example) and ``e = 1/s``, ``s``
its ``stepsize``. Its minimiser is ``z_t - (s/2) g``, so ``eta = s / 2`` here, for the same
per-example loss. (Its "optimal" ``s`` are 1/4 for ``MSELoss`` = ``(z-y)^2`` and 2 for BCE, i.e.
``eta`` = 1/8 and 1, a quarter of ``1/beta``.) Its ``'stochastic'`` schedule ``e sqrt(t)`` is our
``eta_schedule="inv_sqrt"``: ``eta_t = eta / sqrt(t)``, ``t = 1, 2, ...``.

**Inner optimizer.** Either SGD with Armijo backtracking as in the official ``lsopt.py``
(accept ``S(theta - a grad) <= S(theta) - c a ||grad||^2``, else ``a <- backtrack * a``; the trial
step is reset to ``init_step_size`` at each outer step and grows by ``expand`` between inner
steps, capped at ``init_step_size``), or any ``optax.GradientTransformation`` (its state is
re-initialised at each outer step, because the surrogate changes). Unlike the official code, a
search that finds no acceptable step leaves the parameters unchanged, so ``S_t`` never rises.

**Cost accounting.** ``state.expensive_grad_calls`` counts evaluations of ``dL/dz`` (one per
outer step) -- the paper's x-axis. Inner steps still run ``f_theta`` forward and backward; they
are "cheap" only when ``dL/dz`` is what costs (a simulator, a large-vocabulary loss, a remote
reward). ``metrics`` reports ``inner_steps`` and ``surrogate_evals`` too, so plots can be honest.
The official code's own ``grad_evals`` counter also counts inner steps.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

ETA_SCHEDULES = ("constant", "inv_sqrt")


class ArmijoConfig(NamedTuple):
  """Backtracking line search on the surrogate (defaults follow the official lsopt.py)."""
  init_step_size: float = 10.0  # trial step at the start of every outer step
  c: float = 0.5                # sufficient-decrease constant, in (0, 1)
  backtrack: float = 0.9        # a <- backtrack * a on rejection, in (0, 1)
  expand: float = 2.0           # next inner step starts at min(expand * a, init_step_size)
  max_backtracks: int = 100
  min_step_size: float = 1e-6   # give up (no step) below this


class SSOState(NamedTuple):
  step: jax.Array                  # outer steps taken (t)
  expensive_grad_calls: jax.Array  # evaluations of dL/dz
  inner_steps: jax.Array           # surrogate gradient steps, all outer steps together
  surrogate_evals: jax.Array       # surrogate forward evaluations (line-search trials included)


class SSO(NamedTuple):
  """An SSO train-step strategy: ``state = init(params)``;
  ``params, state, metrics = step(params, state, batch)`` (pure, jit it)."""
  init: Callable[[Any], SSOState]
  step: Callable[[Any, SSOState, Any], tuple[Any, SSOState, dict]]


InnerOptimizer = Union[str, optax.GradientTransformation]


def init(params) -> SSOState:
  del params
  zero = jnp.zeros([], jnp.int32)
  return SSOState(step=zero, expensive_grad_calls=zero, inner_steps=zero, surrogate_evals=zero)


# ------------------------------------------------------------------------------------------------
# Validation (plain Python, runs before anything is traced or compiled)
# ------------------------------------------------------------------------------------------------


def _check_config(eta, m, eta_schedule, inner, armijo, target_ndim, num_examples):
  if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
    raise ValueError(f"m={m!r} (inner steps per expensive gradient) must be an integer >= 1.")
  if not callable(eta):
    try:
      bad = isinstance(eta, bool) or math.isnan(float(eta)) or float(eta) <= 0
    except (TypeError, ValueError):
      bad = True
    if bad:
      raise ValueError(f"eta={eta!r} must be a positive number (or a schedule of the outer step); "
                       "eta <= 1/beta for a beta-smooth per-example loss, e.g. 1 for (z-y)^2/2 and "
                       "4 for the logistic loss.")
  if eta_schedule not in ETA_SCHEDULES:
    raise ValueError(f"eta_schedule={eta_schedule!r} is unknown; use one of {ETA_SCHEDULES}.")
  if isinstance(inner, str):
    if inner != "armijo":
      raise ValueError(f"inner={inner!r}: pass 'armijo' or an optax.GradientTransformation.")
  elif not (hasattr(inner, "init") and hasattr(inner, "update")):
    raise ValueError(f"inner={inner!r} is neither 'armijo' nor an optax.GradientTransformation.")
  if not isinstance(armijo, ArmijoConfig):
    raise ValueError(f"armijo must be an ArmijoConfig, got {type(armijo).__name__}.")
  if not armijo.init_step_size > 0:
    raise ValueError(f"armijo.init_step_size={armijo.init_step_size} must be > 0.")
  if not 0 < armijo.c < 1:
    raise ValueError(f"armijo.c={armijo.c} must lie in (0, 1).")
  if not 0 < armijo.backtrack < 1:
    raise ValueError(f"armijo.backtrack={armijo.backtrack} must lie in (0, 1).")
  if not armijo.expand >= 1:
    raise ValueError(f"armijo.expand={armijo.expand} must be >= 1.")
  if armijo.max_backtracks < 1 or armijo.min_step_size < 0:
    raise ValueError("armijo.max_backtracks must be >= 1 and armijo.min_step_size >= 0, got "
                     f"{armijo.max_backtracks} and {armijo.min_step_size}.")
  if target_ndim is not None and (not isinstance(target_ndim, int) or target_ndim < 0):
    raise ValueError(f"target_ndim={target_ndim!r} must be None or an integer >= 0.")
  if num_examples is not None and (not isinstance(num_examples, (int, float)) or num_examples <= 0):
    raise ValueError(f"num_examples={num_examples!r} must be None or a positive number.")


def _num_examples(outputs, target_ndim, num_examples) -> float:
  if num_examples is not None:
    return float(num_examples)
  if target_ndim is None:
    target_ndim = 1 if outputs.ndim >= 2 else 0
  if target_ndim > outputs.ndim:
    raise ValueError(f"target_ndim={target_ndim} exceeds the model outputs' rank "
                     f"{outputs.ndim} (shape {outputs.shape}).")
  return float(np.prod(outputs.shape[:outputs.ndim - target_ndim], dtype=np.int64))


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def target_step(outputs, target_grad, eta, num_examples):
  """The surrogate's unconstrained minimiser ``z_t - eta * n * G_t``: a target-space SGD step."""
  return outputs - eta * num_examples * target_grad


def _tree_sq_norm(tree):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def _axpy(alpha, direction, params):
  return jax.tree.map(lambda p, d: (p - alpha * d).astype(p.dtype), params, direction)


class ArmijoInfo(NamedTuple):
  step_size: jax.Array   # accepted step (or the last one tried, if none was)
  accepted: jax.Array
  evals: jax.Array       # trial evaluations of fun
  value: jax.Array       # fun at the start point
  grad_sq_norm: jax.Array


def armijo_search(fun: Callable, params, step_size, cfg: ArmijoConfig = ArmijoConfig()):
  """One SGD step on ``fun`` with Armijo backtracking: returns ``(new_params, ArmijoInfo)``.

  Accepts the first ``a`` in ``step_size * backtrack^k`` with
  ``fun(p - a g) <= fun(p) - c a ||g||^2``; if none is found within ``max_backtracks`` trials
  (or above ``min_step_size``) the parameters are returned unchanged.
  """
  value, grad = jax.value_and_grad(fun)(params)
  value = value.astype(jnp.float32)
  grad_sq = _tree_sq_norm(grad)

  def not_done(carry):
    alpha, accepted, n = carry
    return (~accepted) & (n < cfg.max_backtracks) & (alpha >= cfg.min_step_size)

  def try_step(carry):
    alpha, _, n = carry
    trial = fun(_axpy(alpha, grad, params)).astype(jnp.float32)
    ok = trial <= value - cfg.c * alpha * grad_sq  # False for NaN trials: they backtrack
    return jnp.where(ok, alpha, alpha * cfg.backtrack), ok, n + 1

  start = (jnp.asarray(step_size, jnp.float32), jnp.array(False), jnp.zeros([], jnp.int32))
  alpha, accepted, evals = jax.lax.while_loop(not_done, try_step, start)
  new_params = _axpy(jnp.where(accepted, alpha, 0.0), grad, params)
  return new_params, ArmijoInfo(alpha, accepted, evals, value, grad_sq)


def eta_at(eta, eta_schedule: str, step):
  """``eta_t`` at outer step ``step`` (0-based): constant, or ``eta / sqrt(step + 1)``."""
  base = eta(step) if callable(eta) else eta
  base = jnp.asarray(base, jnp.float32)
  if eta_schedule == "inv_sqrt":
    base = base / jnp.sqrt(step.astype(jnp.float32) + 1.0)
  return base


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------


def build_surrogate(params, batch, *, apply_fn: Callable, loss_fn: Callable, eta_t,
                    target_ndim: int | None = None, num_examples: float | None = None,
                    return_targets: bool = False):
  """The expensive part of an outer step: ``(L(z_t), S_t - L(z_t) as a function, G_t)``.

  Evaluates ``z_t = f_theta_t(X)`` and ``G_t = dL/dz`` once; the returned
  ``surrogate(p) = <G_t, f_p(X) - z_t> + ||f_p(X) - z_t||^2 / (2 eta_t n)`` only re-runs
  ``apply_fn``. Train-step strategies with their own inner loop (train/strategies.py) use
  this; ``return_targets`` appends ``z_t``.
  """
  z_t = jax.lax.stop_gradient(apply_fn(params, batch))
  loss_t, target_grad = jax.value_and_grad(lambda z: loss_fn(z, batch))(z_t)
  z_t = z_t.astype(jnp.float32)
  target_grad = target_grad.astype(jnp.float32)
  n = _num_examples(z_t, target_ndim, num_examples)
  prox_weight = 1.0 / (2.0 * eta_t * n)

  def surrogate(p):  # S_t(p) - L(z_t)
    d = apply_fn(p, batch).astype(jnp.float32) - z_t
    return jnp.vdot(target_grad, d) + prox_weight * jnp.sum(d * d)

  if return_targets:
    return loss_t, surrogate, target_grad, z_t
  return loss_t, surrogate, target_grad


def sso_step(params, state: SSOState, batch, *, apply_fn: Callable, loss_fn: Callable,
             eta, m: int, eta_schedule: str = "constant", inner: InnerOptimizer = "armijo",
             armijo: ArmijoConfig = ArmijoConfig(), target_ndim: int | None = None,
             num_examples: float | None = None):
  """One SSO outer step: one expensive ``dL/dz``, then ``m`` inner steps on the surrogate.

  Args:
    params: model parameters (any pytree).
    state: :class:`SSOState` from :func:`init`.
    batch: anything; passed unchanged to ``apply_fn`` and ``loss_fn``.
    apply_fn: ``(params, batch) -> outputs`` (the targets ``z``; e.g. logits). It picks its inputs
      out of ``batch`` itself, so token ids, positions and segment ids can all be used.
    loss_fn: ``(outputs, batch) -> scalar``, the mean over examples (see module docstring).
    eta: positive float or schedule ``step -> eta``; per-example target-space step size.
    m: inner steps per expensive gradient (>= 1).
    eta_schedule: "constant" or "inv_sqrt" (``eta / sqrt(t)``).
    inner: "armijo" (SGD + Armijo line search) or an optax GradientTransformation.
    armijo: line-search settings (used when ``inner == "armijo"``).
    target_ndim: trailing output axes forming one example's target (default: 1 if outputs have
      rank >= 2, else 0).
    num_examples: override ``n`` in the proximal weight ``1/(2 eta n)``.

  Returns:
    ``(params, state, metrics)``; metrics hold the loss at ``z_t`` (before the step), the
    surrogate before/after, ``eta``, ``||G_t||``, this step's ``inner_steps`` and
    ``surrogate_evals``, the running ``expensive_grad_calls`` and the last accepted line-search
    step size (0 if the last search found none, or for an optax inner optimizer).
  """
  _check_config(eta, m, eta_schedule, inner, armijo, target_ndim, num_examples)

  # 1. The one expensive target-space gradient.
  eta_t = eta_at(eta, eta_schedule, state.step)
  loss_t, surrogate, target_grad = build_surrogate(params, batch, apply_fn=apply_fn,
                                                   loss_fn=loss_fn, eta_t=eta_t,
                                                   target_ndim=target_ndim,
                                                   num_examples=num_examples)

  # 2. m cheap steps on the surrogate.
  if isinstance(inner, str):  # "armijo"
    def body(_, carry):
      p, alpha, evals, _ = carry
      p, info = armijo_search(surrogate, p, alpha, armijo)
      next_alpha = jnp.minimum(info.step_size * armijo.expand, armijo.init_step_size)
      # + 1: the value_and_grad evaluation at the start point.
      return p, next_alpha, evals + info.evals + 1, jnp.where(info.accepted, info.step_size, 0.0)

    init_alpha = jnp.asarray(armijo.init_step_size, jnp.float32)
    start = (params, init_alpha, jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))
    new_params, _, evals, last_step_size = jax.lax.fori_loop(0, m, body, start)
  else:
    def body(_, carry):
      p, opt_state = carry
      grads = jax.grad(surrogate)(p)
      updates, opt_state = inner.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state

    new_params, _ = jax.lax.fori_loop(0, m, body, (params, inner.init(params)))
    evals = jnp.asarray(m, jnp.int32)
    last_step_size = jnp.zeros([], jnp.float32)

  new_state = SSOState(step=state.step + 1,
                       expensive_grad_calls=state.expensive_grad_calls + 1,
                       inner_steps=state.inner_steps + m,
                       surrogate_evals=state.surrogate_evals + evals)
  metrics = {
      "loss": loss_t.astype(jnp.float32),
      "surrogate_start": loss_t.astype(jnp.float32),  # S_t(theta_t) = L(z_t)
      "surrogate_end": loss_t.astype(jnp.float32) + surrogate(new_params),
      "eta": eta_t,
      "target_grad_norm": jnp.sqrt(jnp.sum(target_grad * target_grad)),
      "inner_steps": jnp.asarray(m, jnp.int32),
      "surrogate_evals": evals,
      "expensive_grad_calls": new_state.expensive_grad_calls,
      "inner_step_size": last_step_size,
  }
  return new_params, new_state, metrics


def make_sso(eta, *, apply_fn: Callable | None = None, loss_fn: Callable | None = None,
             m: int = 10, eta_schedule: str = "constant", inner: InnerOptimizer = "armijo",
             armijo: ArmijoConfig | dict = ArmijoConfig(), target_ndim: int | None = None,
             num_examples: float | None = None) -> SSO:
  """Validates the settings now and returns an :class:`SSO` with ``init`` and a pure ``step``.

  ``apply_fn``/``loss_fn`` may be bound here or passed later as keywords to ``step``
  (the registry builds an SSO from a config before the model exists).
  """
  if isinstance(armijo, dict):
    unknown = set(armijo) - set(ArmijoConfig._fields)
    if unknown:
      raise ValueError(f"armijo has unknown fields {sorted(unknown)}; valid: {ArmijoConfig._fields}.")
    armijo = ArmijoConfig(**armijo)
  _check_config(eta, m, eta_schedule, inner, armijo, target_ndim, num_examples)
  bound = {k: v for k, v in (("apply_fn", apply_fn), ("loss_fn", loss_fn)) if v is not None}

  def step(params, state, batch, **fns):
    fns = {**bound, **fns}
    missing = {"apply_fn", "loss_fn"} - set(fns)
    if missing:
      raise ValueError(f"SSO step needs {sorted(missing)}: bind them in make_sso(...) or pass "
                       "them as keywords to step(...).")
    return sso_step(params, state, batch, eta=eta, m=m, eta_schedule=eta_schedule, inner=inner,
                    armijo=armijo, target_ndim=target_ndim, num_examples=num_examples, **fns)

  return SSO(init=init, step=step)
