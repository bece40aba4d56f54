"""infer/main.py end to end on a tiny export; shared-prefix detection; loading errors."""
import jax
import pytest
from absl import flags

import os
import subprocess
import sys
from pathlib import Path

from core import checkpoint, qtensor
from infer import decode as D
from infer import engine
from models import registry
from models import transformer as T
from quant import main as qmain
from quant import ptq

ROOT = Path(__file__).resolve().parents[2]

# The model and request sizes of tests/test_decode.py (prompt <= 32 tokens, own part <= 16,
# 3 prompts x 2 samples, <= 16 new tokens): in one pytest run the compiled prefill/decode
# functions are shared instead of compiled again.
CFG = T.preset("tiny", n_layers=2, vocab_size=384, d_model=32, n_heads=4, n_kv_heads=2,
               head_dim=8, mlp_dim=64)
SYSTEM = "You are helpful. "
PROMPTS = ["Say hi.", "Count to 3.", "Name a color."]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  _, params = T.init(CFG, seed=1)
  path = tmp_path_factory.mktemp("infer") / "export"
  checkpoint.save_export(path, params, model=registry.to_dict(T, CFG), dtype="float32",
                         extra={"tokenizer": "byte"})
  return path


def _run_main(argv, capsys):
  from infer import main as main_mod  # defines the flags on first import
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["infer/main.py"] + argv)
  try:
    main_mod.main([])
  finally:
    flags.FLAGS.unparse_flags()
  return capsys.readouterr().out


def _completions(out):
  """``{"prompt i sample j": (prompt, completion)}`` from the printed report."""
  blocks = out.split("=== ")
  got = {}
  for b in blocks:
    if b.startswith("prompt"):
      body = b.split("===\n", 1)[1]
      prompt, completion = body.split("\n--- completion (", 1)
      got[b.split(" (")[0]] = (prompt, completion.split(") ---\n", 1)[1].rstrip("\n"))
  return got


def test_main_prints_completions_and_throughput(export, tmp_path, capsys):
  prompt_file = tmp_path / "prompts.txt"
  prompt_file.write_text("\n".join(SYSTEM + p for p in PROMPTS) + "\n\n")
  args = ["--checkpoint", str(export), "--prompt-file", str(prompt_file), "--num-samples", "2",
          "--max-new-tokens", "10"]
  out = _run_main(args, capsys)
  for i in range(3):
    for j in range(2):
      assert f"=== prompt {i} sample {j} (" in out
  assert "hydragen: on; shared prefix: 18 tokens" in out  # bos + the 17-byte system prompt
  assert "prefill: " in out and "decode: " in out and "tokens/s" in out
  plain = _run_main(args + ["--no-hydragen"], capsys)
  assert "hydragen: off" in plain
  assert _completions(plain) == _completions(out)  # greedy: Hydragen changes no token
  # The texts are the decoder's own greedy tokens, decoded.
  dec, tok, _ = engine.load(export)
  gen = dec.generate([[tok.bos_id] + tok.encode(SYSTEM + p) for p in PROMPTS],
                     D.SamplingParams(max_new_tokens=10, num_samples=2,
                                      stop_tokens=(tok.eos_id,)), hydragen=False)
  texts = _completions(out)
  for i, prompt in enumerate(PROMPTS):
    for j in range(2):
      assert texts[f"prompt {i} sample {j}"] == (SYSTEM + prompt, tok.decode(gen.tokens[i][j]))


def test_shared_prefix_file_and_detection(export):
  _, tok, _ = engine.load(export)
  prefix, ids = engine.tokenize_requests(tok, PROMPTS, SYSTEM)
  assert prefix == [tok.bos_id] + tok.encode(SYSTEM)
  assert ids == [tok.encode(p) for p in PROMPTS]
  prefix, ids = engine.tokenize_requests(tok, [SYSTEM + p for p in PROMPTS], None)
  assert prefix == [tok.bos_id] + tok.encode(SYSTEM)
  # Below the threshold nothing is shared; one prompt never shares with itself.
  assert engine.tokenize_requests(tok, ["abc x", "abc y"], None)[0] == []
  assert engine.common_prefix([[1] * 40]) == 0
  # Identical prompts keep their last token as their own.
  assert engine.common_prefix([[1] * 20, [1] * 20]) == 19
  assert engine.common_prefix([[1] * 20 + [2], [1] * 20 + [3]], min_len=21) == 0


def test_load_errors_are_clear(export, tmp_path):
  with pytest.raises(ValueError, match="does not match the model config"):
    engine.load(export, model_config=T.ModelConfig(**{**CFG.to_dict(), "mlp_dim": 96}))
  with pytest.raises(ValueError, match="not an effijax export"):
    engine.load(tmp_path)
  with pytest.raises(ValueError, match="does not exist"):
    engine.read_prompts(tmp_path / "missing.txt")
  empty = tmp_path / "empty.txt"
  empty.write_text("\n  \n")
  with pytest.raises(ValueError, match="no prompts"):
    engine.read_prompts(empty)
  small = T.ModelConfig(**{**CFG.to_dict(), "vocab_size": 128, "n_layers": 1})
  _, params = T.init(small)
  checkpoint.save_export(tmp_path / "small", params, model=registry.to_dict(T, small),
                         dtype="float32", extra={"tokenizer": "byte"})
  with pytest.raises(ValueError, match="tokenizer 'byte' has 259 tokens"):
    engine.load(tmp_path / "small")


def test_quantized_export_serves_through_the_low_bit_kernel(export, tmp_path, capsys):
  """quant/main.py's output loads in infer/: its greedy completions are those of the
  dequantized dense params (the kernel path computes the same model)."""
  out = tmp_path / "q4"
  assert qmain.main(["--checkpoint", str(export), "--method", "rtn", "--dim", "oc", "--bits",
                     "4", "--group", "32", "--calib-samples", "4", "--calib-seq-len", "32",
                     "--no-progress", "--out", str(out)]) == 0
  capsys.readouterr()
  dec, tok, meta = engine.load(out)
  assert meta["quantization"]["bits"] == 4
  assert any(isinstance(v, qtensor.QuantizedWeight) for v in jax.tree.leaves(
      dec.params, is_leaf=lambda v: isinstance(v, qtensor.QuantizedWeight)))
  prompt_file = tmp_path / "prompts.txt"
  prompt_file.write_text("\n".join(PROMPTS) + "\n")
  texts = _completions(_run_main(["--checkpoint", str(out), "--prompt-file", str(prompt_file),
                                  "--max-new-tokens", "8"], capsys))
  dense = D.Decoder(CFG, dec.graphdef, ptq.dequantized(dec.params), max_len=4096,
                    pad_id=tok.pad_id, vocab_limit=tok.vocab_size)
  gen = dense.generate([[tok.bos_id] + tok.encode(p) for p in PROMPTS],
                       D.SamplingParams(max_new_tokens=8, stop_tokens=(tok.eos_id,)))
  for i, prompt in enumerate(PROMPTS):
    assert texts[f"prompt {i} sample 0"] == (prompt, tok.decode(gen.tokens[i][0]))


@pytest.mark.slow
def test_quantize_then_infer_from_the_command_line(export, tmp_path):
  """The two CLIs as a user types them (scripts, no sys.path tricks)."""
  out = tmp_path / "q3"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  q = subprocess.run([sys.executable, str(ROOT / "quant" / "main.py"), "--checkpoint",
                      str(export), "--method", "gptq", "--dim", "ada", "--bits", "3", "--group",
                      "16", "--calib-samples", "4", "--calib-seq-len", "32", "--no-progress",
                      "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
  assert q.returncode == 0, q.stderr[-2000:]
  prompt_file = tmp_path / "prompts.txt"
  prompt_file.write_text("def f(x):\n")
  r = subprocess.run([sys.executable, str(ROOT / "infer" / "main.py"), "--checkpoint", str(out),
                      "--prompt-file", str(prompt_file), "--max-new-tokens", "4"],
                     capture_output=True, text=True, env=env, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "=== prompt 0 sample 0" in r.stdout and "decode: " in r.stdout
