"""Text-level generation: load an export, tokenize prompts, find the shared prefix, report.

What :mod:`infer.main` runs; importable for notebooks and tests.

Tokenization: every sequence starts with the tokenizer's BOS (as in training,
:mod:`data.pipeline`) unless the tokenizer says not to (``add_bos`` False: chat models such
as SmolLM2, whose prompts open with their template's own marker). With an explicit shared prefix text, the prefix tokens are
``[bos] + encode(prefix)`` and each prompt contributes ``encode(prompt)`` after it (the two
are tokenized separately and joined at a token boundary). Without one, prompts are
``[bos] + encode(prompt)`` and the shared prefix is detected automatically
(:func:`common_prefix`).

Auto-detection rule: the shared prefix is the longest common *token* prefix of all prompts,
cut so that every prompt keeps at least one token of its own; it is used only when there are
at least 2 prompts and it is at least ``min_shared_prefix`` (default 16) tokens long. Shorter
prefixes cost more in an extra prefill call and a merge than they save in KV reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax

from core import checkpoint
from data import chat, tokenizers
from infer import decode
from models import registry, transformer

MIN_SHARED_PREFIX = 16


def load(export_path, *, model_config: transformer.ModelConfig | None = None,
         max_len: int = 4096, mesh=None, rules=None):
  """``(Decoder, tokenizer, metadata)`` of a dense or quantized export (written by ``train``,
  ``quant/main.py`` or an importer); quantized kernels run through the low-bit matmul.

  ``model_config`` (default: the export's own) is checked against the stored params; a
  mismatch raises a ValueError naming the differing params.
  """
  meta = checkpoint.read_export_metadata(export_path)
  if model_config is None:
    if "model" not in meta:
      raise ValueError(f"export {export_path} has no model config in export.json; pass "
                       "model_config explicitly.")
    module, model_config = registry.from_dict(meta["model"])
    if module is not transformer:
      raise ValueError(f"export {export_path} holds a {meta['model'].get('name')!r} model; "
                       "infer/ generates text with transformer language models.")
  graphdef, abstract = transformer.abstract_params(model_config)
  _, params = checkpoint.load_export(export_path, abstract)
  tok = tokenizers.get_tokenizer(meta.get("tokenizer", "byte"))
  if tok.vocab_size > model_config.vocab_size:
    raise ValueError(f"tokenizer {meta.get('tokenizer')!r} has {tok.vocab_size} tokens but the "
                     f"model only {model_config.vocab_size}; the export and tokenizer do not "
                     "belong together.")
  dec = decode.Decoder(model_config, graphdef, params, max_len=max_len, pad_id=tok.pad_id,
                       vocab_limit=tok.vocab_size, mesh=mesh, rules=rules)
  return dec, tok, meta


def common_prefix(token_lists: Sequence[Sequence[int]], min_len: int = MIN_SHARED_PREFIX) -> int:
  """Length of the shared prefix to use (0: none); see the module docstring for the rule."""
  if len(token_lists) < 2:
    return 0
  limit = min(len(t) for t in token_lists) - 1  # every prompt keeps >= 1 own token
  first = token_lists[0]
  n = 0
  while n < limit and all(t[n] == first[n] for t in token_lists[1:]):
    n += 1
  return n if n >= min_len else 0


def read_text(path, what: str) -> str:
  """The UTF-8 text of a file; a clear ValueError names the file when it cannot be read."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"{what} {path} does not exist (or is not a file).")
  data = path.read_bytes()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start}: "
                     f"{data[e.start:e.start + 1]!r}); save it as UTF-8.") from None


def read_prompts(path, *, escapes: bool = False) -> list[str]:
  """One prompt per non-blank line, verbatim; with ``escapes`` a literal ``\\n`` in a line
  stands for a newline (off by default: it would mangle code prompts)."""
  lines = read_text(path, "prompt file").splitlines()
  prompts = [line.replace("\\n", "\n") if escapes else line for line in lines if line.strip()]
  if not prompts:
    raise ValueError(f"prompt file {path} has no prompts (one per non-blank line).")
  return prompts


def tokenize_requests(tok, prompts: Sequence[str], shared_prefix: str | None,
                      min_shared_prefix: int = MIN_SHARED_PREFIX):
  """``(prefix_ids, prompt_ids)``: each prompt's ids come after the prefix ids."""
  bos = [tok.bos_id] if getattr(tok, "add_bos", True) else []
  if shared_prefix is not None:
    prefix = bos + list(tok.encode(shared_prefix))
    return prefix, [list(tok.encode(p)) for p in prompts]
  full = [bos + list(tok.encode(p)) for p in prompts]
  n = common_prefix(full, min_shared_prefix)
  return full[0][:n], [f[n:] for f in full]


def generate_text(dec: decode.Decoder, tok, prompts: Sequence[str], params: decode.SamplingParams,
                  *, shared_prefix: str | None = None, hydragen: bool = True,
                  min_shared_prefix: int = MIN_SHARED_PREFIX):
  """``(completions[p][j] strings, Generation, prefix length in tokens)``."""
  prefix, prompt_ids = tokenize_requests(tok, prompts, shared_prefix, min_shared_prefix)
  stops = tuple(dict.fromkeys(tuple(params.stop_tokens) +
                              tuple(getattr(tok, "stop_ids", (tok.eos_id,)))))
  params = decode.SamplingParams(**{**params.__dict__, "stop_tokens": stops})
  if isinstance(params.seed, int):  # distinct, reproducible streams per prompt
    seeds = tuple((params.seed * 65_537 + i) % (1 << 32) for i in range(len(prompts)))
    params = decode.SamplingParams(**{**params.__dict__, "seed": seeds})
  gen = dec.generate(prompt_ids, params, prefix=prefix, hydragen=hydragen)
  texts = [[tok.decode(t) for t in samples] for samples in gen.tokens]
  return texts, gen, len(prefix)


def chat_prompts(tok, questions: Sequence[str], *, system: str | None = None,
                 template: str | None = None) -> list[str]:
  """Each question as a one-turn chat (after an optional system message), rendered with
  ``template`` (a Jinja string, or "chatml" for :data:`data.chat.CHATML`; default the
  tokenizer's own) and ending with the assistant's generation prompt."""
  if template is None:
    template = getattr(tok, "chat_template", None)
    if template is None:
      raise ValueError(f"tokenizer {tok!r} has no chat template; pass --chat-template chatml "
                       "(the built-in ChatML) or --chat-template FILE (a Jinja template).")
  template = chat.BUILTIN.get(template, template) if isinstance(template, str) else template
  specials = {}
  for role in ("bos", "eos", "pad"):
    token_id = getattr(tok, f"{role}_id", None)
    id_to_token = getattr(tok, "id_to_token", None)
    if token_id is not None and id_to_token is not None:
      specials[f"{role}_token"] = id_to_token(token_id)
  head = [{"role": "system", "content": system}] if system else []
  return [chat.render(template, head + [{"role": "user", "content": q}],
                      add_generation_prompt=True, **specials) for q in questions]


def format_report(prompts, texts, gen: decode.Generation, prefix_len: int, hydragen: bool) -> str:
  lines = []
  for i, (prompt, samples) in enumerate(zip(prompts, texts)):
    for j, text in enumerate(samples):
      lines.append(f"=== prompt {i} sample {j} ({gen.finish_reasons[i][j]}) ===")
      lines.append(prompt)
      lines.append(f"--- completion ({len(gen.tokens[i][j])} tokens) ---")
      lines.append(text)
  lines.append("=== throughput ===")
  lines.append(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
               f"hydragen: {'on' if hydragen else 'off'}; shared prefix: {prefix_len} tokens")
  lines.append(f"prefill: {gen.prefill_tokens} tokens in {gen.prefill_s:.3f} s = "
               f"{gen.prefill_tokens_per_s:.1f} tokens/s")
  lines.append(f"decode: {gen.decode_tokens} tokens in {gen.decode_s:.3f} s = "
               f"{gen.decode_tokens_per_s:.1f} tokens/s")
  lines.append("(the first call of each shape bucket includes compilation; see --warmup)")
  return "\n".join(lines)
