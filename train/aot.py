"""Train at scale on paper: the real sharded train step compiled for a target we do not have.

``plan(config, target)`` resolves the config's mesh over the target's compile-only devices
(:mod:`core.targets`: an H200 box or a TPU slice), compiles the train step with that chip's
compiler and reports, per device:

* params and optimizer state: the bytes of each leaf's shard under the state shardings, i.e.
  ``sum_leaf prod(shard_shape) * itemsize`` (FSDP divides each by the shard count);
* temporaries (activations kept for the backward pass, gradients, the compiler's workspace):
  ``memory_analysis().temp_size_in_bytes``, where the remat saving becomes visible;
* total = arguments + outputs + temporaries - donated buffers, against the HBM budget
  ``memory_fraction * HBM`` (default 0.9: the runtime and fragmentation take the rest);
* XLA's FLOP count of the partitioned step, and on TPU an MFU-at-roofline estimate:
  ``MFU = model FLOPs per device / (optimal_seconds * peak FLOP/s)``, where
  ``optimal_seconds`` is XLA:TPU's roofline time for the step (a lower bound on the real step
  time, so this MFU is an upper bound). Model FLOPs: ``6 N + attention`` per token
  (PaLM, arXiv 2204.02311 App. B), from :meth:`ModelConfig.flops_per_token`.

``fit_batch(config, target)`` bisects the global batch (a multiple of the data-parallel
size x microbatches) with :func:`core.fit.fit_batch_size`: every trial is a compile.

    python train/main.py --config configs/lm_7b.py --compile_only --target v5p-128
    python train/main.py --config configs/lm_1b.py --compile_only --target 8xh200 --fit_batch
"""
from __future__ import annotations

import copy
import math

import jax

from configs import targets as targets_lib
from core import fit as fit_lib
from core import sharding as sharding_lib
from core import targets as core_targets
from train import loop, tasks

DEFAULT_MEMORY_FRACTION = 0.9


def bytes_per_device(tree, shardings) -> int:
  """Bytes of one device's shard of every leaf of ``tree`` (abstract arrays) under
  ``shardings`` (a matching tree of ``NamedSharding``s); replicated leaves count fully."""
  total = 0
  for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += math.prod(sh.shard_shape(leaf.shape)) * leaf.dtype.itemsize
  return total


def target_mesh(config, target) -> jax.sharding.Mesh:
  """The config's mesh over ``target``'s compile-only devices (a clear error when the mesh
  does not divide the target's device count)."""
  devices = core_targets.compile_devices(target)
  try:
    return sharding_lib.make_mesh(config.mesh, devices)
  except ValueError as e:
    raise ValueError(f"target {target.name} has {len(devices)} devices: {e}") from None


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def plan(config, target, *, memory_fraction: float = DEFAULT_MEMORY_FRACTION,
         mesh=None) -> dict:
  """Compiles ``config``'s train step for ``target`` (a name or a
  :class:`configs.targets.Target`) and returns the per-device memory plan (module docstring).

  ``mesh``: use this mesh instead (e.g. of CPU devices; then there is no HBM to fit)."""
  if not 0 < memory_fraction <= 1:
    raise ValueError(f"memory_fraction={memory_fraction} must be in (0, 1].")
  if isinstance(target, str):
    target = targets_lib.get(target)
  if mesh is None:
    mesh = target_mesh(config, target)
  task = tasks.build(config)
  compiled, parts, seconds = loop.compile_train_step(config, mesh, task)
  mem = core_targets.memory_stats(compiled)
  state, shardings = parts["abstract_state"], parts["state_shardings"]
  gbs = int(config.train.global_batch_size)
  out = {
      "target": None if target is None else target.name,
      "platform": None if target is None else target.platform,
      "devices": mesh.size, "mesh": dict(mesh.shape), "global_batch_size": gbs,
      "microbatches": int(config.train.microbatches),
      "remat": bool(getattr(task.model_cfg, "remat", False)),
      "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"])),
      "compile_s": round(seconds, 2),
      "params_bytes": bytes_per_device(state["params"], shardings["params"]),
      "opt_state_bytes": bytes_per_device(state["opt_state"], shardings["opt_state"]),
      "temp_bytes": mem["temp_size_in_bytes"],
      **mem,
  }
  cost = _cost(compiled)
  out["xla_flops_per_device"] = float(cost["flops"]) if "flops" in cost else None
  seq_len = getattr(task, "seq_len", None)
  if seq_len and hasattr(task.model_cfg, "flops_per_token"):
    out["model_flops_per_step"] = task.model_cfg.flops_per_token(seq_len) * gbs * seq_len
  if target is not None:
    hbm = target.chip.hbm_bytes
    out.update(hbm_bytes=hbm, memory_fraction=memory_fraction,
               budget_bytes=int(memory_fraction * hbm), fits=mem["total_bytes"] <= memory_fraction * hbm)
    optimal = cost.get("optimal_seconds")
    if target.platform == "tpu" and optimal and optimal > 0 and "model_flops_per_step" in out:
      out["roofline_step_s"] = float(optimal)
      out["mfu_at_roofline"] = (out["model_flops_per_step"] / mesh.size
                                / (float(optimal) * target.chip.peak_bf16_flops))
  return out


def with_batch(config, global_batch_size: int):
  """A copy of ``config`` with another global batch size (the caller's config is kept)."""
  c = copy.deepcopy(config)
  c.train.global_batch_size = int(global_batch_size)
  return c


def fit_batch(config, target, *, memory_fraction: float = DEFAULT_MEMORY_FRACTION,
              max_per_device: int = 64, budget_bytes: float | None = None, say=None) -> dict:
  """The largest global batch whose train step fits ``memory_fraction * HBM`` per device
  (or ``budget_bytes``), by bisection over compiles; batches are multiples of data-parallel
  size x microbatches, up to ``max_per_device`` examples per device."""
  if isinstance(target, str):
    target = targets_lib.get(target)
  mesh = target_mesh(config, target)
  unit = sharding_lib.data_parallel_size(mesh) * int(config.train.microbatches)
  budget = budget_bytes if budget_bytes is not None else memory_fraction * target.chip.hbm_bytes

  def build(b):
    compiled, _, _ = loop.compile_train_step(with_batch(config, b), mesh)
    return compiled

  def trial(b, used):
    if say:
      say(f"  batch {b}: " + ("compiler out of memory" if used is None
                              else f"{used / 1e9:.2f} GB per device"))

  res = fit_lib.fit_batch_size(build, unit, unit * max_per_device, budget, multiple=unit,
                               on_trial=trial)
  res.update(target=target.name, budget_bytes=int(budget), unit=unit,
             per_device_batch=res["batch"] // sharding_lib.data_parallel_size(mesh))
  return res


def format_plan(out: dict) -> str:
  """The plan in GB per device, one line each."""
  gb = lambda b: f"{b / 1e9:.2f} GB"
  lines = [f"{out['num_params']:,} params, mesh {out['mesh']} on {out['devices']} "
           f"{out['target'] or 'local'} devices, global batch {out['global_batch_size']} "
           f"(remat {'on' if out['remat'] else 'off'}); compiled in {out['compile_s']:.1f} s",
           f"per device: params {gb(out['params_bytes'])}, optimizer state "
           f"{gb(out['opt_state_bytes'])}, temporaries (activations, grads) "
           f"{gb(out['temp_bytes'])}, total {gb(out['total_bytes'])}"]
  if "fits" in out:
    lines.append(f"{'fits' if out['fits'] else 'DOES NOT FIT'}: budget {gb(out['budget_bytes'])}"
                 f" = {out['memory_fraction']:g} x {gb(out['hbm_bytes'])} HBM")
  if out.get("xla_flops_per_device"):
    lines.append(f"XLA FLOPs per device per step: {out['xla_flops_per_device']:.3e}")
  if "mfu_at_roofline" in out:
    lines.append(f"MFU at XLA's roofline ({out['roofline_step_s'] * 1e3:.1f} ms/step): "
                 f"{100 * out['mfu_at_roofline']:.1f}% (upper bound)")
  return "\n".join(lines)
