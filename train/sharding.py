"""Device mesh and shardings from the config.

The mesh has three named axes, ``(data, fsdp, tensor)``; each size comes from
``config.mesh`` and ``-1`` means "all remaining devices". Parameters are sharded by mapping
their logical axis names through ``config.mesh.rules`` (see :mod:`models.partitioning`);
batches are sharded along ``data`` x ``fsdp`` (FSDP is data parallel for activations).
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from models import partitioning

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Params: FSDP shards the embed dim, tensor parallelism the heads
# and MLP dims (Megatron). Activations: batch over data+fsdp, heads/mlp over tensor.
DEFAULT_RULES = (
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


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                       f"divisible by the fixed axes' product {fixed}.")
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


def rules_from_config(mesh_cfg):
  rules = mesh_cfg.get("rules", None)
  return tuple(tuple(r) for r in (rules if rules is not None else DEFAULT_RULES))


def param_shardings(logical_tree, abstract_params, mesh, rules):
  """NamedShardings for a params pytree from its logical axis names."""
  rules = dict(rules)
  return jax.tree.map(
      lambda axes, x: NamedSharding(mesh, partitioning.logical_to_spec(axes, x.shape, rules,
                                                                        mesh)),
      logical_tree, abstract_params, is_leaf=lambda x: isinstance(x, tuple) or x is None)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global ``jax.Array`` batch sharded along (data, fsdp)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
