"""GIFD (Fang et al., ICCV 2023) and its baselines on 16x16 digits: how much a shared gradient
of our convnet gives away, per attack, batch size and defense, and out of distribution.

    python -m reports.gifd            # writes reports/gifd.{md,json,png} + gifd_b1.png (CPU)
    python -m reports.gifd --quick    # smoke run (CI): a few steps of everything, temp dir
    python -m reports.gifd --from-json  # re-renders gifd.md from reports/gifd.json

Setting (``configs/privacy/gifd_digits.py`` defaults, :mod:`privacy.image_audit`): the
DCGAN prior trained on the ``prior`` part of the digits (3000 steps), the convnet victim
trained on the ``victim`` part (300 steps), private batches with distinct labels from the
``private`` part; labels inferred from the last layer's gradient. Attacks: DLG (L-BFGS, 300
steps), IG (signed Adam, 1000 steps, TV 1e-2), latent search (z, 300 steps x 2 restarts),
GIFD (z then two feature stages, 300 steps each, l1 radii 0.05 per entry, 2 restarts).
Tables: every attack at batch 1/4/8 without defense; every attack at batch 1 under each
defense (GIFD's settings: noise 0.01, clip 4, top-k 20% kept, pruning 10%; DP-SGD clip 1,
noise multiplier 1); the OOD case (prior on digits 0-4, private digits 5-9).
"""
from __future__ import annotations

import json
import pathlib
import tempfile
import time

import numpy as np

from configs import common as config_common
from privacy import image_audit
from reports import common

ATTACKS = ("dlg", "ig", "latent", "gifd")
DEFENSES = ("noise", "clip", "topk", "prune", "dpsgd")
FULL = dict(batch_sizes=(1, 4, 8), trials={1: 3, 4: 2, 8: 1}, defense_trials=2, ood_trials=2)
QUICK = dict(batch_sizes=(1,), trials={1: 1}, defense_trials=1, ood_trials=1)
LABELS = {"dlg": "DLG (L2, L-BFGS)", "ig": "IG (cosine + TV)",
          "latent": "latent only (GI-z / GGL-like)", "gifd": "GIFD"}


def _config(quick: bool, ood: bool = False):
  c = config_common.privacy_config()
  if ood:
    c.prior.classes = (0, 1, 2, 3, 4)
    c.private_classes = (5, 6, 7, 8, 9)
  if quick:
    c.prior.steps, c.prior.batch_size, c.victim.steps = 3, 16, 3
    c.attack.steps = c.attack.dlg_steps = c.attack.stage_steps = 2
    c.attack.restarts = 1
  return c


def _row(s, config, attack, **kw):
  scores, rec, truth = image_audit.evaluate(s, config, attack, **kw)
  print(f"  {attack:7s} {kw}: PSNR {scores['psnr']:.2f} SSIM {scores['ssim']:.3f} "
        f"labels {scores['label_accuracy']:.2f} ({scores['seconds']:.0f} s)", flush=True)
  return scores, rec, truth


def run(quick: bool, workdir: pathlib.Path) -> tuple[dict, dict]:
  plan = QUICK if quick else FULL
  config = _config(quick)
  start = time.time()
  s = image_audit.setup(config, workdir / "in_dist", overwrite=True)
  results = {"victim_train_accuracy": s.victim_accuracy, "prior_final_losses": s.prior_losses,
             "batch": {}, "defense": {}, "ood": {}}
  figures = {"b1": {}, "bmax": {}}
  for b in plan["batch_sizes"]:
    print(f"batch {b}, no defense", flush=True)
    results["batch"][b] = {}
    for a in ATTACKS:
      scores, rec, truth = _row(s, config, a, batch_size=b, trials=plan["trials"][b])
      results["batch"][b][a] = scores
      if b == 1:
        figures["b1"].setdefault("none", {"truth": truth[:1]})[a] = rec[:1]
      if b == max(plan["batch_sizes"]):
        figures["bmax"]["truth"], figures["bmax"][a] = truth[:b], rec[:b]
  for d in DEFENSES:
    print(f"batch 1, defense {d}", flush=True)
    results["defense"][d] = {}
    for a in ATTACKS:
      scores, rec, truth = _row(s, config, a, defense=d, batch_size=1,
                                trials=plan["defense_trials"])
      results["defense"][d][a] = scores
      figures["b1"].setdefault(d, {"truth": truth[:1]})[a] = rec[:1]
  ood_config = _config(quick, ood=True)
  so = image_audit.setup(ood_config, workdir / "ood", overwrite=True, victim=s)
  results["ood_prior_final_losses"] = so.prior_losses
  print("OOD: prior on 0-4, private 5-9, batch 1", flush=True)
  for a in ATTACKS:
    scores, rec, truth = _row(so, ood_config, a, batch_size=1, trials=plan["ood_trials"])
    results["ood"][a] = scores
    figures["b1"].setdefault("OOD", {"truth": truth[:1]})[a] = rec[:1]
  results["seconds"] = time.time() - start
  return results, figures


def save_figures(figures: dict, out: pathlib.Path):
  bmax = figures["bmax"]
  image_audit.save_grid(out / "gifd.png", bmax["truth"], {a: bmax[a] for a in ATTACKS}, LABELS)
  conds = list(figures["b1"])
  truth = np.concatenate([figures["b1"][c]["truth"] for c in conds])
  rows = {a: np.concatenate([figures["b1"][c][a] for c in conds]) for a in ATTACKS}
  image_audit.save_grid(out / "gifd_b1.png", truth, rows, LABELS, columns=conds)
  return conds


def _table(rows: dict, keys, key_name: str) -> list[str]:
  lines = [f"| {key_name} | " + " | ".join(LABELS[a] for a in ATTACKS) + " |",
           "|---|" + "---|" * len(ATTACKS)]
  for k in keys:
    cells = [f"{rows[k][a]['psnr']:.2f} / {rows[k][a]['ssim']:.3f} / "
             f"{rows[k][a]['feature_distance']:.2f}" for a in ATTACKS]
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  return lines


def _ordering(scores: dict) -> str:
  order = sorted(ATTACKS, key=lambda a: -scores[a]["psnr"])
  return " > ".join(f"{a} ({scores[a]['psnr']:.1f})" for a in order)


def _observations(results: dict, b1: dict) -> list[str]:
  """Sentences computed from the numbers (so that a rerun rewrites them)."""
  soft = [d for d in results["defense"] if d != "dpsgd"]
  worst = min(soft, key=lambda d: results["defense"][d]["gifd"]["psnr"])
  lines = [
      f"- The generator prior carries the attack: at batch 1 latent search alone reaches "
      f"{b1['latent']['psnr']:.1f} dB and GIFD's feature stages add "
      f"{b1['gifd']['psnr'] - b1['latent']['psnr']:+.1f} dB; the pixel-space attacks (IG, DLG) "
      f"stay at {b1['ig']['psnr']:.1f} and {b1['dlg']['psnr']:.1f} dB.",
      f"- Noise, clipping, top-k and pruning at GIFD's settings leave GIFD at "
      f">= {results['defense'][worst]['gifd']['psnr']:.1f} dB (worst: {worst}); DP-SGD (clip 1, "
      f"noise multiplier 1 on one example) brings every attack down to "
      f"<= {max(results['defense']['dpsgd'][a]['psnr'] for a in ATTACKS):.1f} dB.",
      f"- Out of distribution, GIFD scores {results['ood']['gifd']['psnr']:.1f} dB vs "
      f"{b1['gifd']['psnr']:.1f} in distribution and latent search "
      f"{results['ood']['latent']['psnr']:.1f} vs {b1['latent']['psnr']:.1f}: on digits a prior "
      "trained on 0-4 still spans the strokes of 5-9 (different private images, so the "
      "columns compare cases, not the same images).",
      "- Cells average 1-3 trials (per-trial PSNRs in the JSON); differences of a dB or two "
      "between neighbouring cells are within trial-to-trial spread."]
  return lines


def write_report(results: dict, conds: list[str], out: pathlib.Path, command: str):
  results = {**results, "batch": {int(k): v for k, v in results["batch"].items()}}
  b1 = results["batch"][min(results["batch"])]
  reproduced = b1["gifd"]["psnr"] > b1["ig"]["psnr"] and b1["gifd"]["psnr"] > b1["latent"]["psnr"]
  verdict = ("reproduces" if reproduced else "does **not** reproduce")
  bsizes = sorted(results["batch"])
  lines = [
      "# GIFD vs DLG / IG / latent search on digits (issue 18)", "",
      f"Every number below comes from `{command}` (its JSON: `gifd.json`); "
      f"the whole run took {results['seconds'] / 60:.0f} min on the CPU.", "",
      "Setting: scikit-learn digits at 16x16; a DCGAN prior trained on the `prior` part; the "
      "convnet victim (train accuracy "
      f"{results['victim_train_accuracy']:.2f}) trained on the disjoint `victim` part; "
      "private batches (distinct labels) from the `private` part; labels inferred from the "
      "last layer's gradient. Cells are **PSNR (dB) / SSIM / victim-feature distance**, means "
      "over the trials (order-matched; 3 at batch 1, 2 at batch 4, 1 at batch 8, 2 per "
      "defense and OOD). The feature distance is the relative L2 distance of "
      "the victim's representation, **not LPIPS** (LPIPS downloads pretrained backbones; it "
      "is not computed). Higher PSNR/SSIM and lower feature distance are better for the "
      "attacker.", "",
      "## The paper's claim next to ours", "",
      "GIFD (Fang et al., ICCV 2023) reports that searching the GAN's intermediate feature "
      "domains reconstructs better than IG, GI and GAN-latent attacks (GGL, GIAS): at batch 1 "
      "its PSNR is the highest (ImageNet/FFHQ 64x64, ResNet18, BigGAN/StyleGAN2 priors).", "",
      f"Ours at batch {min(bsizes)}: {_ordering(b1)}. The paper's ordering (GIFD above IG and "
      f"above latent-only) **{verdict}** here.", "",
      "## Batch size (no defense)", "",
      *_table(results["batch"], bsizes, "batch"), "",
      "Label-inference accuracy (fraction of the batch's labels among the inferred ones): "
      + ", ".join(f"batch {b}: {results['batch'][b]['gifd']['label_accuracy']:.2f}"
                  for b in bsizes)
      + ". Beyond batch 1 the most-negative-column rule misses labels (likely because "
      "the trained victim is confident, so a true class's negative term is small next to the "
      "other examples' positive ones); a wrong label costs every attack there.", "",
      "## Defenses (batch 1)", "",
      *_table({"none": b1, **results["defense"]}, ["none", *results["defense"]], "defense"), "",
      "## Out of distribution (batch 1)", "",
      "Prior trained on digits 0-4 only; private images are digits 5-9.", "",
      *_table({"OOD": results["ood"], "in-distribution": b1}, ["OOD", "in-distribution"],
              "case"), "",
      "## Observations", "",
      *_observations(results, b1), "",
      "## Figures", "",
      f"`gifd.png`: batch {max(bsizes)} without defense, truth on top, one row per attack.", "",
      "![batch reconstructions](gifd.png)", "",
      "`gifd_b1.png`: batch 1, one column per condition (" + ", ".join(conds) + "), "
      "the first trial of each.", "",
      "![batch-1 reconstructions](gifd_b1.png)", "",
      "## Caveats", "",
      "- A tiny DCGAN (3 blocks) stands in for BigGAN/StyleGAN2: GIFD here has two feature "
      "stages, not 8-13; budgets are hundreds of steps, not thousands; 2-3 trials per cell.",
      "- The GAN-latent baseline is a gradient search over z (GI-z), not GGL's CMA-ES; GIAS's "
      "generator fine-tuning is not run.",
      "- Defended gradients are attacked as if undefended (no defense-aware attacker).", ""]
  (out / "gifd.md").write_text("\n".join(lines))


def main(argv=None):
  parser = common.arg_parser(__doc__)
  parser.add_argument("--from-json", action="store_true",
                      help="re-render gifd.md from the JSON in the output directory")
  args = parser.parse_args(argv)
  out = common.out_dir(args)
  if args.from_json:
    record = json.loads((out / "gifd.json").read_text())
    conds = ["none", *record["results"]["defense"], "OOD"]
    write_report(record["results"], conds, out, record["command"].replace(" --from-json", ""))
    print(f"wrote {out / 'gifd.md'}")
    return
  with tempfile.TemporaryDirectory(prefix="effijax-gifd-") as tmp:
    results, figures = run(args.quick, pathlib.Path(tmp))
  conds = save_figures(figures, out)
  plan = QUICK if args.quick else FULL
  common.write_json(out / "gifd.json", name="gifd",
                    config={**{k: str(v) for k, v in plan.items()}, "quick": args.quick,
                            "privacy_config": _config(args.quick).to_dict()},
                    results=results)
  command = "python -m reports.gifd" + (" --quick" if args.quick else "")
  write_report(results, conds, out, command)
  if args.quick:
    common.mark_quick(out / "gifd.md")
  print(f"wrote {out / 'gifd.md'}")


if __name__ == "__main__":
  main()
