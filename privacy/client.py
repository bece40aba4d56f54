"""The federated client of a gradient-inversion audit: what it shares for a private batch.

``shared_gradient(loss_fn, params, batch, defense=..., key=...)`` is the gradient of
``loss_fn(params, batch)`` (a scalar, the batch mean) with respect to ``params`` (or the
``layers`` subset: a LoRA client shares only its adapters), after a defense from
:mod:`privacy.defenses`. DP-SGD gets per-example gradients (``jax.vmap`` over the batch);
representation pruning gets the representation from ``features_fn(params, batch)`` when given.

:class:`Victim` bundles the model an attacker differentiates through: same loss, same layers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from privacy import defenses

LossFn = Callable[[Any, dict], jax.Array]


def batch_size_of(batch: dict) -> int:
  """The common leading dimension of the batch's arrays; ValueError if they disagree."""
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in batch.items()}
  if not sizes or None in sizes.values() or len(set(sizes.values())) != 1:
    raise ValueError(f"a batch is a dict of arrays sharing a leading batch axis, got leading "
                     f"sizes {sizes}.")
  return next(iter(sizes.values()))


def sample_batch(data: dict, batch_size: int, *, key: jax.Array) -> dict:
  """``batch_size`` distinct rows of ``data`` (a dict of arrays), chosen with ``key``."""
  available = batch_size_of(data)
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be a positive int.")
  if batch_size > available:
    raise ValueError(f"batch_size={batch_size} is larger than the {available} examples "
                     f"available; use batch_size <= {available} or pass more data.")
  idx = np.asarray(jax.random.choice(key, available, (batch_size,), replace=False))
  return {k: np.asarray(v)[idx] for k, v in data.items()}


def select(params, layers: Sequence[str] | None) -> list[str]:
  """Leaf paths of ``params`` under the ``layers`` prefixes (all leaves when None)."""
  paths = defenses.leaf_paths(params)
  if layers is None:
    return paths
  if isinstance(layers, str):
    layers = [layers]
  chosen = []
  for prefix in layers:
    hits = [p for p in paths if p == prefix or p.startswith(prefix.rstrip("/") + "/")]
    if not hits:
      raise ValueError(f"requested layer {prefix!r} is not a parameter of the model; it has: "
                       f"{', '.join(paths)}.")
    chosen += [p for p in hits if p not in chosen]
  return chosen


def _subset(params, paths):
  out = {}
  for p in paths:
    out = _set_like(out, params, p, defenses.get_leaf(params, p))
  return out


def _set_like(tree, like, path, value):
  """``set_leaf`` that takes the keys' types from ``like`` (int keys of NNX lists stay ints)."""
  head, *rest = path.split("/")
  k = defenses.resolve_key(like, head)
  out = dict(tree)
  out[k] = value if not rest else _set_like(tree.get(k, {}), like[k], "/".join(rest), value)
  return out


def _merge(params, sub, paths):
  for p in paths:
    params = defenses.set_leaf(params, p, defenses.get_leaf(sub, p))
  return params


def gradient(loss_fn: LossFn, params, batch: dict, paths: Sequence[str]):
  """``d loss_fn(params, batch) / d params[paths]``, as a nested dict of those leaves only.
  Differentiable with respect to ``batch`` (what gradient-matching attacks need)."""
  return jax.grad(lambda sub: loss_fn(_merge(params, sub, paths), batch))(_subset(params, paths))


def per_example_gradient(loss_fn: LossFn, params, batch: dict, paths: Sequence[str]):
  """Per-example gradients: every leaf gets a leading batch axis (for DP-SGD)."""
  one = lambda ex: gradient(loss_fn, params, jax.tree.map(lambda a: a[None], ex), paths)
  return jax.vmap(one)(batch)


def check_has_gradient(grads, paths: Sequence[str]):
  """ValueError naming the requested leaves whose gradient is identically zero."""
  dead = [p for p in paths if not np.any(np.asarray(defenses.get_leaf(grads, p)))]
  if dead:
    raise ValueError(f"no gradient reaches the requested layer(s) {dead}: the model does not "
                     f"use them for this batch, or they are frozen (stop_gradient). Request "
                     f"layers the loss depends on.")


def shared_gradient(loss_fn: LossFn, params, batch: dict, *, defense: str | None = None,
                    key: jax.Array, layers: Sequence[str] | None = None,
                    features_fn: Callable[[Any, dict], jax.Array] | None = None, **settings):
  """The gradient a client sends for its private ``batch``, after ``defense``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (the batch mean, as in training).
    params: the model's parameters (nested dict).
    batch: dict of arrays with a common leading batch axis.
    defense: a name from :data:`privacy.defenses.NAMES`, or None.
    key: randomness of the defense (noise, DP-SGD).
    layers: parameter path prefixes the client trains and shares (None: all).
    features_fn: ``features_fn(params, batch) -> [B, in]``, the representation read by the
      ``prune`` defense's layer (optional; see :mod:`privacy.defenses`).
    **settings: the defense's settings (e.g. ``std=0.01``).
  """
  settings = defenses.settings_for(defense, **settings)  # unknown names fail before any work
  batch_size_of(batch)
  paths = select(params, layers)
  clean = gradient(loss_fn, params, batch, paths)
  check_has_gradient(clean, paths)
  if defense in defenses.PER_EXAMPLE:
    return defenses.apply(per_example_gradient(loss_fn, params, batch, paths), defense,
                          key=key, **settings)
  if defense == "prune" and features_fn is not None and settings["features"] is None:
    settings["features"] = features_fn(params, batch)
  return defenses.apply(clean, defense, key=key, **settings)


@dataclasses.dataclass(frozen=True)
class Victim:
  """The model under audit as the attacker sees it (an honest-but-curious server knows the
  weights and the loss): ``gradient(batch)`` is the undefended shared gradient, differentiable
  with respect to ``batch["images"]``.

  ``features_fn(params, batch)``: the representation (input of the last layer), optional.
  """
  loss_fn: LossFn
  params: Any
  layers: tuple[str, ...] | None = None
  features_fn: Callable[[Any, dict], jax.Array] | None = None

  @property
  def paths(self) -> list[str]:
    return select(self.params, self.layers)

  def gradient(self, batch: dict):
    return gradient(self.loss_fn, self.params, batch, self.paths)

  def share(self, batch: dict, *, defense: str | None = None, key: jax.Array, **settings):
    return shared_gradient(self.loss_fn, self.params, batch, defense=defense, key=key,
                           layers=self.layers, features_fn=self.features_fn, **settings)


def flat(grads) -> jax.Array:
  """All leaves of a gradient tree as one vector (``jax.tree.leaves`` order: sorted keys)."""
  return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])
