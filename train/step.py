"""The pure train and eval steps.

``train_step(state, batch, rng) -> (state, metrics)``: gradients of the summed next-token
loss, accumulated over ``microbatches`` with ``lax.scan`` (sums, then one division by the
token count, so accumulation equals the full-batch gradient), then one optax update.
``state`` is a plain dict ``{"step", "params", "opt_state"}`` so Orbax saves and restores it
without custom types.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from models import transformer


def init_state(params, tx: optax.GradientTransformation):
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def _split_microbatches(batch, n: int):
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"global batch {x.shape[0]} is not divisible by microbatches={n}.")
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree.map(split, batch)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, microbatches: int = 1,
                    schedule=None):

  def loss_fn(params, mb):
    logits = transformer.apply(graphdef, params, mb["tokens"], mb["positions"],
                               mb["segment_ids"])
    nll, count = transformer.lm_loss(logits, mb)
    return nll, count

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch, rng):
    del rng  # the model has no dropout; kept so stochastic variants keep the signature
    params = state["params"]
    if microbatches == 1:
      (nll, count), grads = grad_fn(params, batch)
    else:
      def body(carry, mb):
        g_acc, nll_acc, cnt_acc = carry
        (nll, cnt), g = grad_fn(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), nll_acc + nll, cnt_acc + cnt), None
      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, nll, count), _ = jax.lax.scan(
          body, (zeros, 0.0, 0.0), _split_microbatches(batch, microbatches))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {"loss": nll / denom, "tokens": count, "grad_norm": optax.global_norm(grads),
               "param_norm": optax.global_norm(new_params)}
    if schedule is not None:
      metrics["lr"] = schedule(state["step"])
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    return new_state, metrics

  return train_step


def make_eval_step(graphdef, token_bytes):
  """Returns ``eval_step(params, batch) -> {nll, tokens, bytes}`` sums for loss/ppl/bpb."""
  token_bytes = jnp.asarray(token_bytes, jnp.float32)

  def eval_step(params, batch):
    logits = transformer.apply(graphdef, params, batch["tokens"], batch["positions"],
                               batch["segment_ids"])
    nll, count = transformer.lm_loss(logits, batch)
    targets, weights = transformer.next_token_targets(batch)
    nbytes = jnp.sum(token_bytes[targets] * weights)
    return {"nll": nll, "tokens": count, "bytes": nbytes}

  return eval_step


def make_sso_train_step(graphdef, tx: optax.GradientTransformation, sso, *, schedule=None):
  """SSO as a train-step strategy (Lavington et al. 2023; see optim/sso.py).

  Per batch: one expensive target-space gradient ``G_t = dL/dlogits`` at the current params,
  then ``sso.m`` steps of the optax optimizer ``tx`` on the surrogate
  ``<G_t, f(X) - z_t> + ||f(X) - z_t||^2 / (2 eta n)`` (n = predicted tokens). ``tx``'s state
  persists across batches (its schedule counts inner steps). ``state["sso"]`` counts outer steps
  and expensive gradient calls.
  """
  from optim import sso as sso_lib  # pylint: disable=g-import-not-at-top

  def apply_fn(params, batch):
    return transformer.apply(graphdef, params, batch["tokens"], batch["positions"],
                             batch["segment_ids"])

  def loss_fn(logits, batch):
    nll, count = transformer.lm_loss(logits, batch)
    return nll / jnp.maximum(count, 1.0)

  def train_step(state, batch, rng):
    del rng
    counters = state["sso"]
    eta_t = sso_lib.eta_at(sso.eta, sso.eta_schedule, counters.step)
    _, weights = transformer.next_token_targets(batch)
    loss, surrogate, target_grad = sso_lib.build_surrogate(
        state["params"], batch, apply_fn=apply_fn, loss_fn=loss_fn, eta_t=eta_t,
        num_examples=None)
    del target_grad

    def inner(_, carry):
      params, opt_state, _ = carry
      grads = jax.grad(surrogate)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, optax.global_norm(grads)

    params, opt_state, grad_norm = jax.lax.fori_loop(
        0, sso.m, inner, (state["params"], state["opt_state"], jnp.zeros([], jnp.float32)))
    counters = counters._replace(step=counters.step + 1,
                                 expensive_grad_calls=counters.expensive_grad_calls + 1,
                                 inner_steps=counters.inner_steps + sso.m)
    metrics = {"loss": loss, "tokens": jnp.sum(weights), "grad_norm": grad_norm,
               "param_norm": optax.global_norm(params), "eta": eta_t,
               "expensive_grad_calls": counters.expensive_grad_calls}
    if schedule is not None:
      metrics["lr"] = schedule(counters.inner_steps)
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
            "sso": counters}, metrics

  return train_step
