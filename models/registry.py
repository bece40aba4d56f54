"""Models by name, as big_vision does: ``config.model.name`` -> the model's module.

A model module (``models/<name>.py``) provides ``Config`` (a dataclass from
:mod:`models.configs`), ``init(cfg, seed) -> (graphdef, params)``,
``abstract_params(cfg)``, ``logical_axes(cfg)`` and ``apply(graphdef, params, ...)``; the task
that trains it knows ``apply``'s inputs. A new model adds a file and one line below.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

MODELS = {
    "transformer": "models.transformer",  # Llama-style decoder (language models)
    "convnet": "models.convnet",          # small image classifier
    "lora": "models.lora",                # the transformer with a frozen base + LoRA / IA3
    "encdec": "models.encdec",            # Conformer encoder + Transformer decoder (ASR)
}
DEFAULT = "transformer"  # exports written before models had names are transformers


def get(name: str) -> ModuleType:
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}.")
  return importlib.import_module(MODELS[name])


def from_dict(d) -> tuple[ModuleType, Any]:
  """``(module, cfg)`` from a config section or an export's ``model`` dict (``name`` + fields)."""
  d = dict(d)
  module = get(str(d.pop("name", DEFAULT)))
  return module, module.Config.from_dict(d)


def to_dict(module: ModuleType, cfg) -> dict:
  """The inverse of :func:`from_dict`: ``{"name": ..., **fields}``."""
  name = next(k for k, v in MODELS.items() if v == module.__name__)
  return {"name": name, **cfg.to_dict()}
