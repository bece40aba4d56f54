"""Defenses a federated client can apply to the gradient it shares, by name.

``apply(grads, defense, key=..., **settings)`` returns the defended gradient pytree. The
settings and defaults are those of GIFD's defense experiments (Fang et al., ICCV 2023,
``rec_mult.py``):

* ``"none"`` (or ``None``): the gradient as is.
* ``"noise"``: ``g + N(0, std^2)`` per entry, ``std=0.01``.
* ``"clip"``: global-norm clipping, ``g * min(1, max_norm / ||g||_2)``, ``max_norm=4``.
* ``"topk"``: gradient compression (Lin et al. 2018): per leaf, keep the ``keep`` fraction of
  entries with the largest ``|g|`` (``keep=0.2``, i.e. 80% pruned), zero the rest.
* ``"prune"``: representation pruning (Soteria, Sun et al., CVPR 2021): in the layer that reads
  the representation ``r`` (``layer``, a kernel ``[in, out]``, default ``"out/kernel"``), zero
  the input rows of the ``fraction`` (``0.1``) features with the smallest ``|r|``. Since
  ``dL/dW = r^T delta``, row ``i`` carries ``sum_b r_bi delta_b``. Pass ``features`` (``[B, in]``,
  the client does this when given a ``features_fn``); without it rows are ranked by their
  gradient norm, which at batch 1 is ``|r_i| * ||delta||``: the same order.
* ``"dpsgd"``: DP-SGD (Abadi et al. 2016) through
  ``optax.contrib.differentially_private_aggregate``: each example's gradient clipped to
  ``l2_norm_clip`` (1.0), summed, Gaussian noise of std ``l2_norm_clip * noise_multiplier``
  (``noise_multiplier=1.0``) added, divided by ``B``.
  Needs *per-example* gradients (leading batch axis on every leaf): the client computes them.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "noise": {"std": 0.01},
    "clip": {"max_norm": 4.0},
    "topk": {"keep": 0.2},
    "prune": {"fraction": 0.1, "layer": "out/kernel", "features": None},
    "dpsgd": {"l2_norm_clip": 1.0, "noise_multiplier": 1.0},
}
NAMES = tuple(DEFAULTS)
# Defenses that need per-example gradients (a leading batch axis on every leaf).
PER_EXAMPLE = ("dpsgd",)


def settings_for(defense: str | None, **settings) -> dict[str, Any]:
  """The full settings of ``defense``: its defaults updated with ``settings``.

  Raises ValueError for an unknown defense or a setting it does not take."""
  name = "none" if defense is None else defense
  if name not in DEFAULTS:
    raise ValueError(f"unknown defense {defense!r}; valid names: {', '.join(NAMES)} (or None).")
  unknown = sorted(set(settings) - set(DEFAULTS[name]))
  if unknown:
    raise ValueError(f"defense {name!r} takes settings {sorted(DEFAULTS[name]) or 'none'}, "
                     f"got unknown {unknown}.")
  return {**DEFAULTS[name], **settings}


def resolve_key(node, part: str):
  """The dict key spelled ``part`` (NNX lists have int keys: ``convs/0/kernel``), or None."""
  if not isinstance(node, dict):
    return None
  for k in node:
    if str(k) == part:
      return k
  return None


def get_leaf(tree, path: str):
  """The leaf of a nested dict at ``"a/b/c"``; ValueError listing the leaves if absent."""
  node = tree
  for part in path.split("/"):
    k = resolve_key(node, part)
    if k is None:
      raise ValueError(f"no parameter {path!r} in the gradient; it has: "
                       f"{', '.join(leaf_paths(tree))}.")
    node = node[k]
  return node


def set_leaf(tree, path: str, value):
  """A copy of nested dict ``tree`` with the leaf at ``"a/b/c"`` replaced (keys keep their
  types; a missing key is added as spelled)."""
  head, *rest = path.split("/")
  k = resolve_key(tree, head)
  k = head if k is None else k
  out = dict(tree)
  out[k] = value if not rest else set_leaf(tree.get(k, {}), "/".join(rest), value)
  return out


def leaf_paths(tree, prefix: str = "") -> list[str]:
  """``"a/b/c"`` names of a nested dict's leaves, in iteration order."""
  if isinstance(tree, dict):
    return [p for k, v in tree.items() for p in leaf_paths(v, f"{prefix}{k}/")]
  return [prefix.rstrip("/")]


def _noise(grads, key, std):
  leaves, treedef = jax.tree.flatten(grads)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [g + std * jax.random.normal(k, g.shape, g.dtype)
                                      for g, k in zip(leaves, keys)])


def _clip(grads, max_norm):
  if max_norm <= 0:
    raise ValueError(f"clip needs max_norm > 0, got {max_norm}.")
  norm = optax.tree.norm(grads)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
  return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def keep_count(size: int, keep: float) -> int:
  """How many of ``size`` entries top-k keeps: ``ceil(keep * size)``, at least 1."""
  return max(1, min(size, math.ceil(keep * size - 1e-9)))


def _topk_leaf(g, keep):
  flat = g.reshape(-1)
  k = keep_count(flat.size, keep)
  _, idx = jax.lax.top_k(jnp.abs(flat), k)  # exactly k entries kept, ties broken by index
  return jnp.zeros_like(flat).at[idx].set(flat[idx]).reshape(g.shape)


def _topk(grads, keep):
  if not 0 < keep <= 1:
    raise ValueError(f"topk needs 0 < keep <= 1 (the fraction of entries kept), got {keep}.")
  return jax.tree.map(lambda g: _topk_leaf(g, keep), grads)


def _prune(grads, fraction, layer, features):
  if not 0 <= fraction < 1:
    raise ValueError(f"prune needs 0 <= fraction < 1 (the fraction of features pruned), "
                     f"got {fraction}.")
  w = get_leaf(grads, layer)
  if w.ndim != 2:
    raise ValueError(f"prune's layer {layer!r} must be a kernel [in, out], got shape {w.shape}.")
  if features is None:
    score = jnp.linalg.norm(w, axis=1)
  else:
    features = jnp.asarray(features)
    if features.ndim != 2 or features.shape[1] != w.shape[0]:
      raise ValueError(f"prune's features must be [batch, {w.shape[0]}] (the input of "
                       f"{layer!r}), got shape {features.shape}.")
    score = jnp.abs(features).sum(axis=0)
  n_pruned = int(round(fraction * w.shape[0]))
  if n_pruned == 0:
    return grads
  _, idx = jax.lax.top_k(-score, n_pruned)
  return set_leaf(grads, layer, w.at[idx].set(0.0))


def _dpsgd(per_example_grads, key, l2_norm_clip, noise_multiplier):
  leaves = jax.tree.leaves(per_example_grads)
  sizes = {x.shape[0] if x.ndim else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError("dpsgd needs per-example gradients (one leading batch axis on every "
                     "leaf): use privacy.client.shared_gradient(..., defense='dpsgd').")
  tx = optax.contrib.differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=key)
  out, _ = tx.update(per_example_grads, tx.init(None))
  return out


def apply(grads, defense: str | None, *, key: jax.Array, **settings):
  """The defended gradient (a pytree like ``grads``; see the module docstring for names)."""
  s = settings_for(defense, **settings)
  name = "none" if defense is None else defense
  if name == "none":
    return grads
  if name == "noise":
    return _noise(grads, key, s["std"])
  if name == "clip":
    return _clip(grads, s["max_norm"])
  if name == "topk":
    return _topk(grads, s["keep"])
  if name == "prune":
    return _prune(grads, s["fraction"], s["layer"], s["features"])
  return _dpsgd(grads, key, s["l2_norm_clip"], s["noise_multiplier"])
