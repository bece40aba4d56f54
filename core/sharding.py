"""Meshes, logical axis rules and shardings: what the model, the train loop and the decoder share.

The mesh has three named axes, ``(data, fsdp, tensor)``; each size comes from the config's
``mesh`` section and ``-1`` means "all remaining devices". Modules annotate every parameter
(``nnx.Param(..., logical_axes=(...))``) and their main activations (:func:`constrain`) with
*logical* axis names; rules map them to mesh axes. The same model code then runs on one CPU,
8 fake devices, a GPU or a TPU pod. Activation constraints apply only inside
``with axis_rules(rules, mesh):`` (a scoped context, like flax's ``logical_axis_rules``);
outside it :func:`constrain` is a no-op.

A logical axis whose size does not divide the mesh axes it maps to is replicated instead
(e.g. 4 KV heads on a tensor axis of 8), so small models still run on big meshes. Batches are
sharded along ``data`` x ``fsdp`` (FSDP is data parallel for activations).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Params: FSDP shards the embed dim, tensor parallelism the heads
# and MLP dims (Megatron). Activations: batch over data+fsdp, heads/mlp over tensor.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("effijax_axis_rules", default=None)


# --------------------------------------------------------------------------------------------
# Meshes.


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Sizes of ``(data, fsdp, tensor)`` from ``mesh_cfg`` (``-1`` fills the rest)."""
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  named = dict(zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {named}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh axis sizes must be positive or -1 (the rest), got {named}.")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(f"mesh {named}: {num_devices} devices are not divisible by the fixed "
                       f"axes' product {fixed}; change --config.mesh.* so that it divides.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"but {num_devices} are available; set one axis to -1 to fill the rest.")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def rules_from_config(mesh_cfg) -> tuple:
  rules = mesh_cfg.get("rules", None)
  return tuple(tuple(r) for r in (rules if rules is not None else DEFAULT_RULES))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh) -> int:
  """How many ways a batch is split: the product of the ``data`` and ``fsdp`` axes."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def to_global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global ``jax.Array`` batch sharded along (data, fsdp)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Logical axes.


@contextlib.contextmanager
def axis_rules(rules: Rules, mesh: jax.sharding.Mesh):
  """Activates ``rules`` on ``mesh`` for :func:`constrain` inside the block."""
  token = _ACTIVE.set((dict(rules), mesh))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active():
  """``(rules dict, mesh)`` of the innermost :func:`axis_rules` block, or None outside one
  (the kernels' callers use it to run the Pallas kernels per shard: kernels_pallas.sharded)."""
  return _ACTIVE.get()


def _mesh_axes_size(mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


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


def sharding_like(param_sharding: NamedSharding, tree):
  """Shardings for ``tree`` (arrays or a small pytree of them, e.g. an optimizer moment stored
  as FP8 values plus per-group scales) that belongs to a parameter sharded by ``param_sharding``.

  Each array takes the parameter's ``PartitionSpec`` (shorter specs padded with None), with
  every dim that does not divide its mesh axes replicated (per-group metadata has a shorter
  grouped dim); an array of lower rank than the spec is replicated.
  """
  mesh = param_sharding.mesh
  spec = tuple(param_sharding.spec)

  def one(a):
    if len(a.shape) < len(spec):
      return NamedSharding(mesh, P())
    padded = spec + (None,) * (len(a.shape) - len(spec))
    return NamedSharding(mesh, P(*(
        axes if axes is not None and dim % _mesh_axes_size(mesh, axes) == 0 else None
        for axes, dim in zip(padded, a.shape))))

  return jax.tree.map(one, tree)


def tree_shardings(logical_tree, tree, mesh, rules):
  """NamedShardings for ``tree`` from a matching tree of logical axis tuples.

  A leaf of ``tree`` may itself be a small pytree (a ``QuantizedWeight``): each of its arrays
  of the logical axes' rank shards like the parameter; the others (scales of another rank,
  act-order permutations) are replicated. A dim that does not divide is replicated.
  """
  rules = dict(rules)

  def for_leaf(axes, x):
    def one(a):
      spec = (logical_to_spec(axes, a.shape, rules, mesh)
              if axes is not None and len(a.shape) == len(axes) else P())
      return NamedSharding(mesh, spec)
    return jax.tree.map(one, x)

  return jax.tree.map(for_leaf, logical_tree, tree,
                      is_leaf=lambda x: isinstance(x, tuple) or x is None)
