"""Import Llama-family checkpoints in Hugging Face format (local files only) into our params.

  python -m models.hf_import --hf /path/to/llama_dir --out workdirs/llama/export

Reads ``config.json`` and ``model.safetensors`` (or the shards listed in
``model.safetensors.index.json``) and returns ``(ModelConfig, params)`` for
:mod:`models.transformer`; ``--out`` writes an effijax export that ``quant/main.py`` and
``infer/`` read. Mapping (torch ``nn.Linear`` stores ``[out, in]``, our kernels are Flax
``[in, out]``, so every projection is transposed)::

  model.embed_tokens.weight [V, d]                 -> embed.embedding [V, d]
  model.layers.i.self_attn.{q,k,v,o}_proj.weight   -> layers[i].attn.{q,k,v,o}_proj.kernel (.T)
  model.layers.i.mlp.{gate,up,down}_proj.weight    -> layers[i].mlp.{...}_proj.kernel (.T)
  model.layers.i.input_layernorm.weight            -> layers[i].attn_norm.scale
  model.layers.i.post_attention_layernorm.weight   -> layers[i].mlp_norm.scale
  model.norm.weight                                -> final_norm.scale
  lm_head.weight [V, d] (absent when tied)         -> lm_head.kernel [d, V] (.T)

RoPE: HF's Llama (``modeling_llama.rotate_half``) rotates the pairs ``(x[j], x[j + D/2])``
with ``inv_freq = theta^(-2j/D)``, the same "first half / second half" layout as
:func:`models.layers.rope` (HF's conversion script already permuted Meta's interleaved q/k
weights into it), so q/k need no permutation; the test checks this against
``transformers.LlamaForCausalLM`` numerically. Unsupported features (RoPE scaling, biases,
activations other than SiLU) raise instead of silently producing a different model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from core import checkpoint, cli
from models import registry
from models import transformer as T

ARCHITECTURES = ("LlamaForCausalLM",)
MODEL_TYPES = ("llama",)
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_LINEARS = {"attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
            "mlp": ("gate_proj", "up_proj", "down_proj")}
_HF_SCOPE = {"attn": "self_attn", "mlp": "mlp"}


def read_config(path: str | os.PathLike) -> dict:
  path = Path(path)
  if not path.is_dir():
    raise ValueError(f"{path} is not a directory; pass a local Hugging Face model directory "
                     "(config.json + model.safetensors).")
  cfg_file = path / "config.json"
  if not cfg_file.exists():
    raise ValueError(f"{path} has no config.json; is it a Hugging Face model directory?")
  return json.loads(cfg_file.read_text())


def config_from_hf(hf: dict, *, param_dtype: str = "float32", dtype: str | None = None):
  """Our ``ModelConfig`` from a HF Llama ``config.json`` dict (raises on anything else)."""
  archs = hf.get("architectures") or []
  if hf.get("model_type") not in MODEL_TYPES or (archs and not set(archs) & set(ARCHITECTURES)):
    raise ValueError(f"unsupported architecture {archs or hf.get('model_type')!r} "
                     f"(model_type={hf.get('model_type')!r}); only Llama-family checkpoints "
                     f"({', '.join(ARCHITECTURES)}, model_type 'llama') can be imported.")
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
  if rope_type not in (None, "default"):
    raise ValueError(f"RoPE scaling {rope_type!r} is not supported by models.layers.rope.")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ValueError(f"config.json sets {flag}=true; our Llama blocks have no biases.")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act={hf.get('hidden_act')!r}; only SiLU (SwiGLU) is supported.")
  n_heads = int(hf["num_attention_heads"])
  head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
  theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
  compute = dtype or ("bfloat16" if param_dtype == "bfloat16" else "float32")
  return T.ModelConfig(
      vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
      n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
      n_kv_heads=int(hf.get("num_key_value_heads") or n_heads), head_dim=int(head_dim),
      mlp_dim=int(hf["intermediate_size"]), rope_theta=float(theta),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=compute,
      param_dtype=param_dtype)


def weight_files(path: str | os.PathLike) -> list[Path]:
  """The safetensors files of a model directory (one file, or the shards of the index)."""
  path = Path(path)
  if (path / INDEX).exists():
    index = json.loads((path / INDEX).read_text())
    names = sorted(set(index.get("weight_map", {}).values()))
    missing = [n for n in names if not (path / n).exists()]
    if not names or missing:
      raise ValueError(f"{path / INDEX} lists shards {missing or '(none)'} that are not in "
                       f"{path}; copy every shard next to the index.")
    return [path / n for n in names]
  if (path / WEIGHTS).exists():
    return [path / WEIGHTS]
  raise ValueError(f"{path} has neither {WEIGHTS} nor {INDEX}; only safetensors checkpoints "
                   "are supported (convert .bin files with save_pretrained(safe_serialization="
                   "True)).")


def read_tensors(files) -> dict[str, np.ndarray]:
  """All tensors of the files as float32 numpy arrays (bf16/f16 upcast exactly)."""
  out = {}
  for f in files:
    with safe_open(str(f), framework="flax") as sf:  # flax: bf16 tensors load too
      for name in sf.keys():
        out[name] = np.asarray(sf.get_tensor(name), np.float32)
  return out


def params_from_hf(cfg, tensors: dict[str, np.ndarray], *, param_dtype: str = "float32"):
  """Our pure-dict params from HF Llama tensors (names as in the module docstring)."""
  _, abstract = T.abstract_params(cfg)
  used = set()

  def take(name, shape, transpose=False):
    if name not in tensors:
      raise ValueError(f"tensor {name!r} is missing from the checkpoint (have e.g. "
                       f"{sorted(tensors)[:3]}); is it a complete Llama checkpoint?")
    x = tensors[name].T if transpose else tensors[name]
    if tuple(x.shape) != tuple(shape):
      raise ValueError(f"tensor {name!r} has shape {tensors[name].shape}, expected "
                       f"{tuple(reversed(shape)) if transpose else tuple(shape)} for "
                       "config.json's sizes.")
    used.add(name)
    return jnp.asarray(x, param_dtype)

  params = {"embed": {"embedding": take("model.embed_tokens.weight",
                                        abstract["embed"]["embedding"].shape)},
            "final_norm": {"scale": take("model.norm.weight", abstract["final_norm"]["scale"].shape)},
            "layers": {}}
  for i in range(cfg.n_layers):
    a = abstract["layers"][i]
    pre = f"model.layers.{i}."
    layer = {"attn_norm": {"scale": take(pre + "input_layernorm.weight",
                                         a["attn_norm"]["scale"].shape)},
             "mlp_norm": {"scale": take(pre + "post_attention_layernorm.weight",
                                        a["mlp_norm"]["scale"].shape)}}
    for scope, names in _LINEARS.items():
      layer[scope] = {n: {"kernel": take(f"{pre}{_HF_SCOPE[scope]}.{n}.weight",
                                         a[scope][n]["kernel"].shape, transpose=True)}
                      for n in names}
    params["layers"][i] = layer
  if not cfg.tie_embeddings:
    name = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    params["lm_head"] = {"kernel": take(name, abstract["lm_head"]["kernel"].shape,
                                        transpose=True)}
  unused = sorted(n for n in set(tensors) - used if not n.endswith("rotary_emb.inv_freq"))
  if unused:
    raise ValueError(f"the checkpoint has tensors this Llama config does not use: "
                     f"{unused[:4]}{' ...' if len(unused) > 4 else ''}.")
  return params


def load_hf_llama(path: str | os.PathLike, *, param_dtype: str = "float32",
                  dtype: str | None = None):
  """``(ModelConfig, params)`` of a local HF Llama directory."""
  cfg = config_from_hf(read_config(path), param_dtype=param_dtype, dtype=dtype)
  return cfg, params_from_hf(cfg, read_tensors(weight_files(path)), param_dtype=param_dtype)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Import a local HF Llama checkpoint as an export.")
  p.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors)")
  p.add_argument("--out", required=True,
                 help="effijax export directory to write: new, empty, or (with --overwrite) "
                 "an export to replace")
  p.add_argument("--overwrite", action="store_true", help="replace an existing dense export")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--tokenizer", default=None,
                 help="tokenizer spec; default hf:HF/tokenizer.json when it exists")
  args = p.parse_args(argv)
  def body():
    checkpoint.check_export_destination(args.out, kind="dense", overwrite=args.overwrite,
                                        sources=[args.hf])
    cfg, params = load_hf_llama(args.hf)
    tok = args.tokenizer
    if tok is None and (Path(args.hf) / "tokenizer.json").exists():
      tok = f"hf:{Path(args.hf).absolute() / 'tokenizer.json'}"
    checkpoint.save_export(args.out, params, model=registry.to_dict(T, cfg), dtype=args.dtype,
                           extra={"tokenizer": tok or "byte",
                                  "source": str(Path(args.hf).absolute())},
                           overwrite=args.overwrite, sources=[args.hf])
    print(f"wrote {args.out}: {cfg.num_params():,} params, {cfg.n_layers} layers")
  return cli.report_user_errors(body)


if __name__ == "__main__":
  sys.exit(main())
