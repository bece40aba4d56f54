"""The generic train step (the "gradient" strategy) and the eval step, for any task.

``train_step(state, batch, rng) -> (state, metrics)``: gradients of the task's summed loss,
accumulated over ``microbatches`` with ``lax.scan`` (sums, then one division by the example
count, so accumulation equals the full-batch gradient), then one optax update. ``state`` is a
plain dict ``{"step", "params", "opt_state"}`` (plus a strategy's own entries) so Orbax saves
and restores it without custom types.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def init_state(params, tx: optax.GradientTransformation):
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def split_microbatches(batch, n: int):
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"global batch {x.shape[0]} is not divisible by microbatches={n}.")
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree.map(split, batch)


def make_train_step(task, graphdef, tx: optax.GradientTransformation, *, microbatches: int = 1,
                    schedule=None):

  def loss_fn(params, mb, rng):
    return task.loss(task.forward(graphdef, params, mb, rng), mb)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch, rng):
    params = state["params"]
    if microbatches == 1:
      (total, count), grads = grad_fn(params, batch, rng)
    else:
      def body(carry, xs):
        g_acc, loss_acc, cnt_acc = carry
        mb, i = xs
        (loss, cnt), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, g_acc, g), loss_acc + loss, cnt_acc + cnt), None
      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, total, count), _ = jax.lax.scan(
          body, (zeros, 0.0, 0.0), (split_microbatches(batch, microbatches),
                                    jnp.arange(microbatches)))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {"loss": total / denom, "examples": count, "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(new_params)}
    if schedule is not None:
      metrics["lr"] = schedule(state["step"])
    return {**state, "step": state["step"] + 1, "params": new_params,
            "opt_state": opt_state}, metrics

  return train_step


def make_eval_step(task, graphdef):
  """``eval_step(params, batch) -> {name: sum}`` (the task's eval sums of one batch)."""

  def eval_step(params, batch):
    return task.eval_sums(graphdef, params, batch)

  return eval_step
