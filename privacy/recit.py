"""A ReCIT audit end to end (Xie et al. 2025, arXiv:2504.20570), on the CPU-sized victim.

1. **Malicious pre-fine-tuning** (:func:`round_model`): the attacker distributes a base model
   it fine-tuned on "personal notes" (PNotes: the private notes' templates with made-up PII,
   :func:`privacy.pii_corpus.make_notes` from :data:`PNOTES_SEED`). ReCIT's aim is a model that
   memorises the note format, so the template's tokens cost little loss and the gradient is
   dominated by the PII; our attack also uses it as the prior that proposes tokens.
   ``malicious=False`` keeps the randomly initialised base (the ablation: no pre-fine-tuning;
   we have no benign pretrained base of this size, a plain limitation).
2. **Client rounds**: the client fine-tunes only the PEFT part (``earlier_rounds`` Adam steps on
   its *other* notes, so LoRA's zero factors are no longer zero), then shares the gradient of
   one private batch (:func:`shared_gradient`, optionally defended by
   :func:`privacy.defenses.apply`).
3. **Attacks** (:mod:`privacy.attacks.text`) and **scores** (:mod:`privacy.text_metrics`).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from models import lora
from privacy import defenses, pii_corpus, text_metrics
from privacy import attacks as attack_registry
from privacy.attacks import text as text_attacks
from privacy.text_victim import TextVictim, mean_loss, peft_config, train_steps

PNOTES_SEED = 1000  # the attacker's made-up notes
EARLIER_SEED = 2000  # the client's notes of earlier rounds (not the attacked batch)
SEQ_LEN = 80  # every note of the corpus fits with BOS and EOS


@dataclasses.dataclass(frozen=True)
class Setup:
  rank: int = 8
  targets: tuple = ("q_proj", "v_proj", "embed")
  malicious: bool = True
  pretrain_steps: int = 300
  pretrain_batch: int = 32
  earlier_rounds: int = 3
  seed: int = 0


def _batches(n_steps, batch_size, seed):
  notes = pii_corpus.make_notes(n_steps * batch_size, seed)
  return [pii_corpus.encode(notes[i * batch_size:(i + 1) * batch_size], seq_len=SEQ_LEN)
          for i in range(n_steps)]


def pretrained_base(setup: Setup):
  """The base the attacker distributes: PNotes-pre-fine-tuned (``malicious``) or the random
  init, and a log. It does not depend on the PEFT settings (the PEFT part starts as identity)."""
  cfg = peft_config(rank=setup.rank, targets=setup.targets)
  graph, params = lora.init(cfg, seed=setup.seed)
  if not setup.malicious:
    return params["base"], {}
  peft0 = params["peft"]
  base, losses = train_steps(
      lambda base, batch: mean_loss(graph, {"base": base, "peft": peft0}, batch),
      params["base"], _batches(setup.pretrain_steps, setup.pretrain_batch, PNOTES_SEED),
      lr=3e-3)
  return base, {"pretrain_loss": [float(losses[0]), float(losses[-1])]}


def round_model(setup: Setup, base=None) -> tuple[TextVictim, dict]:
  """The model of the attacked round (on ``base``, else :func:`pretrained_base`) and a log."""
  log = {}
  if base is None:
    base, log = pretrained_base(setup)
  cfg = peft_config(rank=setup.rank, targets=setup.targets)
  graph, params = lora.init(cfg, seed=setup.seed)
  peft = lora.init_peft(base, cfg, seed=setup.seed)
  if setup.earlier_rounds:
    peft, losses = train_steps(
        lambda peft, batch: mean_loss(graph, {"base": base, "peft": peft}, batch),
        peft, _batches(setup.earlier_rounds, 8, EARLIER_SEED), lr=1e-2)
    log["earlier_loss"] = [float(losses[0]), float(losses[-1])]
  del params
  return TextVictim(graph, {"base": base, "peft": peft}), log


def shared_gradient(victim: TextVictim, batch: dict, *, defense: str | None = None,
                    key=None, **settings):
  """The client's PEFT gradient of ``batch`` after ``defense`` (a :mod:`privacy.defenses` name)."""
  grads = victim.peft_gradient(batch)
  if defense in (None, "none"):
    return grads
  if defense in defenses.PER_EXAMPLE:
    raise ValueError(f"defense {defense!r} needs per-example gradients; this audit supports "
                     "noise, clip and topk.")
  return defenses.apply(grads, defense, key=key, **settings)


def score(result: dict, notes, batch) -> dict:
  """PII recovery, token precision/recall and ROUGE-L of an attack's ``{tokens, texts}``."""
  truth = text_attacks._content(batch["tokens"])
  pr = text_metrics.token_precision_recall(result["tokens"], truth)
  return {"pii": text_metrics.pii_recovery(result["texts"], notes),
          "token_precision": pr["precision"], "token_recall": pr["recall"],
          "rouge_l": text_metrics.batch_rouge_l(result["texts"], [n.text for n in notes])}


def run_attack(name: str, victim: TextVictim, notes, *, key, defense=None, meta=None,
               **defense_settings) -> dict:
  """Encodes ``notes``, shares their gradient, runs attack ``name``, scores it."""
  attack = attack_registry.get(name)
  batch = pii_corpus.encode(notes, seq_len=SEQ_LEN)
  dkey, akey = jax.random.split(key)
  shared = shared_gradient(victim, batch, defense=defense, key=dkey, **defense_settings)
  lengths = batch["mask"].sum(-1)
  meta = {"batch_size": len(notes), "max_len": SEQ_LEN, "lengths": lengths, **(meta or {})}
  result = attack(shared, victim, meta, akey)
  return {**score(result, notes, batch), "texts": result["texts"][:4]}


def private_batch(batch_size: int, trial: int):
  """The attacked client's private notes of one trial (seeds disjoint from the attacker's)."""
  return pii_corpus.make_notes(batch_size, seed=10_000 * (trial + 1) + batch_size)


def mean_scores(rows) -> dict:
  keys = ("token_precision", "token_recall", "rouge_l")
  out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  out["pii"] = float(np.mean([r["pii"]["all"] for r in rows]))
  for field in pii_corpus.PII_FIELDS:
    out[f"pii_{field}"] = float(np.mean([r["pii"][field] for r in rows]))
  return out
