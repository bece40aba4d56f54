"""The optimizer of a run, from the ``config.optim`` section.

Generic fields (``name, lr, schedule, warmup_steps, end_lr_ratio, power, b1, b2, eps,
weight_decay``) go to :func:`optim.registry.optimizer_from_config`, together with the
sub-section named after the optimizer (``config.optim.lamb`` for LAMB), so one config switches
optimizers by ``--config.optim.name``. ``grad_clip`` (global norm) is applied first.

SSO is a train-step strategy, not an optax transform: ``--config.optim.name=sso`` takes its
inner optimizer from ``config.optim.sso.inner`` (AdamW or LAMB, with the generic fields and
the schedule counted in inner steps) and ``m``/``eta``/``eta_schedule`` from ``config.optim.sso``.

``trainable`` (a regex, empty: everything) freezes every parameter whose path
(``layers/0/attn/q_proj/kernel``) it does not match: their updates are zero, and clipping and
weight decay see only the trainable ones. PEFT (:mod:`models.lora`) is ``'^peft/'``.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import optax

from optim import registry

GENERIC = ("name", "lr", "schedule", "warmup_steps", "end_lr_ratio", "power", "b1", "b2", "eps",
           "weight_decay")


@dataclasses.dataclass(frozen=True)
class SSOSettings:
  m: int
  eta: float
  eta_schedule: str


def _registry_cfg(optim_cfg, name: str) -> dict:
  cfg = {k: optim_cfg[k] for k in GENERIC if k in optim_cfg}
  cfg["name"] = name
  specific = optim_cfg.get(name, None)
  if specific is not None and hasattr(specific, "items"):
    cfg.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in specific.items()
                if v is not None})
  return cfg


def _check_schedule(cfg: dict, total_steps: int, steps: int) -> None:
  """Warmup must end before the run does; the error names the keys to change."""
  if total_steps < 1:
    raise ValueError(f"train.steps={total_steps} must be >= 1.")
  warmup = int(cfg.get("warmup_steps", 0))
  if warmup < 0:
    raise ValueError(f"optim.warmup_steps={warmup} must be >= 0.")
  if cfg.get("schedule", "cosine") != "constant" and warmup >= steps:
    per = steps // total_steps  # SSO counts inner steps
    hint = max(0, steps // 10)
    raise ValueError(
        f"optim.warmup_steps={warmup} must be smaller than the {steps} optimizer steps of this "
        f"run (train.steps={total_steps}{f' x optim.sso.m={per}' if per > 1 else ''}); for "
        f"a short run pass --config.optim.warmup_steps={hint} (10%), or "
        "--config.optim.schedule=constant.")


def make_optimizer(optim_cfg, total_steps: int):
  """``(tx, schedule, strategy name, strategy settings)``, validated before anything compiles.

  The strategy is ``"sso"`` for ``optim.name="sso"`` and ``"gradient"`` otherwise
  (:mod:`train.strategies`).
  """
  name = optim_cfg.name
  if name not in registry.available():
    raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(registry.available())}.")
  sso = None
  steps = total_steps
  if name == "sso":
    sso_cfg = optim_cfg.sso
    # Validates m/eta/eta_schedule exactly as the SSO module does.
    registry.get_optimizer("sso", float(sso_cfg.eta), m=int(sso_cfg.m),
                           eta_schedule=str(sso_cfg.eta_schedule))
    sso = SSOSettings(int(sso_cfg.m), float(sso_cfg.eta), str(sso_cfg.eta_schedule))
    name = str(sso_cfg.inner)
    if name == "sso" or name not in registry.available():
      raise ValueError(f"optim.sso.inner={name!r} must be an optax optimizer: one of "
                       f"{[n for n in registry.available() if n != 'sso']}.")
    steps = total_steps * sso.m  # the inner optimizer's schedule counts inner steps
  cfg = _registry_cfg(optim_cfg, name)
  if name == "sgld" and cfg.get("num_data") is None:
    raise ValueError("optim.name='sgld' needs --config.optim.sgld.num_data=N, the number of "
                     "training examples the mean gradient stands for (tokens, for a language "
                     "model): the Langevin noise is matched to it.")
  _check_schedule(cfg, total_steps, steps)
  tx = registry.optimizer_from_config(cfg, total_steps=steps)
  schedule = registry.schedule_from_config(
      cfg.get("schedule", "cosine"), float(cfg["lr"]), int(cfg.get("warmup_steps", 0)), steps,
      power=float(cfg.get("power", 1.0)), end_lr_ratio=float(cfg.get("end_lr_ratio", 0.0)))
  clip = optim_cfg.get("grad_clip", None)
  if clip:
    if float(clip) < 0:
      raise ValueError(f"optim.grad_clip={clip} must be >= 0 (0 disables clipping).")
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  tx = only_trainable(tx, str(optim_cfg.get("trainable", "") or ""))
  return tx, schedule, ("sso" if sso is not None else "gradient"), sso


def param_path(path) -> str:
  """``layers/0/attn/q_proj/kernel`` from a ``jax.tree_util`` key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_labels(params, pattern: str):
  """``"train"`` where ``re.search(pattern, path)`` matches, else ``"frozen"``; a pattern
  that matches nothing is an error (a typo would silently freeze the whole model)."""
  regex = re.compile(pattern)
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "train" if regex.search(param_path(p)) else "frozen", params)
  leaves = jax.tree.leaves(labels)
  if leaves and "train" not in leaves:  # (optax probes with a leafless placeholder: no error)
    paths = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)][:6]
    raise ValueError(f"optim.trainable={pattern!r} matches no parameter path (paths look like "
                     f"{paths}); fix the regex, or leave it empty to train everything.")
  return labels


def only_trainable(tx, pattern: str):
  """``tx`` on the parameters matching ``pattern``, zero updates elsewhere (empty: ``tx``)."""
  if not pattern:
    return tx
  try:
    re.compile(pattern)
  except re.error as e:
    raise ValueError(f"optim.trainable={pattern!r} is not a valid regex: {e}.") from None
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: trainable_labels(params, pattern))
