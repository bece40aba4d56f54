"""Import a Llama-architecture GGUF file (llama.cpp's format) as an effijax export.

  python -m models.gguf_import --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out workdirs/smollm2

Three parts, each undoing what llama.cpp's ``convert_hf_to_gguf.py`` did:

* **Config.** The ``{arch}.*`` metadata (``block_count``, ``embedding_length``,
  ``attention.head_count[_kv]``, ``feed_forward_length``, ``rope.freq_base``,
  ``attention.layer_norm_rms_epsilon``) becomes a HF ``config.json`` dict and goes through
  :func:`models.hf_import.config_from_hf`. Only ``general.architecture == "llama"`` is
  accepted; RoPE scaling and partial rotary dims raise.
* **Tensors.** Dequantized to float32 by :mod:`models.gguf_dequant` (our decoders of the
  block layouts) and renamed to HF names (``blk.{i}.attn_q`` -> ``model.layers.{i}.self_attn.
  q_proj``, ...; no ``output.weight`` means tied embeddings). GGUF stores ``ne = [in, out]``,
  i.e. numpy ``[out, in]``, the torch layout, so :func:`models.hf_import.params_from_hf` maps
  them. llama.cpp permutes the rows of ``W_q`` (per head, ``n_head``) and ``W_k`` (per KV head)
  from HF's half-split RoPE layout to the interleaved one: rows ``(h, s, j)`` ->
  ``(h, j, s)`` with ``s`` in {0, 1} the half and ``j < head_dim / 2``. :func:`unpermute_rope`
  applies the inverse.
* **Tokenizer.** ``tokenizer.ggml.*`` (``model == "gpt2"``: byte-level BPE) becomes a
  ``tokenizer.json`` built with the ``tokenizers`` package: the vocab and merges, the
  pre-tokenizer named by ``tokenizer.ggml.pre``, control tokens as special added tokens. Its
  bos/eos/pad ids, ``add_bos_token`` and ``tokenizer.chat_template`` go to a
  ``tokenizer_config.json`` and ``generation_config.json`` beside it, as in a HF model
  directory, which :class:`data.tokenizers.HFTokenizer` reads.

The three files are written into the export directory (``core.checkpoint.save_export``'s
``files``), which refuses to overwrite without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from core import checkpoint, cli
from models import gguf_dequant, hf_import, registry
from models import transformer as T

ARCHITECTURES = ("llama",)
_LINEAR_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                 "ffn_norm": "post_attention_layernorm"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
# tokenizer.ggml.pre -> whether digits are split one by one before the byte-level regex
# (llama.cpp's pre-tokenizer regexes: "smollm"/"starcoder" add \p{N}, "gpt2" does not).
PRE_TOKENIZERS = {"smollm": True, "starcoder": True, "gpt2": False, "default": False}


def _require_gguf():
  try:
    import gguf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("reading GGUF needs the `gguf` package: pip install 'gguf>=0.10,<1' "
                     "(it is in effijax's dev extra).") from e
  return gguf


class GGUFFile:
  """Metadata and raw tensors of a GGUF file (``gguf.GGUFReader``, memory-mapped)."""

  def __init__(self, path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
      raise ValueError(f"GGUF file {path} does not exist; pass the path to a .gguf file.")
    gguf = _require_gguf()
    try:
      self._reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises bare ValueErrors/asserts on garbage
      raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}).") from e
    self.path = path
    self.fields = {}
    for name, field in self._reader.fields.items():
      try:
        self.fields[name] = field.contents()
      except Exception:  # pylint: disable=broad-except
        continue  # a field type the reader cannot decode; none of ours
    self.tensors = {t.name: t for t in self._reader.tensors}

  def get(self, key, default=None):
    return self.fields.get(key, default)

  def require(self, key):
    if key not in self.fields:
      raise ValueError(f"{self.path} has no metadata key {key!r}; is it a complete llama.cpp "
                       "GGUF file?")
    return self.fields[key]

  def tensor(self, name: str) -> np.ndarray:
    t = self.tensors[name]
    kind = t.tensor_type.name
    shape = tuple(int(s) for s in reversed(list(t.shape)))  # ne is innermost-first
    try:
      return gguf_dequant.dequantize(t.data, kind, shape)
    except gguf_dequant.UnsupportedTensorType as e:
      raise gguf_dequant.UnsupportedTensorType(f"tensor {name!r}: {e}") from None


def hf_config(g: GGUFFile) -> dict:
  """A HF Llama ``config.json`` dict from the GGUF metadata (raises for non-Llama files)."""
  arch = g.require("general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(f"{g.path}: GGUF architecture {arch!r} is not supported; only "
                     f"{', '.join(ARCHITECTURES)} (Llama-family) files can be imported.")
  a = lambda key, default=None: g.get(f"{arch}.{key}", default)  # noqa: E731
  for key in ("block_count", "embedding_length", "feed_forward_length",
              "attention.head_count"):
    g.require(f"{arch}.{key}")
  n_heads = int(a("attention.head_count"))
  d = int(a("embedding_length"))
  head_dim = int(a("attention.key_length", d // n_heads))
  if int(a("attention.value_length", head_dim)) != head_dim:
    raise ValueError(f"{g.path}: key and value head sizes differ; not a Llama layout.")
  rot = int(a("rope.dimension_count", head_dim))
  if rot != head_dim:
    raise ValueError(f"{g.path}: rope.dimension_count={rot} rotates part of each {head_dim}-"
                     "dim head; models.layers.rope rotates whole heads.")
  scaling = a("rope.scaling.type", "none")
  if scaling not in ("none", None) or "rope_freqs.weight" in g.tensors:
    raise ValueError(f"{g.path}: RoPE scaling ({scaling!r} / rope_freqs) is not supported by "
                     "models.layers.rope.")
  tokens = g.get("tokenizer.ggml.tokens")
  vocab = int(a("vocab_size", len(tokens) if tokens else 0))
  if vocab < 1:
    vocab = int(g.tensors["token_embd.weight"].shape[1])
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "vocab_size": vocab, "hidden_size": d, "intermediate_size": int(a("feed_forward_length")),
          "num_hidden_layers": int(a("block_count")), "num_attention_heads": n_heads,
          "num_key_value_heads": int(a("attention.head_count_kv", n_heads)),
          "head_dim": head_dim, "rope_theta": _f32(a("rope.freq_base", 10_000.0)),
          "rms_norm_eps": _f32(a("attention.layer_norm_rms_epsilon", 1e-6)),
          "max_position_embeddings": int(a("context_length", 2048)),
          "tie_word_embeddings": "output.weight" not in g.tensors, "hidden_act": "silu"}


def _f32(x) -> float:
  """GGUF stores these as float32: the shortest decimal that round-trips (1e-5, not
  9.99999974e-06), which is what the HF config held before conversion."""
  return float(str(np.float32(x)))


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation; ``w`` is ``[n_heads * head_dim, in]``."""
  rows = w.shape[0]
  head_dim = rows // n_heads
  return (w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation (HF half-split rows -> interleaved), for writing test files."""
  head_dim = w.shape[0] // n_heads
  return (w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def hf_tensors(g: GGUFFile, hf: dict) -> dict[str, np.ndarray]:
  """All tensors, dequantized, under HF names, q/k un-permuted."""
  out = {}
  for name in g.tensors:
    if name in _TOP_NAMES:
      hf_name = _TOP_NAMES[name]
    else:
      parts = name.split(".")
      if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _LINEAR_NAMES \
          or parts[3] != "weight":
        raise ValueError(f"{g.path}: tensor {name!r} has no place in a Llama model (biases "
                         "and extra tensors are not supported).")
      hf_name = f"model.layers.{parts[1]}.{_LINEAR_NAMES[parts[2]]}.weight"
    w = g.tensor(name)
    if name.endswith("attn_q.weight"):
      w = unpermute_rope(w, hf["num_attention_heads"])
    elif name.endswith("attn_k.weight"):
      w = unpermute_rope(w, hf["num_key_value_heads"])
    out[hf_name] = w
  return out


def tokenizer_files(g: GGUFFile) -> dict[str, str]:
  """``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json`` texts."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers

  kind = g.require("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{g.path}: tokenizer.ggml.model={kind!r} is not supported; only "
                     "byte-level BPE ('gpt2') tokenizers are converted.")
  pre = g.get("tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise ValueError(f"{g.path}: pre-tokenizer {pre!r} is not supported (known: "
                     f"{', '.join(PRE_TOKENIZERS)}); its split regex would differ.")
  tokens = list(g.require("tokenizer.ggml.tokens"))
  types = list(g.get("tokenizer.ggml.token_type", [1] * len(tokens)))
  merges = [tuple(m.split(" ", 1)) for m in g.require("tokenizer.ggml.merges")]
  bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges)
  tok = tokenizers.Tokenizer(bpe)
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                byte_level])
                       if PRE_TOKENIZERS[pre] else byte_level)
  tok.decoder = decoders.ByteLevel()
  # token_type: 3 = control (special), 4 = user-defined (added, not special).
  added = [tokenizers.AddedToken(t, special=(ty == 3), normalized=False)
           for t, ty in zip(tokens, types) if ty in (3, 4)]
  tok.add_tokens(added)

  def token(key):
    i = g.get(f"tokenizer.ggml.{key}_token_id")
    return None if i is None else tokens[int(i)]

  config = {"tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token("bos"), "eos_token": token("eos"), "pad_token": token("padding"),
            "unk_token": token("unknown"),
            "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False))}
  template = g.get("tokenizer.chat_template")
  if template:
    config["chat_template"] = template
  gen = {}
  if g.get("tokenizer.ggml.eos_token_id") is not None:
    gen["eos_token_id"] = int(g.get("tokenizer.ggml.eos_token_id"))
  if g.get("tokenizer.ggml.bos_token_id") is not None:
    gen["bos_token_id"] = int(g.get("tokenizer.ggml.bos_token_id"))
  return {"tokenizer.json": tok.to_str(),
          "tokenizer_config.json": json.dumps({k: v for k, v in config.items()
                                               if v is not None}, indent=2),
          "generation_config.json": json.dumps(gen, indent=2)}


def load_gguf_llama(path: str | os.PathLike, *, param_dtype: str = "float32"):
  """``(ModelConfig, params, GGUFFile)`` of a Llama GGUF file."""
  g = GGUFFile(path)
  hf = hf_config(g)
  cfg = hf_import.config_from_hf(hf, param_dtype=param_dtype)
  return cfg, hf_import.params_from_hf(cfg, hf_tensors(g, hf), param_dtype=param_dtype), g


def import_gguf(path, out, *, dtype: str = "float32", overwrite: bool = False):
  """Writes the export (params + tokenizer files) of GGUF ``path`` to ``out``; its config."""
  checkpoint.check_export_destination(out, kind="dense", overwrite=overwrite, sources=[path])
  cfg, params, g = load_gguf_llama(path)
  files = tokenizer_files(g) if g.get("tokenizer.ggml.tokens") else {}
  out = Path(out).absolute()
  extra = {"tokenizer": f"hf:{out / 'tokenizer.json'}" if files else "byte",
           "source": str(Path(path).absolute()),
           "gguf_types": sorted({t.tensor_type.name for t in g.tensors.values()})}
  checkpoint.save_export(out, params, model=registry.to_dict(T, cfg), dtype=dtype, extra=extra,
                         overwrite=overwrite, sources=[path], files=files)
  return cfg


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Import a Llama GGUF file as an effijax export.")
  p.add_argument("--gguf", required=True, help="the .gguf file")
  p.add_argument("--out", required=True,
                 help="export directory to write: new, empty, or (with --overwrite) an "
                 "export to replace")
  p.add_argument("--overwrite", action="store_true", help="replace an existing dense export")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  args = p.parse_args(argv)
  def body():
    cfg = import_gguf(args.gguf, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out}: {cfg.num_params():,} params, {cfg.n_layers} layers")
  return cli.report_user_errors(body)


if __name__ == "__main__":
  sys.exit(main())
