"""HF Llama import: logits match transformers' LlamaForCausalLM (one file and sharded);
round trip through hand-written safetensors; clear errors on bad input."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from models import hf_import, registry
from tests import snapshot
from models import transformer as T
from core import checkpoint

HF_CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=96,
                 hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 rms_norm_eps=1e-5, rope_theta=5000.0, hidden_act="silu")


def _to_hf(cfg, params):
  """Our params -> HF tensor names and torch layouts (the importer's inverse)."""
  out = {"model.embed_tokens.weight": params["embed"]["embedding"],
         "model.norm.weight": params["final_norm"]["scale"]}
  for i in range(cfg.n_layers):
    lp, pre = params["layers"][i], f"model.layers.{i}."
    out[pre + "input_layernorm.weight"] = lp["attn_norm"]["scale"]
    out[pre + "post_attention_layernorm.weight"] = lp["mlp_norm"]["scale"]
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
      out[f"{pre}self_attn.{n}.weight"] = lp["attn"][n]["kernel"].T
    for n in ("gate_proj", "up_proj", "down_proj"):
      out[f"{pre}mlp.{n}.weight"] = lp["mlp"][n]["kernel"].T
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = params["lm_head"]["kernel"].T
  return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in out.items()}


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_through_handwritten_safetensors(tmp_path, tied):
  hf_cfg = {**HF_CONFIG, "tie_word_embeddings": tied}
  cfg = hf_import.config_from_hf(hf_cfg)
  assert (cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.norm_eps) == (2, 16, 5000.0, 1e-5)
  _, params = T.init(cfg, seed=3)
  (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
  tensors = _to_hf(cfg, params)
  names = sorted(tensors)  # two shards + index, as save_pretrained writes them
  shards = {"model-00001-of-00002.safetensors": names[:7],
            "model-00002-of-00002.safetensors": names[7:]}
  for f, ns in shards.items():
    save_file({n: tensors[n] for n in ns}, str(tmp_path / f))
  (tmp_path / hf_import.INDEX).write_text(json.dumps(
      {"weight_map": {n: f for f, ns in shards.items() for n in ns}}))
  cfg2, loaded = hf_import.load_hf_llama(tmp_path)
  assert cfg2 == cfg
  for (p, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_flatten_with_path(loaded)[0]):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))
  # The CLI writes an effijax export of the same params.
  assert hf_import.main(["--hf", str(tmp_path), "--out", str(tmp_path / "export")]) == 0
  meta, exported = checkpoint.load_export(tmp_path / "export", T.abstract_params(cfg)[1])
  assert registry.from_dict(meta["model"]) == (T, cfg) and meta["tokenizer"] == "byte"
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(exported)):
    np.testing.assert_array_equal(a, b)
  # --out never replaces the HF directory itself, nor an export without --overwrite.
  before = snapshot.digest(tmp_path)
  assert hf_import.main(["--hf", str(tmp_path), "--out", str(tmp_path)]) == 2
  assert hf_import.main(["--hf", str(tmp_path), "--out", str(tmp_path / "export")]) == 2
  assert snapshot.digest(tmp_path) == before
  assert hf_import.main(["--hf", str(tmp_path), "--out", str(tmp_path / "export"),
                         "--overwrite", "--dtype", "bfloat16"]) == 0
  assert checkpoint.read_export_metadata(tmp_path / "export")["dtype"] == "bfloat16"


@pytest.mark.parametrize("tied,shard", [(False, None), (True, "40KB")])
def test_logits_match_transformers(tmp_path, tied, shard):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(**{k: v for k, v in HF_CONFIG.items()
                                       if k not in ("architectures", "model_type")},
                                    tie_word_embeddings=tied)
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  with torch.no_grad():  # random norm scales, so a wrong norm mapping cannot hide
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1 + 0.3 * torch.randn_like(p))
  kwargs = {"max_shard_size": shard} if shard else {}
  model.save_pretrained(tmp_path, safe_serialization=True, **kwargs)
  if shard:
    assert (tmp_path / hf_import.INDEX).exists()
  tokens = np.random.default_rng(0).integers(0, 96, (2, 11))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.float().numpy()
  cfg, params = hf_import.load_hf_llama(tmp_path)
  assert cfg.tie_embeddings == tied and ("lm_head" in params) == (not tied)
  graphdef, _ = T.abstract_params(cfg)
  got = T.apply(graphdef, params, jnp.asarray(tokens))
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match="not a directory"):
    hf_import.load_hf_llama(tmp_path / "nope")
  with pytest.raises(ValueError, match="no config.json"):
    hf_import.load_hf_llama(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(
      {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 64}))
  with pytest.raises(ValueError, match="unsupported architecture.*BertModel"):
    hf_import.load_hf_llama(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
  with pytest.raises(ValueError, match="neither model.safetensors"):
    hf_import.load_hf_llama(tmp_path)
  (tmp_path / hf_import.INDEX).write_text(json.dumps(
      {"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}))
  with pytest.raises(ValueError, match="not in"):
    hf_import.load_hf_llama(tmp_path)
  (tmp_path / hf_import.INDEX).unlink()
  save_file({"model.norm.weight": np.ones(64, np.float32)}, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="model.embed_tokens.weight.*missing"):
    hf_import.load_hf_llama(tmp_path)
  for bad, msg in (({"rope_scaling": {"rope_type": "llama3"}}, "RoPE scaling"),
                   ({"attention_bias": True}, "attention_bias"),
                   ({"hidden_act": "gelu"}, "hidden_act")):
    with pytest.raises(ValueError, match=msg):
      hf_import.config_from_hf({**HF_CONFIG, **bad})
