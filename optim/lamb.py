"""LAMB: layer-wise adaptive moments (You et al. 2019, arXiv:1904.00962), as optax transforms.

Update of parameter block (pytree leaf) ``x`` at step ``t`` with gradient ``g`` (Algorithm 2):

    m_t = b1 m_{t-1} + (1 - b1) g            v_t = b2 v_{t-1} + (1 - b2) g^2
    m^ = m_t / (1 - b1^t)                     v^ = v_t / (1 - b2^t)     (if bias_correction)
    r  = m^ / (sqrt(v^ + eps_root) + eps)
    u  = r + lambda x                                                    (weight decay, *inside*)
    x <- x - lr_t * ratio(x, u) * u,          ratio = ||x|| / ||u||      (Frobenius norms)

``ratio`` is 1 where ``||x|| == 0`` or ``||u|| == 0`` (a freshly zero-initialised leaf, or a
leaf whose update vanished), as in optax and TF-Addons. With ``trust_clip=(lo, hi)`` a non-degenerate
ratio is clipped to ``[lo, hi]`` (DeepSpeed's min/max coefficient). The paper instead writes
``phi(||x||) / ||u||`` with ``phi(z) = clip(z, lo, hi)`` acting on the parameter norm; clipping the
ratio is what large-batch practitioners use and what this option does.

Exclusions follow TF-Addons, not optax: ``exclude_from_weight_decay`` and
``exclude_from_layer_adaptation`` are lists of regular expressions searched in the '/'-joined path of
each leaf (``layers/0/attn/q_proj/kernel``; an nnx ``State`` adds a trailing ``/value``, which the
default patterns tolerate). Layer adaptation exclusions default to the weight-decay ones, so biases
and norm scales get a plain Adam step: no decay and no trust ratio. (``optax.lamb``'s ``mask`` only
drops the decay and still trust-ratio-scales them.)

With ``exclude_from_weight_decay=()``, ``exclude_from_layer_adaptation=()``, ``trust_clip=None`` and
``bias_correction=True`` this is exactly ``optax.lamb`` (same transforms, same order).

Norms are taken with ``jnp`` on whole leaves; inside ``jax.jit`` a leaf sharded over a mesh
(fsdp/tensor) is a global ``jax.Array``, so the norm is the global per-layer norm (XLA inserts
the all-reduce). ``tests/test_lamb.py`` checks this on 8 devices.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

# Biases, norm scales, and anything inside a module whose name contains "norm".
DEFAULT_EXCLUDE: tuple[str, ...] = (r"(^|/)bias(/|$)", r"(^|/)scale(/|$)", r"norm")


def leaf_path(path) -> str:
  """'/'-joined key path of a pytree leaf, e.g. ``layers/0/attn/q_proj/kernel``."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _compile_patterns(patterns: Sequence[str] | None, name: str) -> list[re.Pattern]:
  if patterns is None:
    return []
  if isinstance(patterns, str):
    raise ValueError(f"{name} must be a sequence of regex strings, got the single string "
                     f"{patterns!r}; wrap it in a tuple: ({patterns!r},).")
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"{name} contains an invalid regular expression {p!r}: {e}.") from e
  return compiled


def path_mask(patterns: Sequence[str] | None) -> Callable:
  """Returns ``params -> pytree of bools``: True where NO pattern matches the leaf path.

  That is optax's mask convention (True = transform this leaf); excluded leaves are False.
  """
  compiled = _compile_patterns(patterns, "patterns")

  def mask_fn(tree):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(p.search(leaf_path(path)) for p in compiled), tree)

  return mask_fn


def scale_by_adam_without_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, eps_root: float = 0.0,
    mu_dtype=None) -> optax.GradientTransformation:
  """``m / (sqrt(v + eps_root) + eps)`` with raw (uncorrected) moments; optax lacks this variant.

  State is ``optax.ScaleByAdamState`` so checkpoints look like those of ``optax.scale_by_adam``.
  """
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=optax.tree.zeros_like(params, dtype=mu_dtype),
                                  nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu, nu)
    count = optax.safe_increment(state.count)
    return updates, optax.ScaleByAdamState(count=count, mu=optax.tree.cast(mu, mu_dtype), nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_clipped_trust_ratio(min_ratio: float, max_ratio: float
                                 ) -> optax.GradientTransformation:
  """``u * clip(||x|| / ||u||, min_ratio, max_ratio)`` per leaf; ratio 1 if either norm is 0.

  ``optax.scale_by_trust_ratio`` has no upper clip (its ``min_norm`` clamps the norms, not the
  ratio), hence this transform.
  """

  def scale_leaf(update, param):
    param_norm = jnp.linalg.norm(param.ravel().astype(jnp.float32))
    update_norm = jnp.linalg.norm(update.ravel().astype(jnp.float32))
    degenerate = (param_norm == 0.0) | (update_norm == 0.0)
    ratio = jnp.clip(param_norm / jnp.where(degenerate, 1.0, update_norm), min_ratio, max_ratio)
    ratio = jnp.where(degenerate, 1.0, ratio)
    return update * ratio.astype(update.dtype)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_clipped_trust_ratio needs params: call tx.update(g, s, params).")
    return jax.tree.map(scale_leaf, updates, params), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _check_hparams(learning_rate, b1, b2, eps, eps_root, weight_decay, trust_clip):
  if not callable(learning_rate):
    lr = float(learning_rate)
    if math.isnan(lr) or lr < 0:
      raise ValueError(f"learning_rate={learning_rate} must be a non-negative number "
                       "(or an optax schedule).")
  for name, b in (("b1", b1), ("b2", b2)):
    if not 0.0 <= float(b) < 1.0:
      raise ValueError(f"{name}={b} must lie in [0, 1); the paper and optax use b1=0.9, b2=0.999.")
  for name, v in (("eps", eps), ("eps_root", eps_root)):
    if math.isnan(float(v)) or float(v) < 0:
      raise ValueError(f"{name}={v} must be >= 0 (default eps=1e-6, eps_root=0).")
  if not callable(weight_decay) and (math.isnan(float(weight_decay)) or float(weight_decay) < 0):
    raise ValueError(f"weight_decay={weight_decay} must be >= 0 (0 disables decay).")
  if trust_clip is not None:
    if len(trust_clip) != 2:
      raise ValueError(f"trust_clip={trust_clip!r} must be None or a pair (min_ratio, max_ratio).")
    lo, hi = (float(v) for v in trust_clip)
    if math.isnan(lo) or math.isnan(hi) or lo < 0:
      raise ValueError(f"trust_clip lower bound {trust_clip[0]} must be a number >= 0.")
    if lo > hi:
      raise ValueError(f"trust_clip={trust_clip!r}: lower bound exceeds upper bound; "
                       "pass (min_ratio, max_ratio), e.g. (0.0, 10.0).")


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    bias_correction: bool = True,
    trust_clip: tuple[float, float] | None = None,
    exclude_from_weight_decay: Sequence[str] | None = DEFAULT_EXCLUDE,
    exclude_from_layer_adaptation: Sequence[str] | None = None,
    mu_dtype=None,
) -> optax.GradientTransformation:
  """LAMB optimizer (see the module docstring for the update equation).

  Args:
    learning_rate: scalar or optax schedule of the step count.
    b1, b2: decay rates of the first and second moments, in [0, 1).
    eps, eps_root: added to ``sqrt(v^)`` and to ``v^`` under the root.
    weight_decay: decoupled decay ``lambda``, added to the Adam step before the trust ratio.
    bias_correction: divide the moments by ``1 - b^t`` (paper, TF-Addons, optax); False gives the
      later GluonNLP variant.
    trust_clip: None (no clipping, as optax and TF-Addons) or ``(min_ratio, max_ratio)``.
    exclude_from_weight_decay: regexes over leaf paths that get no decay (default: biases, norm
      scales). None or () decays every leaf.
    exclude_from_layer_adaptation: regexes over leaf paths that get no trust ratio (a plain Adam
      step). None means "same as exclude_from_weight_decay" (TF-Addons); pass () to adapt all.
    mu_dtype: storage dtype of the first moment (e.g. ``jnp.bfloat16``); None keeps the param dtype.

  Returns:
    An ``optax.GradientTransformation``; ``update`` requires ``params``.
  """
  _check_hparams(learning_rate, b1, b2, eps, eps_root, weight_decay, trust_clip)
  _compile_patterns(exclude_from_weight_decay, "exclude_from_weight_decay")
  _compile_patterns(exclude_from_layer_adaptation, "exclude_from_layer_adaptation")
  if exclude_from_layer_adaptation is None:
    exclude_from_layer_adaptation = exclude_from_weight_decay

  if bias_correction:
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)
  else:
    adam = scale_by_adam_without_bias_correction(b1, b2, eps, eps_root, mu_dtype)

  decay_mask = path_mask(exclude_from_weight_decay) if exclude_from_weight_decay else None
  decay = optax.add_decayed_weights(weight_decay, mask=decay_mask)

  if trust_clip is None:
    trust = optax.scale_by_trust_ratio()
  else:
    trust = scale_by_clipped_trust_ratio(*trust_clip)
  if exclude_from_layer_adaptation:
    trust = optax.masked(trust, path_mask(exclude_from_layer_adaptation))

  return optax.chain(adam, decay, trust, optax.scale_by_learning_rate(learning_rate))
