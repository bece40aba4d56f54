"""Logical axis names -> mesh axes.

Modules annotate every parameter (``nnx.Param(..., logical_axes=(...))``) and the main
activations (:func:`constrain`) with *logical* axis names; the config maps them to mesh axes
(``data``, ``fsdp``, ``tensor``). The same model code then runs on one CPU, 8 fake devices, a
GPU or a TPU pod. The mapping is active only inside ``with axis_rules(rules, mesh):`` (a
scoped context, like flax's ``logical_axis_rules``); outside it, :func:`constrain` is a no-op.

A logical axis whose size does not divide the mesh axes it maps to is replicated instead
(e.g. 4 KV heads on a tensor axis of 8), so small models still run on big meshes.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("effijax_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(rules: Rules, mesh: jax.sharding.Mesh):
  token = _ACTIVE.set((dict(rules), mesh))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def _mesh_axes_size(mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size


def logical_to_spec(logical_axes, shape, rules: dict, mesh) -> P:
  """PartitionSpec for an array of ``shape`` whose dims carry ``logical_axes``."""
  if logical_axes is None:
    return P()
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {logical_axes} do not match array rank {len(shape)}.")
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    axes = rules.get(name) if name is not None else None
    if axes is not None:
      flat = (axes,) if isinstance(axes, str) else tuple(axes)
      # A mesh axis may shard only one dim; size-1 mesh axes are dropped (no-op).
      flat = tuple(a for a in flat if a not in used and mesh.shape[a] > 1)
      if flat and dim % _mesh_axes_size(mesh, flat) == 0:
        used.update(flat)
        spec.append(flat[0] if len(flat) == 1 else flat)
        continue
    spec.append(None)
  return P(*spec)


def constrain(x, logical_axes):
  """``with_sharding_constraint`` by logical names, when rules are active."""
  active = _ACTIVE.get()
  if active is None:
    return x
  rules, mesh = active
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_to_spec(logical_axes, x.shape, rules, mesh)))
