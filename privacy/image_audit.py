"""The image audit end to end: prior, victim, private batches, shared gradients, attacks, scores.

:func:`setup` builds (or reuses) the pieces of a config (:func:`configs.common.privacy_config`);
:func:`evaluate` attacks ``trials`` private batches with one attack under one defense and
returns the mean PSNR / SSIM / victim-feature distance and label accuracy; :func:`run` does
every attack of the config and writes the image grid.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import jax
import numpy as np

from core import checkpoint
from models import dcgan
from privacy import attacks, image_data, image_victim, metrics, prior
from privacy.attacks import image as image_attacks  # noqa: F401  (registers the attacks)


@dataclasses.dataclass
class Setup:
  victim: object  # privacy.client.Victim
  prior: tuple  # (graphdef, params, cfg)
  private: dict
  victim_accuracy: float
  prior_losses: tuple | None


def _prior_settings(config) -> dict:
  classes = config.prior.classes
  return {"steps": int(config.prior.steps), "batch_size": int(config.prior.batch_size),
          "classes": None if classes is None else [int(c) for c in classes],
          "seed": int(config.seed)}


def load_or_train_prior(config, directory: pathlib.Path, *, overwrite: bool = False, log=print):
  """The prior export in ``directory``, trained first if absent (or stale with ``overwrite``)."""
  settings = _prior_settings(config)
  if checkpoint.is_export(directory):
    gdef, params, cfg, meta = prior.load(directory)
    if meta.get("prior_settings") == settings:
      return (gdef, params, cfg), None
    if not overwrite:
      raise ValueError(f"{directory} holds a prior trained with {meta.get('prior_settings')}, "
                       f"not {settings}; pass --overwrite to retrain it or use another workdir.")
  data = image_data.load("prior", classes=settings["classes"])
  t = time.time()
  gdef, params, losses = prior.train(data["images"], steps=settings["steps"],
                                     batch_size=settings["batch_size"], seed=settings["seed"],
                                     log=log)
  log(f"prior trained in {time.time() - t:.0f} s on {len(data['images'])} images")
  cfg = dcgan.Config()
  prior.save(directory, params, cfg, overwrite=True, extra={"prior_settings": settings})
  return (gdef, params, cfg), losses


def setup(config, workdir: pathlib.Path, *, overwrite: bool = False, log=print,
          victim: Setup | None = None) -> Setup:
  """Prior (from ``workdir/prior``), victim and private data of ``config``; ``victim`` reuses
  another setup's trained victim (the same model object keeps the compiled attacks)."""
  gen, losses = load_or_train_prior(config, workdir / "prior", overwrite=overwrite, log=log)
  if victim is None:
    gdef, params, acc = image_victim.train(image_data.load("victim"),
                                           steps=int(config.victim.steps), seed=int(config.seed))
    model = image_victim.victim(gdef, params)
  else:
    model, acc = victim.victim, victim.victim_accuracy
  private = image_data.load("private", classes=config.private_classes)
  return Setup(model, gen, private, acc, losses)


def attack_meta(config, shape, gen) -> dict:
  a = config.attack
  return {"shape": tuple(shape), "labels": None, "prior": gen, "steps": int(a.steps),
          "dlg_steps": int(a.dlg_steps), "stage_steps": int(a.stage_steps),
          "restarts": int(a.restarts), "radii": tuple(float(r) for r in a.radii),
          "lr": float(a.lr), "tv": float(a.tv)}


def defense_settings(config, defense: str) -> dict:
  return dict(config.defenses[defense]) if defense in config.defenses else {}


def evaluate(s: Setup, config, attack: str, *, defense: str = "none", batch_size: int = 1,
             trials: int = 1, seed: int = 0):
  """``(scores, reconstructions, truths)``: mean scores over ``trials`` private batches, and
  the (order-matched) reconstructions and true images of every trial."""
  fn = attacks.get(attack)
  settings = defense_settings(config, defense)
  feats = functools.partial(_features, s.victim)
  rows, recs, truths = [], [], []
  for t in range(trials):
    batch = image_data.distinct_label_batch(s.private, batch_size, seed=seed * 1000 + t)
    key = jax.random.fold_in(jax.random.key(seed), t)
    shared = s.victim.share(batch, defense=defense, key=key, **settings)
    labels = np.asarray(image_attacks.infer_labels(shared, batch_size))
    start = time.time()
    rec = np.asarray(fn(shared, s.victim, attack_meta(config, batch["images"].shape, s.prior),
                        jax.random.fold_in(key, 1)))
    seconds = time.time() - start
    rec = metrics.match_order(rec, batch["images"])
    row = metrics.summarize(rec, batch["images"], feats)
    row["label_accuracy"] = float(np.mean(np.isin(batch["labels"], labels)))
    row["seconds"] = seconds
    rows.append(row)
    recs.append(rec)
    truths.append(batch["images"])
  scores = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  scores["psnr_per_trial"] = [r["psnr"] for r in rows]
  return scores, np.concatenate(recs), np.concatenate(truths)


def _features(victim, images):
  return np.asarray(victim.features_fn(victim.params, {"images": images}))


def save_grid(path: pathlib.Path, truth: np.ndarray, rows: dict[str, np.ndarray],
              titles: dict[str, str] | None = None, columns: list[str] | None = None):
  """A PNG: the true images on top, then one row of reconstructions per attack."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = ["truth"] + list(rows)
  n = len(truth)
  fig, axes = plt.subplots(len(names), n, figsize=(1.1 * n + 1.2, 1.1 * len(names)),
                           squeeze=False)
  for i, name in enumerate(names):
    images = truth if name == "truth" else rows[name]
    for j in range(n):
      ax = axes[i, j]
      ax.imshow(np.clip(images[j, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    if i == 0 and columns:
      for j, col in enumerate(columns):
        axes[0, j].set_title(col, fontsize=8)
    axes[i, 0].set_ylabel((titles or {}).get(name, name), rotation=0, ha="right", va="center",
                          fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config, workdir: pathlib.Path, *, overwrite: bool = False, log=print) -> dict:
  """Every attack of ``config`` at its batch size and defense; writes ``grid.png``."""
  s = setup(config, workdir, overwrite=overwrite, log=log)
  results, recs, truth = {}, {}, None
  for name in config.attacks:
    scores, rec, truth = evaluate(s, config, name, defense=config.defense,
                                  batch_size=int(config.batch_size), trials=int(config.trials),
                                  seed=int(config.seed))
    log(f"{name}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}")
    results[name], recs[name] = scores, rec
  save_grid(workdir / "grid.png", truth, recs)
  return {"victim_train_accuracy": s.victim_accuracy, "prior_final_losses": s.prior_losses,
          "attacks": results}
