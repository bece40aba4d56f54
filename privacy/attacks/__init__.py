"""Gradient-inversion attacks by name: ``attack(shared_grads, model, meta, key) -> reconstruction``.

* ``shared_grads``: what the client sent (:func:`privacy.client.shared_gradient`).
* ``model``: what the server knows of the victim, e.g. a :class:`privacy.client.Victim`.
* ``meta``: everything else the attacker is given or assumes (batch size, input shape,
  labels or ``None`` to infer them, a generative prior, step counts...).
* ``key``: the attack's randomness (initialisation, restarts).

Attacks register themselves with :func:`register` when their module is imported; image and
text attacks live in their own modules and are imported by whoever runs them (``privacy.main``).
"""
from __future__ import annotations

from typing import Any, Callable

import jax

Attack = Callable[[Any, Any, dict, jax.Array], Any]
_REGISTRY: dict[str, Attack] = {}


def register(name: str):
  """Decorator: ``@register("dlg") def dlg(shared_grads, model, meta, key): ...``."""
  def wrap(fn: Attack) -> Attack:
    if name in _REGISTRY and _REGISTRY[name] is not fn:
      raise ValueError(f"attack {name!r} is registered twice.")
    _REGISTRY[name] = fn
    return fn
  return wrap


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str) -> Attack:
  """The attack called ``name``; ValueError listing the registered names otherwise."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown attack {name!r}; registered attacks: "
                     f"{', '.join(names()) or 'none (import privacy.attacks.image / .text)'}.")
  return _REGISTRY[name]
