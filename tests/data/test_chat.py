"""Chat templates (data/chat.py) and the special tokens HFTokenizer reads from
tokenizer_config.json / generation_config.json beside its tokenizer.json."""
import json

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from data import chat
from data import tokenizers as tok_lib
from infer import engine

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def test_chatml_builtin_renders_the_documented_format():
  text = chat.render(chat.CHATML, MESSAGES, add_generation_prompt=True)
  assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                  "<|im_start|>assistant\n")
  assert chat.render(chat.CHATML, MESSAGES, add_generation_prompt=False).endswith(
      "Hi?<|im_end|>\n")


def test_template_features_and_errors():
  # trim_blocks / lstrip_blocks as transformers renders; special tokens visible; tojson.
  template = "{% for m in messages %}\n{{ bos_token }}{{ m['content'] | tojson }}\n  {% endfor %}"
  assert chat.render(template, MESSAGES, bos_token="<s>") == '<s>"Be brief."\n<s>"Hi?"\n'
  with pytest.raises(ValueError, match="chat template failed to render.*TemplateSyntaxError"):
    chat.render("{% for m in messages %}", MESSAGES)
  with pytest.raises(ValueError, match="failed to render.*only user roles"):
    chat.render("{{ raise_exception('only user roles') }}", MESSAGES)
  with pytest.raises(ValueError, match="failed to render"):  # a TypeError inside the template
    chat.render("{{ messages[0]['content'] + 3 }}", MESSAGES)
  with pytest.raises(ValueError, match="message 0 must be a dict"):
    chat.render(chat.CHATML, ["hi"])
  named = [{"name": "default", "template": "{{ messages[1]['content'] }}"}]
  assert chat.render(named, MESSAGES) == "Hi?"


def _tokenizer_dir(tmp_path, config=None, generation=None):
  vocab = {c: i for i, c in enumerate("abcdefghij")}
  tok = tokenizers.Tokenizer(models.BPE(vocab, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                          for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
  tok.save(str(tmp_path / "tokenizer.json"))
  if config is not None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  if generation is not None:
    (tmp_path / "generation_config.json").write_text(json.dumps(generation))
  return f"hf:{tmp_path / 'tokenizer.json'}"


def test_hf_special_tokens_from_config_files(tmp_path):
  # Without config files: the old behaviour (the end-of-text token for everything, add bos).
  bare = tok_lib.get_tokenizer(_tokenizer_dir(tmp_path))
  assert (bare.bos_id, bare.eos_id, bare.pad_id, bare.stop_ids) == (10, 10, 10, (10,))
  assert bare.add_bos and bare.chat_template is None
  spec = _tokenizer_dir(tmp_path, config={
      "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
      "pad_token": "<|im_end|>", "chat_template": chat.CHATML},
      generation={"eos_token_id": [2 + 10, 10]})
  tok = tok_lib.get_tokenizer(spec)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (11, 12, 12)
  assert tok.stop_ids == (12, 10)
  assert not tok.add_bos  # no post-processor inserts bos, and the config does not ask
  prompts = engine.chat_prompts(tok, ["abc"], system="j")
  assert prompts == ["<|im_start|>system\nj<|im_end|>\n<|im_start|>user\nabc<|im_end|>\n"
                     "<|im_start|>assistant\n"]
  ids = tok.encode(prompts[0])
  assert ids[0] == 11 and ids.count(12) == 2
  prefix, rows = engine.tokenize_requests(tok, prompts, None)
  assert prefix == [] and rows == [ids]  # no BOS in front of the template's own marker
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
  assert tok_lib.get_tokenizer(spec).add_bos
  with pytest.raises(ValueError, match="no chat template.*chatml"):
    engine.chat_prompts(tok_lib.get_tokenizer(spec), ["abc"])
  (tmp_path / "tokenizer_config.json").write_text("{not json")
  with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
    tok_lib.get_tokenizer(spec)
