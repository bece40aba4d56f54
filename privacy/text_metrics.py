"""How much of a private text batch an attack recovered: PII, tokens, ROUGE-L.

* :func:`rouge_l`: ROUGE-L (Lin 2004) between a candidate and a reference sequence,
  ``R = LCS / len(ref)``, ``P = LCS / len(cand)``, ``F1 = 2PR / (P + R)`` (0 when the LCS is
  empty), with the LCS by the classic ``O(mn)`` dynamic programme.
* :func:`batch_rouge_l`: a reconstruction of a batch comes back unordered, so each reference
  note is scored against its best reconstructed note (word-level ROUGE-L F1), then averaged.
* :func:`token_precision_recall`: precision/recall of the *set* of recovered token ids against
  the set of the batch's tokens (what the token-set baseline can recover; specials excluded by
  the caller).
* :func:`pii_recovery`: the fraction of the batch's PII strings (names, phones, emails) that
  appear verbatim in some reconstructed note: ReCIT's exact PII recovery.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def lcs_length(a: Sequence, b: Sequence) -> int:
  """Length of the longest common subsequence of ``a`` and ``b``."""
  if not len(a) or not len(b):
    return 0
  prev = np.zeros(len(b) + 1, np.int64)
  for x in a:
    cur = np.zeros_like(prev)
    for j, y in enumerate(b, start=1):
      cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
    prev = cur
  return int(prev[-1])


def rouge_l(candidate: Sequence, reference: Sequence) -> dict[str, float]:
  """``{"precision", "recall", "f1"}`` of ROUGE-L; empty inputs score 0."""
  lcs = lcs_length(candidate, reference)
  if lcs == 0:
    return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
  p, r = lcs / len(candidate), lcs / len(reference)
  return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def batch_rouge_l(reconstructed: Sequence[str], references: Sequence[str]) -> float:
  """Mean over references of the best word-level ROUGE-L F1 against any reconstruction."""
  if not references:
    raise ValueError("batch_rouge_l needs at least one reference note.")
  if not reconstructed:
    return 0.0
  cands = [c.split() for c in reconstructed]
  return float(np.mean([max(rouge_l(c, ref.split())["f1"] for c in cands)
                        for ref in references]))


def token_precision_recall(recovered: Sequence[int], truth: Sequence[int]) -> dict[str, float]:
  """Set precision ``|R & T| / |R|`` and recall ``|R & T| / |T|`` of distinct token ids (an
  empty recovered set has precision 0)."""
  rec, tru = {int(t) for t in recovered}, {int(t) for t in truth}
  if not tru:
    raise ValueError("token_precision_recall needs a non-empty set of true tokens.")
  hit = len(rec & tru)
  return {"precision": hit / max(len(rec), 1), "recall": hit / len(tru)}


def pii_recovery(reconstructed: Sequence[str], notes) -> dict[str, float]:
  """Fraction of PII strings found verbatim in a reconstructed note, overall and per field."""
  found: dict[str, list[bool]] = {}
  for note in notes:
    for field, value in note.pii.items():
      found.setdefault(field, []).append(any(value in text for text in reconstructed))
  out = {field: float(np.mean(v)) for field, v in found.items()}
  out["all"] = float(np.mean([x for v in found.values() for x in v]))
  return out
