"""The text audit behind ``python -m privacy.main`` (``config.modality="text"``): ReCIT on a
LoRA client's gradient (:mod:`privacy.recit`) for each attack of the config, under its defense.

Returns, per attack, the mean exact PII recovery (overall and per field), token set
precision/recall and ROUGE-L over ``trials`` private batches of ``batch_size`` notes, and
writes the first reconstructed notes of each attack to ``WORKDIR/reconstructions.txt``.
"""
from __future__ import annotations

import pathlib
import time

import jax

from privacy import recit
from privacy.attacks import text as _text_attacks  # noqa: F401  (registers the attacks)


def _meta(config, name: str) -> dict:
  t = config.text
  if name == "recit":
    return {"top_k": int(t.top_k), "sweeps": int(t.sweeps), "coverage": float(t.coverage)}
  if name == "relaxation":
    return {"steps": int(t.relax_steps)}
  return {}


def run(config, workdir, *, overwrite: bool = False, log=print) -> dict:
  del overwrite  # nothing is cached in the workdir
  t = config.text
  setup = recit.Setup(rank=int(t.lora_rank), targets=tuple(t.peft_targets),
                      malicious=bool(t.malicious), pretrain_steps=int(t.pretrain_steps),
                      seed=int(config.seed))
  t0 = time.time()
  victim, setup_log = recit.round_model(setup)
  log(f"round model ready in {time.time() - t0:.0f} s: {setup_log}")
  settings = (dict(config.defenses[config.defense])
              if config.defense in config.defenses else {})
  results, examples = {"setup": setup_log}, []
  for name in config.attacks:
    rows = []
    for trial in range(int(config.trials)):
      notes = recit.private_batch(int(config.batch_size), trial)
      rows.append(recit.run_attack(name, victim, notes, key=jax.random.key(trial),
                                   defense=config.defense, meta=_meta(config, name), **settings))
    results[name] = recit.mean_scores(rows)
    examples += [f"[{name}] {text}" for text in rows[0]["texts"]]
    log(f"{name}: {results[name]}")
  (pathlib.Path(workdir) / "reconstructions.txt").write_text("\n".join(examples) + "\n")
  return results
