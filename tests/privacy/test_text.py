"""privacy text audit: PII corpus, ROUGE-L and token metrics, the token-set filter, the attacks
by name, and the ReCIT audit on a tiny victim."""
import jax
import numpy as np
import pytest

from data import tokenizers
from models import lora
from privacy import attacks, pii_corpus, recit, text_metrics
from privacy import text_victim as tv
from privacy.attacks import text as text_attacks

TINY = dict(d_model=32, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, n_layers=1)


def _victim(targets=("q_proj", "v_proj", "embed"), seed=0):
  graph, params = lora.init(tv.peft_config(rank=4, targets=targets, **TINY), seed=seed)
  # B of LoRA's linears is zero at init; an earlier round makes it non-zero.
  params["peft"] = jax.tree.map(lambda x: x + 0.01, params["peft"])
  return tv.TextVictim(graph, params)


def test_pii_generator_is_deterministic_and_its_pii_is_in_the_text():
  a, b = pii_corpus.make_notes(20, seed=7), pii_corpus.make_notes(20, seed=7)
  assert a == b
  assert a != pii_corpus.make_notes(20, seed=8)
  for note in a:
    assert set(note.pii) == set(pii_corpus.PII_FIELDS)
    assert all(v in note.text for v in note.pii.values())
    assert len(note.pii["phone"]) == 8 and note.pii["phone"].isdigit()
    assert note.pii["email"].startswith(note.pii["name"].lower())


def test_encode_decode_round_trip_and_short_seq_len_error():
  notes = pii_corpus.make_notes(3, seed=1)
  batch = pii_corpus.encode(notes)
  assert batch["tokens"][:, 0].tolist() == [tokenizers.ByteTokenizer.bos_id] * 3
  assert pii_corpus.decode(batch["tokens"]) == [n.text for n in notes]
  assert batch["mask"].sum(-1).tolist() == [len(n.text.encode()) + 2 for n in notes]
  with pytest.raises(ValueError, match="seq_len=5 is shorter than the longest note"):
    pii_corpus.encode(notes, seq_len=5)


@pytest.mark.parametrize("cand,ref,p,r", [
    ("a b c d", "a b c d", 1.0, 1.0),
    ("a x c", "a b c d", 2 / 3, 2 / 4),  # LCS "a c"
    ("d c b a", "a b c d", 1 / 4, 1 / 4),  # reversed: LCS of length 1
    ("x y", "a b", 0.0, 0.0),
])
def test_rouge_l_closed_forms(cand, ref, p, r):
  score = text_metrics.rouge_l(cand.split(), ref.split())
  assert score["precision"] == pytest.approx(p) and score["recall"] == pytest.approx(r)
  assert score["f1"] == pytest.approx(0.0 if p == 0 else 2 * p * r / (p + r))


def test_lcs_matches_brute_force_on_small_sequences():
  rng = np.random.default_rng(0)
  for _ in range(20):
    a, b = list(rng.integers(0, 3, rng.integers(0, 6))), list(rng.integers(0, 3, 4))
    best = 0
    for mask in range(1 << len(a)):  # every subsequence of a; is it one of b?
      sub = [x for i, x in enumerate(a) if mask >> i & 1]
      it = iter(b)
      if all(any(x == y for y in it) for x in sub):
        best = max(best, len(sub))
    assert text_metrics.lcs_length(a, b) == best


def test_batch_scores_pick_the_best_match_and_pii_is_exact():
  notes = pii_corpus.make_notes(2, seed=3)
  texts = [n.text for n in notes][::-1]  # order does not matter
  assert text_metrics.batch_rouge_l(texts, [n.text for n in notes]) == 1.0
  assert text_metrics.pii_recovery(texts, notes)["all"] == 1.0
  broken = [t.replace(n.pii["phone"], n.pii["phone"][:-1]) for t, n in zip(texts[::-1], notes)]
  rec = text_metrics.pii_recovery(broken, notes)
  assert rec["phone"] == 0.0 and rec["name"] == 1.0 and rec["all"] == pytest.approx(2 / 3)
  pr = text_metrics.token_precision_recall([1, 2, 2, 9], [1, 2, 3])
  assert pr == {"precision": 2 / 3, "recall": 2 / 3}


@pytest.mark.parametrize("leaf", ["embedding", "lora"])
def test_token_set_recovers_exactly_the_batch_tokens(leaf):
  victim = _victim()
  notes = pii_corpus.make_notes(3, seed=5)
  batch = pii_corpus.encode(notes)
  shared = ({"embed": {"embedding": victim.embedding_gradient(batch)}} if leaf == "embedding"
            else victim.peft_gradient(batch))
  out = attacks.get("token_set")(shared, victim, {}, jax.random.key(0))
  truth = {t for n in notes for t in tokenizers.ByteTokenizer().encode(n.text)}
  assert set(out["tokens"].tolist()) == truth


def test_token_set_needs_a_row_indexed_gradient():
  victim = _victim(targets=("q_proj", "v_proj"))
  shared = victim.peft_gradient(pii_corpus.encode(pii_corpus.make_notes(1, seed=0)))
  with pytest.raises(ValueError, match="add 'embed' to model.peft_targets"):
    attacks.get("token_set")(shared, victim, {}, jax.random.key(0))


def test_soft_one_hot_loss_is_the_model_loss():
  victim = _victim()
  batch = pii_corpus.encode(pii_corpus.make_notes(2, seed=2))
  logits = lora.apply(victim.graph, victim.params, batch["tokens"], None, batch["mask"])
  logp = jax.nn.log_softmax(logits, -1)
  nll = -np.take_along_axis(np.asarray(logp[:, :-1]), batch["tokens"][:, 1:, None], -1)[..., 0]
  w = batch["mask"][:, 1:]
  want = (nll * w).sum() / w.sum()
  assert float(tv.mean_loss(victim.graph, victim.params, batch)) == pytest.approx(want, rel=1e-5)


def test_text_attacks_are_registered_and_unknown_names_fail():
  for name in ("token_set", "relaxation", "recit"):
    assert name in attacks.names()
  with pytest.raises(ValueError, match="unknown attack 'recitt'"):
    attacks.get("recitt")


def test_recit_and_relaxation_run_and_recover_the_token_set():
  """On a tiny victim both attacks return notes made of the filtered tokens only."""
  victim = _victim()
  notes = pii_corpus.make_notes(1, seed=11)
  truth = {t for n in notes for t in tokenizers.ByteTokenizer().encode(n.text)}
  for name, meta in (("recit", {"top_k": 2, "sweeps": 1}), ("relaxation", {"steps": 2})):
    out = recit.run_attack(name, victim, notes, key=jax.random.key(0), meta=meta)
    assert out["token_precision"] == 1.0, name  # only tokens the filter let through
    assert 0 <= out["rouge_l"] <= 1 and 0 <= out["pii"]["all"] <= 1
  with pytest.raises(ValueError, match="unknown defense"):
    recit.run_attack("recit", victim, notes, key=jax.random.key(0), defense="noize")
  assert truth


def test_recit_coverage_places_every_filtered_token_once_before_repeating():
  """With a dominant coverage bonus, the first |S| tokens ReCIT places are the filter's set S,
  each once (the coverage term spends every filtered token before any is repeated); without
  it, the prior and the gradient alone leave some of S out on this tiny victim."""
  victim = _victim()
  batch = pii_corpus.encode(pii_corpus.make_notes(1, seed=11))
  shared = victim.peft_gradient(batch)
  s = text_attacks.token_set(shared)
  meta = {"batch_size": 1, "max_len": len(s) + 4, "top_k": 4, "sweeps": 0, "confident": 1.01}
  out = attacks.get("recit")(shared, victim, {**meta, "coverage": 10.0}, jax.random.key(0))
  assert sorted(out["tokens"][:len(s)].tolist()) == sorted(s.tolist())
  plain = attacks.get("recit")(shared, victim, {**meta, "coverage": 0.0}, jax.random.key(0))
  assert set(plain["tokens"].tolist()) < set(s.tolist())
