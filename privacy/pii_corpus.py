"""A synthetic private corpus: short personal notes holding PII, from fixed-seed generators.

Each note fills one of :data:`TEMPLATES` with a first name (from :data:`NAMES`, a public list
of common names), an 8-digit phone number and an email address, e.g. ReCIT's example (Xie et al.
2025, arXiv:2504.20570): ``"Hi, I'm Juliana. My phone number is 93254376."``. The same seed
always gives the same notes (``numpy.random.default_rng``), so a victim's private batch and the
attacker's "personal notes" (PNotes, the same templates with other PII: the attacker knows
the format, never the values) come from disjoint seeds.

:func:`encode` turns notes into the fixed-shape batch the text victim trains on:
``tokens [B, T]`` = BOS, the note's tokens, EOS, then padding, and ``mask [B, T]`` = 1 on BOS
through EOS. The tokenizer is any of :mod:`data.tokenizers` (the byte tokenizer by default).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data import tokenizers

NAMES = ("Juliana", "Marcus", "Aisha", "Tomas", "Elena", "Kenji", "Priya", "Oliver", "Sofia",
         "Mateo", "Hannah", "Yusuf", "Chloe", "Dmitri", "Amara", "Lucas", "Ingrid", "Rafael",
         "Mei", "Jonas", "Leila", "Victor", "Nadia", "Samuel", "Freya", "Omar", "Clara", "Ivan",
         "Zara", "Felix", "Noor", "Hugo", "Anya", "Diego", "Maya", "Pavel", "Lina", "Emil",
         "Rosa", "Theo")
DOMAINS = ("mail.com", "inbox.org", "post.net", "home.io")
TEMPLATES = (
    "Hi, I'm {name}. My phone number is {phone}. Email me at {email}.",
    "Note to self: {name} can be reached at {phone} or {email}.",
    "My name is {name}, my number is {phone} and my email is {email}.",
)
PII_FIELDS = ("name", "phone", "email")


@dataclasses.dataclass(frozen=True)
class Note:
  text: str
  pii: dict  # field -> the exact string in ``text``


def make_notes(n: int, seed: int) -> list[Note]:
  """``n`` notes from ``seed`` (deterministic): name, phone and email drawn independently."""
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n={n!r} notes must be a positive int.")
  rng = np.random.default_rng(seed)
  notes = []
  for _ in range(n):
    name = NAMES[rng.integers(len(NAMES))]
    phone = "".join(str(d) for d in rng.integers(0, 10, 8))
    email = f"{name.lower()}{rng.integers(10, 100)}@{DOMAINS[rng.integers(len(DOMAINS))]}"
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    pii = {"name": name, "phone": phone, "email": email}
    notes.append(Note(template.format(**pii), pii))
  return notes


def max_tokens(notes, tokenizer) -> int:
  """Length of the longest encoded note, with BOS and EOS."""
  return max(len(tokenizer.encode(n.text if isinstance(n, Note) else n)) for n in notes) + 2


def encode(notes, tokenizer=None, seq_len: int | None = None) -> dict:
  """``{"tokens": int32 [B, T], "mask": int32 [B, T]}`` for notes (``Note``s or strings)."""
  tokenizer = tokenizer or tokenizers.ByteTokenizer()
  texts = [n.text if isinstance(n, Note) else str(n) for n in notes]
  need = max_tokens(texts, tokenizer)
  seq_len = need if seq_len is None else int(seq_len)
  if seq_len < need:
    raise ValueError(f"seq_len={seq_len} is shorter than the longest note ({need} tokens with "
                     f"BOS and EOS); pass seq_len >= {need}.")
  tokens = np.full((len(texts), seq_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), seq_len), np.int32)
  for i, text in enumerate(texts):
    ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1
  return {"tokens": tokens, "mask": mask}


def decode(tokens, tokenizer=None) -> list[str]:
  """The notes' texts back from ``tokens [B, T]``: each row up to its first EOS, specials
  dropped."""
  tokenizer = tokenizer or tokenizers.ByteTokenizer()
  out = []
  for row in np.asarray(tokens):
    row = list(row)
    if tokenizer.eos_id in row:
      row = row[:row.index(tokenizer.eos_id)]
    out.append(tokenizer.decode([t for t in row if t not in (tokenizer.pad_id,
                                                             tokenizer.bos_id)]))
  return out
