"""Tokenizers behind one small interface: byte-level (default), SentencePiece, HF `tokenizers`.

Every tokenizer has

* ``encode(text) -> list[int]``: ids of the text, **no** special tokens added;
* ``decode(ids) -> str``: text of the ids, special tokens skipped;
* ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``;
* ``stop_ids``: every id that ends a generation (``eos_id`` and, for HF models, the
  ``eos_token_id`` ids of ``generation_config.json``); ``add_bos``: whether a prompt starts with
  ``bos_id`` (False for chat models whose template carries its own markers, e.g. SmolLM2);
  ``chat_template``: the model's Jinja chat template or None (:mod:`data.chat`);
* ``token_bytes``: ``int32[vocab_size]``, the UTF-8 byte length of each token's text (0 for
  special tokens), so that ``sum(token_bytes[encode(text)]) == len(text.encode("utf-8"))``
  for text the tokenizer reproduces exactly. Bits per byte then follows from the summed
  token loss: ``bpb = sum(loss_nats) / (ln 2 * sum(token_bytes[targets]))``.

`ByteTokenizer` needs no files: ``0 = pad, 1 = bos, 2 = eos`` and byte ``b`` is ``b + 3``
(vocab 259). `get_tokenizer` builds one from a spec string: ``"byte"``,
``"sentencepiece:PATH"`` (a ``.model`` file) or ``"hf:PATH"`` (a ``tokenizer.json``).
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  token_bytes: np.ndarray

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


def encode_array(tokenizer: Tokenizer, text: str) -> np.ndarray:
  """`tokenizer.encode` as int32 numpy (the byte tokenizer has a vectorised path)."""
  fast = getattr(tokenizer, "encode_array", None)
  if fast is not None:
    return fast(text)
  return np.asarray(tokenizer.encode(text), dtype=np.int32)


class ByteTokenizer:
  """UTF-8 bytes as tokens: byte ``b`` is id ``b + 3``; ids 0/1/2 are pad/bos/eos."""

  pad_id, bos_id, eos_id = 0, 1, 2
  stop_ids, add_bos, chat_template = (2,), True, None
  num_special = 3
  vocab_size = 256 + num_special

  @functools.cached_property
  def token_bytes(self) -> np.ndarray:
    lengths = np.ones(self.vocab_size, dtype=np.int32)
    lengths[:self.num_special] = 0
    return lengths

  def encode_array(self, text: str) -> np.ndarray:
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return raw.astype(np.int32) + self.num_special

  def encode(self, text: str) -> list[int]:
    return self.encode_array(text).tolist()

  def decode(self, ids: Sequence[int]) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f"ids must lie in [0, {self.vocab_size}); got {ids.min()}..{ids.max()}.")
    raw = (ids[ids >= self.num_special] - self.num_special).astype(np.uint8).tobytes()
    return raw.decode("utf-8", errors="replace")

  def __repr__(self):
    return "ByteTokenizer()"


_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


class SentencePieceTokenizer:
  """A trained SentencePiece ``.model``.

  ``pad_id`` is the model's pad piece, or its unk piece when it has none (padding is masked
  by ``segment_ids == 0``, so the id only has to be valid). ``token_bytes`` counts "▁" as
  a space and byte-fallback pieces as one byte; with ``add_dummy_prefix`` (the SentencePiece
  default) a text's sum is one more than its length: the leading space the decoder drops.
  """

  def __init__(self, path: str):
    import sentencepiece as spm  # Optional dependency: only needed for this tokenizer.
    _check_file(path, "SentencePiece model")
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError(f"SentencePiece model {path!r} has no bos/eos piece (bos_id="
                       f"{self.bos_id}, eos_id={self.eos_id}); train it with bos_id/eos_id >= 0.")
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.unk_id()
    self.stop_ids, self.add_bos, self.chat_template = (self.eos_id,), True, None

  @functools.cached_property
  def token_bytes(self) -> np.ndarray:
    lengths = np.zeros(self.vocab_size, dtype=np.int32)
    for i in range(self.vocab_size):
      if self._sp.is_control(i) or self._sp.is_unknown(i) or self._sp.is_unused(i):
        continue
      piece = self._sp.id_to_piece(i)
      if self._sp.is_byte(i) or _BYTE_PIECE.match(piece):
        lengths[i] = 1
      else:
        lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return lengths

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])  # Control pieces decode to "".

  def __repr__(self):
    return f"SentencePieceTokenizer({self.path!r})"


def _bytes_to_unicode() -> dict[str, int]:
  """Inverse of the byte -> printable-char table used by byte-level BPE (GPT-2 style)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = list(printable), 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return {chr(c): b for b, c in zip(printable, chars)}


def _has_component(node, type_name: str) -> bool:
  if isinstance(node, dict):
    return node.get("type") == type_name or any(_has_component(v, type_name) for v in node.values())
  if isinstance(node, list):
    return any(_has_component(v, type_name) for v in node)
  return False


class HFTokenizer:
  """A Hugging Face ``tokenizer.json`` through the `tokenizers` package.

  Special tokens, first match wins: the ``bos_token``/``eos_token``/``pad_token`` arguments;
  ``tokenizer_config.json`` beside the file (as in a HF model directory, or an export written
  by :mod:`models.gguf_import`); the usual names among the file's added special tokens. A
  tokenizer with only an end-of-text token (GPT-2) uses it for bos and pad too.
  ``generation_config.json`` beside it adds its ``eos_token_id`` (an id or a list) to
  ``stop_ids``. ``add_bos`` is ``tokenizer_config.json``'s ``add_bos_token`` when set, else
  whether the file's post-processor inserts bos (True without a ``tokenizer_config.json``,
  the behaviour before these files were read). ``chat_template`` comes from it too.
  """

  BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
  EOS_CANDIDATES = ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[SEP]")
  PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")

  def __init__(self, path: str, *, bos_token: str | None = None, eos_token: str | None = None,
               pad_token: str | None = None):
    import tokenizers  # Optional dependency: only needed for this tokenizer.
    _check_file(path, "tokenizer.json")
    self.path = path
    self._tok = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self._config = json.loads(self._tok.to_str())
    self._special = {t["content"]: t["id"] for t in self._config.get("added_tokens", [])
                     if t.get("special")}
    here = os.path.dirname(os.path.abspath(path))
    tok_cfg = _read_json(os.path.join(here, "tokenizer_config.json"))
    gen_cfg = _read_json(os.path.join(here, "generation_config.json")) or {}
    bos_token = bos_token or _token_text(tok_cfg, "bos_token")
    eos_token = eos_token or _token_text(tok_cfg, "eos_token")
    pad_token = pad_token or _token_text(tok_cfg, "pad_token")
    eos = self._find(eos_token, self.EOS_CANDIDATES, "eos")
    if eos is None:
      raise ValueError(f"{path!r}: no end-of-sequence token among its special tokens "
                       f"{sorted(self._special)}; pass eos_token=.")
    self.eos_id = eos
    bos = self._find(bos_token, self.BOS_CANDIDATES, "bos")
    pad = self._find(pad_token, self.PAD_CANDIDATES, "pad")
    self.bos_id = eos if bos is None else bos
    self.pad_id = eos if pad is None else pad
    extra = gen_cfg.get("eos_token_id")
    extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
    self.stop_ids = tuple(dict.fromkeys([self.eos_id, *map(int, extra)]))
    if tok_cfg is None:
      self.add_bos = True
    elif "add_bos_token" in tok_cfg:
      self.add_bos = bool(tok_cfg["add_bos_token"])
    else:
      self.add_bos = self._tok.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]
    self.chat_template = (tok_cfg or {}).get("chat_template")

  def _find(self, explicit: str | None, candidates: tuple[str, ...], role: str) -> int | None:
    if explicit is not None:
      token_id = self._tok.token_to_id(explicit)
      if token_id is None:
        raise ValueError(f"{role}_token={explicit!r} is not in the vocabulary of {self.path!r}.")
      return token_id
    for candidate in candidates:
      if candidate in self._special:
        return self._special[candidate]
    return None

  @functools.cached_property
  def token_bytes(self) -> np.ndarray:
    byte_level = _has_component(self._config.get("decoder"), "ByteLevel")
    byte_of_char = _bytes_to_unicode()
    added = {t["id"]: t for t in self._config.get("added_tokens", [])}
    prefix = (self._config.get("model") or {}).get("continuing_subword_prefix") or ""
    lengths = np.zeros(self.vocab_size, dtype=np.int32)
    for i in range(self.vocab_size):
      if i in added:  # Added tokens are stored as plain text, never byte-mapped.
        lengths[i] = 0 if added[i].get("special") else len(added[i]["content"].encode("utf-8"))
        continue
      token = self._tok.id_to_token(i)
      if token is None:
        continue
      if byte_level and all(c in byte_of_char for c in token):
        lengths[i] = len(token)  # One printable char per byte.
      elif _BYTE_PIECE.match(token):
        lengths[i] = 1
      else:
        if prefix and token.startswith(prefix):
          token = token[len(prefix):]
        lengths[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    return lengths

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def id_to_token(self, token_id: int) -> str | None:
    return self._tok.id_to_token(int(token_id))

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def __repr__(self):
    return f"HFTokenizer({self.path!r})"


def _read_json(path: str) -> dict | None:
  if not os.path.isfile(path):
    return None
  try:
    return json.loads(open(path, encoding="utf-8").read())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it.") from None


def _token_text(config: dict | None, key: str) -> str | None:
  """A special token in ``tokenizer_config.json``: a string or an AddedToken dict."""
  value = (config or {}).get(key)
  return value.get("content") if isinstance(value, dict) else value


def _check_file(path: str, what: str) -> None:
  if not path or not os.path.isfile(path):
    raise ValueError(f"{what} file {path!r} does not exist; give the path to an existing file.")


def get_tokenizer(spec: str) -> Tokenizer:
  """``"byte"``, ``"sentencepiece:PATH"`` or ``"hf:PATH"`` -> a tokenizer."""
  kind, _, path = str(spec).partition(":")
  if kind == "byte" and not path:
    return ByteTokenizer()
  if kind == "sentencepiece" and path:
    return SentencePieceTokenizer(os.path.expanduser(path))
  if kind == "hf" and path:
    return HFTokenizer(os.path.expanduser(path))
  raise ValueError(f"unknown tokenizer spec {spec!r}; use 'byte', 'sentencepiece:PATH' "
                   "(a .model file) or 'hf:PATH' (a tokenizer.json).")
