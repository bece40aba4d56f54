"""Optimizer + learning-rate schedule from the ``config.optim`` section."""
from __future__ import annotations

import optax


def make_schedule(optim_cfg, total_steps: int):
  lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
  if lr <= 0 or lr != lr:
    raise ValueError(f"optim.lr must be a positive number, got {optim_cfg.lr}.")
  name = optim_cfg.get("schedule", "cosine")
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(total_steps, warmup + 1),
                                              end_value=lr * float(optim_cfg.get("final_lr_frac", 0.1)))
  if name == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                 optax.constant_schedule(lr)], [max(warmup, 1)])
  raise ValueError(f"unknown optim.schedule {name!r}; available: cosine, constant.")


def make_optimizer(optim_cfg, total_steps: int):
  """``(tx, schedule)``: gradient clipping, then the named optimizer."""
  schedule = make_schedule(optim_cfg, total_steps)
  name = optim_cfg.name
  if name == "adamw":
    tx = optax.adamw(schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
                     eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay))
  elif name == "sgd":
    tx = optax.sgd(schedule)
  else:
    raise ValueError(f"unknown optimizer {name!r}; available: adamw, sgd.")
  clip = optim_cfg.get("grad_clip", None)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx, schedule
