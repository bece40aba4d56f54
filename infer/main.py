"""Generate completions from an export, with Hydragen shared-prefix decoding.

  python infer/main.py --checkpoint WORKDIR/export --prompt-file prompts.txt \
      [--shared-prefix-file system.txt] --num-samples 4 --max-new-tokens 64 \
      [--temperature 0.8 --top-k 50 --top-p 0.95 --seed 0] [--no-hydragen] [--warmup]
      [--chat [--system "..."] [--chat-template chatml|FILE]]

Prompts: one per non-blank line, verbatim (``--escapes``: a literal ``\\n`` is a newline).
The shared prefix is the file's text when given, else the longest common token prefix of
the prompts when it is at least --min-shared-prefix tokens (see :mod:`infer.engine`). Prints
every prompt with its completion below a ``--- completion`` line, then prefill and decode
throughput. With ``--chat`` each line is a user message, rendered with the model's chat template
(:mod:`data.chat`; ``--chat-template chatml`` for the built-in ChatML, or a Jinja file) and
ending with the assistant prompt; generation stops at the model's EOS ids
(``generation_config.json``), e.g. SmolLM2's ``<|im_end|>``. Errors (missing or non-UTF-8 files, empty prompts, a request longer than
--max-len) are one ``error:`` line and exit status 2.
"""
from absl import flags, logging

from core import cli

flags.DEFINE_string("checkpoint", None, "Export directory (has export.json).")
flags.DEFINE_string("prompt-file", None, "Text file, one prompt per line.")
flags.DEFINE_string("shared-prefix-file", None, "Text prepended to every prompt, shared.")
flags.DEFINE_integer("num-samples", 1, "Completions per prompt.")
flags.DEFINE_integer("max-new-tokens", 64, "Tokens to generate per completion at most.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
flags.DEFINE_integer("top-k", 0, "Keep the k most likely tokens (0 = off).")
flags.DEFINE_float("top-p", 1.0, "Nucleus sampling mass (1 = off).")
flags.DEFINE_integer("seed", 0, "Sampling seed (each prompt uses it; samples differ).")
flags.DEFINE_bool("no-hydragen", False, "Cache the full prompt per sequence (baseline).")
flags.DEFINE_integer("min-shared-prefix", 16, "Shortest auto-detected shared prefix used.")
flags.DEFINE_integer("max-len", 4096, "Longest prefix + prompt + new tokens allowed.")
flags.DEFINE_bool("warmup", False, "Run once untimed first, so throughput excludes compiles.")
flags.DEFINE_bool("escapes", False, "Read a literal \\n in a prompt line as a newline (off: "
                  "prompts are taken verbatim, as code prompts need).")
flags.DEFINE_bool("chat", False, "Each prompt line is a user message in the model's chat "
                  "template.")
flags.DEFINE_string("system", None, "With --chat: a system message before each question.")
flags.DEFINE_string("chat-template", None, "With --chat: 'chatml' (built-in) or a Jinja "
                    "template file; default: the model's own.")
flags.mark_flags_as_required(["checkpoint", "prompt-file"])


def main(argv) -> int:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
  if not flags.FLAGS["verbosity"].present:  # Orbax INFO logs drown the completions
    logging.set_verbosity(logging.WARNING)
  from data import chat  # pylint: disable=g-import-not-at-top
  from infer import decode, engine  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  prompts = engine.read_prompts(f["prompt-file"].value, escapes=f.escapes)
  shared = None
  if f["shared-prefix-file"].value:
    shared = engine.read_text(f["shared-prefix-file"].value, "shared prefix file")
  dec, tok, _ = engine.load(f.checkpoint, max_len=f["max-len"].value)
  if f.chat:
    template = f["chat-template"].value
    if template is not None and template not in chat.BUILTIN:
      template = engine.read_text(template, "chat template file")
    prompts = engine.chat_prompts(tok, prompts, system=f.system, template=template)
  elif f.system or f["chat-template"].value:
    raise cli.UsageError("--system and --chat-template only apply with --chat.")
  params = decode.SamplingParams(
      max_new_tokens=f["max-new-tokens"].value, temperature=f.temperature,
      top_k=f["top-k"].value, top_p=f["top-p"].value, num_samples=f["num-samples"].value,
      seed=f.seed)
  hydragen = not f["no-hydragen"].value
  kwargs = dict(shared_prefix=shared, hydragen=hydragen,
                min_shared_prefix=f["min-shared-prefix"].value)
  if f.warmup:
    engine.generate_text(dec, tok, prompts, params, **kwargs)
  texts, gen, prefix_len = engine.generate_text(dec, tok, prompts, params, **kwargs)
  shown = [(shared or "") + p for p in prompts]
  print(engine.format_report(shown, texts, gen, prefix_len, hydragen))
  return 0


if __name__ == "__main__":
  cli.run(main)
