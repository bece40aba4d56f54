"""A small registry of optimizers and learning-rate schedules, addressed by name from configs.

    tx = get_optimizer("lamb", schedule, weight_decay=0.01)
    tx = optimizer_from_config(config.optim, total_steps=config.train.steps)

Factories take ``(learning_rate_or_schedule, **hparams)``. Most return an
``optax.GradientTransformation`` (``"sgld"`` too: a Langevin sampler, see
:mod:`optim.sgld`); ``"sso"`` returns an :class:`optim.sso.SSO` (a train-step
strategy with ``init``/``step``, not an optax transform; the train loop dispatches on the type).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

import optax

from optim import coat as coat_lib
from optim import lamb as lamb_lib
from optim import sgld as sgld_lib
from optim import sso as sso_lib

_FACTORIES: dict[str, Callable[..., Any]] = {}
# Names whose "learning rate" is not a per-step schedule (SSO's eta has its own eta_schedule).
_NO_SCHEDULE: set[str] = set()

# Config fields that are generic to the ``optim`` section: forwarded only to factories that
# take them (SGD has no b2), so one config section can switch optimizers by name.
COMMON_FIELDS = ("b1", "b2", "eps", "weight_decay")
# Config fields consumed by the schedule, never forwarded to the factory.
SCHEDULE_FIELDS = ("name", "lr", "warmup_steps", "schedule", "power", "end_lr_ratio")


def register(name: str, *, takes_schedule: bool = True):
  """Decorator: ``@register("lamb") def make(learning_rate, **hparams): ...``.

  ``takes_schedule=False``: :func:`optimizer_from_config` passes ``lr`` as a plain number and
  rejects warmup/decay settings for this optimizer.
  """

  def wrap(factory):
    if name in _FACTORIES:
      raise ValueError(f"optimizer {name!r} is already registered; pick another name.")
    _FACTORIES[name] = factory
    if not takes_schedule:
      _NO_SCHEDULE.add(name)
    return factory

  return wrap


def available() -> list[str]:
  return sorted(_FACTORIES)


def _factory(name: str):
  if name not in _FACTORIES:
    raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(available())}.")
  return _FACTORIES[name]


def _accepted_kwargs(factory) -> tuple[set[str], bool]:
  params = list(inspect.signature(factory).parameters.values())[1:]  # skip the learning rate
  var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
  return {p.name for p in params if p.kind is not p.VAR_KEYWORD}, var_kw


def get_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, **hparams):
  """Builds optimizer ``name``; unknown names or hyperparameters raise a ValueError listing the
  valid ones."""
  factory = _factory(name)
  accepted, var_kw = _accepted_kwargs(factory)
  unknown = set(hparams) - accepted
  if unknown and not var_kw:
    raise ValueError(f"optimizer {name!r} does not take {sorted(unknown)}; "
                     f"it accepts: {', '.join(sorted(accepted))}.")
  if not callable(learning_rate):
    if math.isnan(float(learning_rate)) or float(learning_rate) < 0:  # factories check more
      raise ValueError(f"learning_rate={learning_rate} for optimizer {name!r} must be >= 0.")
  return factory(learning_rate, **hparams)


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------

SCHEDULES = ("constant", "cosine", "poly")


def schedule_from_config(name: str, lr: float, warmup_steps: int, total_steps: int, *,
                         power: float = 1.0, end_lr_ratio: float = 0.0) -> optax.Schedule:
  """Learning rate per step: linear warmup ``0 -> lr`` over ``warmup_steps``, then

  * ``"cosine"``: cosine decay to ``end_lr_ratio * lr`` at ``total_steps``;
  * ``"poly"``: ``lr * (1 - s/S)^power`` down to ``end_lr_ratio * lr`` (s steps after warmup,
    S = total_steps - warmup_steps): the BERT/LAMB paper recipe, power 1 there;
  * ``"constant"``: ``lr`` after warmup.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; available: {', '.join(SCHEDULES)}.")
  if math.isnan(float(lr)) or lr < 0:
    raise ValueError(f"lr={lr} must be >= 0.")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps={warmup_steps} must be >= 0.")
  if name != "constant" and total_steps <= warmup_steps:
    raise ValueError(f"total_steps={total_steps} must exceed warmup_steps={warmup_steps} for "
                     f"the {name!r} schedule (it decays after warmup).")
  if not 0.0 <= end_lr_ratio <= 1.0:
    raise ValueError(f"end_lr_ratio={end_lr_ratio} must lie in [0, 1].")
  if power <= 0:
    raise ValueError(f"power={power} must be > 0.")
  end = lr * end_lr_ratio
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, end_value=end)
  if name == "poly":
    decay = optax.polynomial_schedule(lr, end, power, total_steps - warmup_steps)
  else:
    decay = optax.constant_schedule(lr)
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def optimizer_from_config(cfg: Mapping[str, Any], total_steps: int):
  """Builds the optimizer of a config's ``optim`` section.

  Fields: ``name``, ``lr``, ``warmup_steps`` (default 0), ``schedule`` ("cosine" default,
  "poly", "constant"), ``power`` and ``end_lr_ratio`` (schedule), the common ``b1, b2, eps,
  weight_decay`` (passed to factories that take them) and any optimizer-specific field (must be
  accepted by the factory, else a ValueError names it).
  """
  cfg = dict(cfg.items())
  for required in ("name", "lr"):
    if required not in cfg:
      raise ValueError(f"optim config lacks {required!r}; it has: {', '.join(sorted(cfg))}.")
  if cfg["name"] in _NO_SCHEDULE:
    if cfg.get("warmup_steps", 0) or cfg.get("schedule", "constant") != "constant":
      raise ValueError(f"optimizer {cfg['name']!r} takes a constant lr (its own schedule is an "
                       "optimizer field); set warmup_steps=0 and schedule='constant'.")
    schedule = cfg["lr"]
  else:
    schedule = schedule_from_config(cfg.get("schedule", "cosine"), cfg["lr"],
                                    cfg.get("warmup_steps", 0), total_steps,
                                    power=cfg.get("power", 1.0),
                                    end_lr_ratio=cfg.get("end_lr_ratio", 0.0))
  accepted, var_kw = _accepted_kwargs(_factory(cfg["name"]))
  hparams = {}
  for key, value in cfg.items():
    if key in SCHEDULE_FIELDS or (key in COMMON_FIELDS and key not in accepted and not var_kw):
      continue
    hparams[key] = value
  return get_optimizer(cfg["name"], schedule, **hparams)


# ------------------------------------------------------------------------------------------------
# Built-in optimizers
# ------------------------------------------------------------------------------------------------


@register("adamw")
def _adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
           exclude_from_weight_decay=(), mu_dtype=None):
  mask = lamb_lib.path_mask(exclude_from_weight_decay) if exclude_from_weight_decay else None
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask,
                     mu_dtype=mu_dtype)


@register("sgd")
def _sgd(learning_rate, momentum=0.0, nesterov=False, weight_decay=0.0):
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


register("lamb")(lamb_lib.lamb)


@register("coat_adamw")
def _coat_adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, group_size=128,
                m_format="e4m3", v_format="e4m3", expand=True, min_size=4096,
                exclude_from_weight_decay=()):
  """AdamW with FP8 moments (:mod:`optim.coat`); ``exclude_from_weight_decay``: regexes over
  leaf paths, as for ``adamw``."""
  mask = lamb_lib.path_mask(exclude_from_weight_decay) if exclude_from_weight_decay else None
  return coat_lib.coat_adamw(learning_rate, b1, b2, eps, weight_decay, group_size=group_size,
                             m_format=m_format, v_format=v_format, expand=expand,
                             min_size=min_size, mask=mask)


# A sampler, not a minimiser: needs num_data=N; the lr (or schedule) is the Langevin step h.
@register("sgld")
def _sgld(learning_rate, num_data, temperature=1.0, preconditioner=None, seed=0, prior_std=None):
  """SGLD / pSGLD (:mod:`optim.sgld`); ``prior_std``: a Gaussian prior ``N(0, prior_std^2 I)``,
  whose ``-log p(theta) / N`` gradient joins the per-datum potential as weight decay
  ``1 / (N prior_std^2)``. None: a flat prior."""
  tx = sgld_lib.sgld(learning_rate, num_data=num_data, temperature=temperature,
                     preconditioner=preconditioner, seed=seed)
  if prior_std is None:
    return tx
  if not prior_std > 0:
    raise ValueError(f"prior_std={prior_std} must be > 0 (None: a flat prior).")
  return optax.chain(optax.add_decayed_weights(1.0 / (num_data * prior_std**2)), tx)

# SSO's "learning rate" is its per-example target-space step eta; returns an optim.sso.SSO.
register("sso", takes_schedule=False)(sso_lib.make_sso)
