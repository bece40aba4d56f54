"""Training strategies: how one step turns a batch into new parameters, for any task.

* ``"gradient"``: the task loss's gradient (accumulated over microbatches), one optax update
  (:func:`train.step.make_train_step`).
* ``"sso"``: SSO (Lavington et al. 2023, arXiv 2302.02607; math in :mod:`optim.sso`): per
  batch one *expensive* target-space gradient ``G_t = dL/dz`` of the task loss at the task's
  outputs ``z_t``, then ``m`` steps of the optax optimizer on the surrogate
  ``<G_t, f(X) - z_t> + ||f(X) - z_t||^2 / (2 eta n)`` (n = examples: every output position).

A strategy is ``Strategy(extra_state, make_step)``: ``extra_state(params)`` adds its own
entries to the train state (saved in checkpoints); ``make_step(task, graphdef, tx, schedule,
settings, microbatches)`` returns ``train_step(state, batch, rng) -> (state, metrics)``.
SGLD sampling, RL and FP8 training join as entries here or as tasks, never as loop branches.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim import sso as sso_lib
from train import step as step_lib


class Strategy(NamedTuple):
  extra_state: Callable[[Any], dict]
  make_step: Callable[..., Callable]


def _gradient_step(task, graphdef, tx, schedule, settings, microbatches):
  del settings
  return step_lib.make_train_step(task, graphdef, tx, schedule=schedule,
                                  microbatches=microbatches)


def _sso_step(task, graphdef, tx, schedule, settings, microbatches):
  """SSO's outer step; ``tx``'s state persists across batches (its schedule counts inner
  steps); ``state["sso"]`` counts outer steps and expensive gradient calls."""
  if microbatches != 1:
    raise ValueError("optim.name='sso' takes whole batches (its inner steps re-run the "
                     "model on the batch); set --config.train.microbatches=1.")

  def apply_fn(params, batch):
    return task.forward(graphdef, params, batch)

  def loss_fn(outputs, batch):
    total, count = task.loss(outputs, batch)
    return total / jnp.maximum(count, 1.0)

  def train_step(state, batch, rng):
    del rng
    counters = state["sso"]
    eta_t = sso_lib.eta_at(settings.eta, settings.eta_schedule, counters.step)
    loss, surrogate, _, z_t = sso_lib.build_surrogate(
        state["params"], batch, apply_fn=apply_fn, loss_fn=loss_fn, eta_t=eta_t,
        num_examples=None, return_targets=True)

    def inner(_, carry):
      params, opt_state, _ = carry
      grads = jax.grad(surrogate)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)

    params, opt_state, grad_norm = jax.lax.fori_loop(
        0, settings.m, inner, (state["params"], state["opt_state"], jnp.zeros([], jnp.float32)))
    counters = counters._replace(step=counters.step + 1,
                                 expensive_grad_calls=counters.expensive_grad_calls + 1,
                                 inner_steps=counters.inner_steps + settings.m)
    metrics = {"loss": loss, "examples": task.loss(z_t, batch)[1], "grad_norm": grad_norm,
               "param_norm": optax.tree.norm(params), "eta": eta_t,
               "expensive_grad_calls": counters.expensive_grad_calls}
    if schedule is not None:
      metrics["lr"] = schedule(counters.inner_steps)
    return {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state,
            "sso": counters}, metrics

  return train_step


STRATEGIES = {
    "gradient": Strategy(extra_state=lambda params: {}, make_step=_gradient_step),
    "sso": Strategy(extra_state=lambda params: {"sso": sso_lib.init(params)},
                    make_step=_sso_step),
}


def get(name: str) -> Strategy:
  if name not in STRATEGIES:
    raise ValueError(f"unknown training strategy {name!r}; available: "
                     f"{', '.join(sorted(STRATEGIES))}.")
  return STRATEGIES[name]
