"""Parameter-efficient fine-tuning of :mod:`models.transformer`: LoRA and IA3.

The model name ``lora`` in :mod:`models.registry`. ``params = {"base": <the transformer's
params>, "peft": <the small trainable part>}``; :func:`apply` folds the PEFT part into the
base weights (:func:`effective_params`) and runs the unchanged transformer, so every feature
of the decoder (KV cache, packing, sharding) works as is and autodiff gives the exact PEFT
gradients. Folding costs one ``[in, r] x [r, out]`` product per target, small next to a step.

* **LoRA** (Hu et al. 2021, arXiv:2106.09685): ``W' = W + (alpha / r) A B`` with
  ``A: [in, r]`` Gaussian (std ``in**-0.5``) and ``B: [r, out] = 0``, so at init the model
  *is* the base model. For the token embedding ``E: [vocab, d]`` the zero factor is the
  row-indexed one (``A: [vocab, r] = 0``, ``B`` Gaussian), PEFT's convention: then only the rows
  of ``A`` for tokens in the batch get a gradient, as a trainable embedding's rows do.
* **IA3** (Liu et al. 2022, arXiv:2205.05638): learned vectors rescale keys, values and the MLP's
  hidden units, ``k = l_k * (x W_k)``, ``v = l_v * (x W_v)``, ``down(l_ff * h)``; folded as a
  column scaling of ``W_k, W_v`` and a row scaling of ``W_down``. Init ``l = 1``.

Training only the PEFT part: ``--config.optim.trainable='^peft/'`` (:func:`TRAINABLE`), the
optimizer's path mask (:mod:`train.optimizer`); the loop needs no branch.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from models import transformer
from models.configs import PeftConfig
from models.transformer import lm_eval_sums, lm_loss, next_token_targets  # noqa: F401

Config = PeftConfig
TRAINABLE = "^peft/"  # the optim.trainable regex that trains the PEFT part only
# IA3 scales a projection's outputs (columns of W) except down_proj, whose inputs it scales.
_IA3_SCALES_INPUT = ("down_proj",)


def _base_cfg(cfg: PeftConfig) -> transformer.Config:
  fields = {k: v for k, v in cfg.to_dict().items() if k in transformer.Config.__dataclass_fields__}
  return transformer.Config(**fields)


def _targets(base_params, cfg: PeftConfig):
  """``[(path, kernel name, target name)]``: every base weight the PEFT part attaches to."""
  found = []
  if "embed" in cfg.peft_targets:
    found.append((("embed",), "embedding", "embed"))
  if "lm_head" in cfg.peft_targets:
    found.append((("lm_head",), "kernel", "lm_head"))
  for i, layer in base_params["layers"].items():
    for block in ("attn", "mlp"):
      for name in layer[block]:
        if name in cfg.peft_targets:
          found.append((("layers", i, block, name), "kernel", name))
  return found


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  """A copy of nested dict ``tree`` with ``tree[path] = value`` (only the path is copied)."""
  if not path:
    return value
  return {**tree, path[0]: _set(tree.get(path[0], {}), path[1:], value)}


def init_peft(base_params, cfg: PeftConfig, seed: int = 0):
  """The PEFT part for ``base_params`` (a transformer's params): it leaves the model unchanged."""
  peft = {}
  key = jax.random.key(seed)
  for n, (path, leaf, target) in enumerate(_targets(base_params, cfg)):
    w = _get(base_params, path)[leaf]
    rows, cols = w.shape
    if cfg.peft == "lora":
      r = int(cfg.lora_rank)
      if target == "embed":  # zero on the row-indexed side (see the module docstring)
        a = jnp.zeros((rows, r), w.dtype)
        b = (jax.random.normal(jax.random.fold_in(key, n), (r, cols)) * cols**-0.5).astype(w.dtype)
      else:
        a = (jax.random.normal(jax.random.fold_in(key, n), (rows, r)) * rows**-0.5).astype(w.dtype)
        b = jnp.zeros((r, cols), w.dtype)
      part = {"a": a, "b": b}
    else:
      part = {"scale": jnp.ones((rows if target in _IA3_SCALES_INPUT else cols,), w.dtype)}
    peft = _set(peft, path, part)
  return peft


def effective_params(params, cfg: PeftConfig):
  """The transformer params with the PEFT part folded in: ``W + (alpha/r) A B`` or ``l * W``."""
  base, peft = params["base"], params["peft"]
  out = base
  for path, leaf, target in _targets(base, cfg):
    w = _get(base, path)[leaf]
    part = _get(peft, path)
    if cfg.peft == "lora":
      delta = (part["a"].astype(jnp.float32) @ part["b"].astype(jnp.float32))
      w = (w.astype(jnp.float32) + (cfg.lora_alpha / cfg.lora_rank) * delta).astype(w.dtype)
    elif target in _IA3_SCALES_INPUT:
      w = w * part["scale"][:, None]
    else:
      w = w * part["scale"][None, :]
    out = _set(out, path, {**_get(out, path), leaf: w})
  return out


def init(cfg: PeftConfig, seed: int = 0):
  """``(graphdef, {"base", "peft"})``: a fresh base (seed) and a PEFT part that leaves it as is."""
  graphdef, base = transformer.init(_base_cfg(cfg), seed)
  return Graph(graphdef, cfg), from_base(base, cfg, seed)


def from_base(base_params, cfg: PeftConfig, seed: int = 0):
  """Wraps pretrained transformer params (e.g. an export's) for PEFT fine-tuning."""
  return {"base": base_params, "peft": init_peft(base_params, cfg, seed)}


def abstract_params(cfg: PeftConfig):
  graphdef, _ = transformer.abstract_params(_base_cfg(cfg))
  return Graph(graphdef, cfg), jax.eval_shape(lambda: init(cfg)[1])


def logical_axes(cfg: PeftConfig):
  """The base's axes; a LoRA ``A`` shares its weight's input axis, ``B`` its output axis (the
  rank axis is replicated); an IA3 vector the axis it scales."""
  base_axes = transformer.logical_axes(_base_cfg(cfg))
  _, shapes = abstract_params(cfg)
  peft_axes = {}
  for path, leaf, target in _targets(shapes["base"], cfg):
    in_ax, out_ax = _get(base_axes, path)[leaf]
    if cfg.peft == "lora":
      part = {"a": (in_ax, None), "b": (None, out_ax)}
    else:
      part = {"scale": (in_ax,) if target in _IA3_SCALES_INPUT else (out_ax,)}
    peft_axes = _set(peft_axes, path, part)
  return {"base": base_axes, "peft": peft_axes}


def num_trainable(cfg: PeftConfig) -> int:
  """Trainable parameters: LoRA ``r (in + out)`` per target, IA3 one vector per target."""
  _, shapes = abstract_params(cfg)
  return sum(x.size for x in jax.tree.leaves(shapes["peft"]))


class Graph(NamedTuple):
  """The graphdef :func:`init` returns: the decoder's graph and the PEFT settings that
  :func:`apply` needs to fold the weights (hashable, static under ``jit`` like any graphdef)."""
  decoder: Any
  cfg: PeftConfig


def apply(graph: Graph, params, tokens, positions=None, segment_ids=None, cache=None):
  """The transformer's forward pass on the folded weights (:func:`effective_params`)."""
  return transformer.apply(graph.decoder, effective_params(params, graph.cfg), tokens,
                           positions, segment_ids, cache)


forward = transformer.forward
init_cache = transformer.init_cache
