"""Chat prompts: a model's Jinja chat template rendered with ``jinja2``, as transformers does.

A chat template (``tokenizer_config.json``'s ``chat_template``, or GGUF's
``tokenizer.chat_template``) is a Jinja program over ``messages`` (a list of
``{"role", "content"}``), ``add_generation_prompt`` and the special token strings. Like
transformers' ``apply_chat_template`` we render it in a sandboxed environment with
``trim_blocks`` and ``lstrip_blocks``, a ``raise_exception(msg)`` global and a ``tojson`` filter.
The rendered text carries the model's own markers (``<|im_start|>`` ...), which the tokenizer
maps to their special ids, so no BOS is added on top.

``CHATML`` is a built-in ChatML template (``<|im_start|>{role}\\n{content}<|im_end|>\\n``)
for models that ship without one; select it with ``--chat-template chatml``.
"""
from __future__ import annotations

import json

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
BUILTIN = {"chatml": CHATML}


def resolve_template(template, name: str = "default") -> str:
  """A template string from a string, or a HF list of ``{"name", "template"}`` entries."""
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if name not in named:
      raise ValueError(f"the chat template list has no {name!r} entry (has {sorted(named)}).")
    return named[name]
  if not isinstance(template, str) or not template:
    raise ValueError(f"a chat template must be a non-empty Jinja string, got {template!r}.")
  return template


def render(template: str, messages, *, add_generation_prompt: bool = True,
           **special_tokens) -> str:
  """The text of ``messages`` under ``template``; a ValueError names what failed.

  ``special_tokens`` (``bos_token="<s>"`` ...) are visible to the template as variables.
  """
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import sandbox  # pylint: disable=g-import-not-at-top

  for i, m in enumerate(messages):
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
      raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}.")

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False,
                                                            indent=indent)
  env.globals["raise_exception"] = raise_exception
  try:
    return env.from_string(resolve_template(template)).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **special_tokens)
  except Exception as e:  # pylint: disable=broad-except  (a template can raise anything)
    raise ValueError(f"the chat template failed to render ({type(e).__name__}: {e}); fix the "
                     "template, or pass --chat-template chatml / a template file.") from None
