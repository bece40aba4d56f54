"""Tokenizers: round trips, special ids, token_bytes sums, spec parsing and errors."""
import numpy as np
import pytest
import sentencepiece as spm  # [dev] extra: trains the tiny test models in-process.
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from data import tokenizers as tok_lib

TEXTS = [
    "def f(x):\n    return x + 1  # plain ASCII\n",
    "naïve café — 東京 🚀 ü\tß",
    "",
    "   leading and  double  spaces  ",
]

TRAIN_LINES = [
    "def add(a, b):", "    return a + b", "class Point:", "    x: int = 0",
    "naïve café über straße", "東京 大阪 京都",
    "the quick brown fox jumps over the lazy dog",
    "import numpy as np", "for i in range(10): print(i)", "while True: break",
] * 20


def _check_common(tok, texts):
  assert tok.token_bytes.shape == (tok.vocab_size,)
  for special in (tok.bos_id, tok.eos_id, tok.pad_id):
    assert 0 <= special < tok.vocab_size
    assert tok.token_bytes[special] == 0
  for text in texts:
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == text
    # Special ids are skipped by decode.
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == text
    assert int(tok.token_bytes[np.asarray(ids, dtype=np.int64)].sum()) == len(text.encode("utf-8"))
    np.testing.assert_array_equal(tok_lib.encode_array(tok, text), np.asarray(ids, np.int32))


def test_byte_tokenizer_ids_and_round_trip():
  tok = tok_lib.ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
  assert tok.encode("A\u00e9") == [ord("A") + 3, 0xC3 + 3, 0xA9 + 3]
  assert list(tok.token_bytes[:3]) == [0, 0, 0] and set(tok.token_bytes[3:]) == {1}
  _check_common(tok, TEXTS)
  with pytest.raises(ValueError, match="ids must lie"):
    tok.decode([259])


def test_sentencepiece_trained_in_process(tmp_path):
  prefix = str(tmp_path / "sp")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TRAIN_LINES), model_prefix=prefix, vocab_size=320,
      model_type="bpe", byte_fallback=True, character_coverage=1.0,
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, split_by_whitespace=True, allow_whitespace_only_pieces=True,
      pad_id=3, bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
  tok = tok_lib.get_tokenizer(f"sentencepiece:{prefix}.model")
  assert isinstance(tok, tok_lib.SentencePieceTokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (3, 1, 2)
  # Multi-byte pieces exist (the test would be trivial with bytes only).
  assert tok.token_bytes.max() > 1
  _check_common(tok, TEXTS + TRAIN_LINES[:10] + ["unseen: ÆØÅ ∑ 🤖"])


def test_hf_bpe_trained_in_process(tmp_path):
  hf = tokenizers.Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  hf.train_from_iterator(TRAIN_LINES, trainer=trainer)
  path = str(tmp_path / "tokenizer.json")
  hf.save(path)
  tok = tok_lib.get_tokenizer(f"hf:{path}")
  assert isinstance(tok, tok_lib.HFTokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.token_bytes.max() > 1
  _check_common(tok, TEXTS + TRAIN_LINES[:10] + ["unseen: ÆØÅ ∑ 🤖"])


def test_hf_eos_only_tokenizer_reuses_eos(tmp_path):
  hf = tokenizers.Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.train_from_iterator(TRAIN_LINES, trainer=trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  path = str(tmp_path / "gpt2ish.json")
  hf.save(path)
  tok = tok_lib.HFTokenizer(path)
  assert tok.bos_id == tok.eos_id == tok.pad_id == hf.token_to_id("<|endoftext|>")
  with pytest.raises(ValueError, match="bos_token='<nope>'"):
    tok_lib.HFTokenizer(path, bos_token="<nope>")


@pytest.mark.parametrize("spec, match", [
    ("bytes", "unknown tokenizer spec"),
    ("byte:extra", "unknown tokenizer spec"),
    ("sentencepiece:", "unknown tokenizer spec"),
    ("sentencepiece:/nonexistent/sp.model", "does not exist"),
    ("hf:/nonexistent/tokenizer.json", "does not exist"),
])
def test_bad_specs_raise(spec, match):
  with pytest.raises(ValueError, match=match):
    tok_lib.get_tokenizer(spec)


def test_byte_spec():
  assert isinstance(tok_lib.get_tokenizer("byte"), tok_lib.ByteTokenizer)
