"""NNX modules used functionally: build once, split into ``(graphdef, params)``, run pure
functions of ``params`` (``nnx.merge`` inside), as every model module does.

``params`` is the module's pure dict (``nnx.to_pure_dict``), so Orbax, optax and path-based
masks see ordinary keys like ``layers/0/attn/q_proj/kernel``.
"""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx


def split(model: nnx.Module):
  """``(graphdef, params)`` with ``params`` a nested dict of arrays."""
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def init(build: Callable[[nnx.Rngs], nnx.Module], seed: int = 0):
  """``build(rngs)`` the module and split it: ``(graphdef, params)``."""
  return split(build(nnx.Rngs(params=seed)))


def abstract_params(build: Callable[[nnx.Rngs], nnx.Module]):
  """``(graphdef, params as ShapeDtypeStructs)`` without allocating anything."""
  return split(nnx.eval_shape(lambda: build(nnx.Rngs(params=0))))


def logical_axes(build: Callable[[nnx.Rngs], nnx.Module]):
  """Pytree matching ``params`` whose leaves are the tuples of logical axis names (None for a
  parameter without ``logical_axes`` metadata: replicated)."""
  model = nnx.eval_shape(lambda: build(nnx.Rngs(params=0)))
  _, state = nnx.split(model)
  out = jax.tree.map(lambda v: v.get_metadata().get("logical_axes"), state,
                     is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(out) if isinstance(out, nnx.State) else out


def merge(graphdef, params) -> nnx.Module:
  """The module holding ``params`` (call it, or walk its submodules)."""
  return nnx.merge(graphdef, nnx.State(params))
