"""ReCIT on LoRA gradients: how much PII and text a PEFT client's shared gradient gives away.

    python -m reports.recit            # writes reports/recit.{md,json,png} (CPU, ~25 min)
    python -m reports.recit --from-json   # re-renders recit.md/.png from recit.json
    python -m reports.recit --quick    # smoke run (CI): toy steps, batch 1, temp dir

Setting (``privacy/recit.py``): the private data are synthetic notes with a name, an 8-digit
phone number and an email (``privacy/pii_corpus.py``), byte-tokenized. The victim is an
lm_tiny-sized decoder (d 64, 2 layers, untied embeddings, ``privacy/text_victim.py``) with LoRA
(rank 8, alpha 16) on q, v and the token embedding; the base is frozen. The attacker
distributes a base it pre-fine-tuned for 300 steps of 32 on "personal notes" (the templates
with made-up PII); the client ran 3 earlier PEFT steps on other notes, then shares the PEFT
gradient of one private batch. Attacks (``privacy/attacks/text.py``): ``token_set`` (non-zero
rows of the embedding-LoRA gradient), ``relaxation`` (DLG/LAMP-style cosine matching of soft
tokens over the filtered vocabulary, given the notes' lengths), ``recit`` (our documented
version: token filter + prefix pairing by matching pursuit, with a coverage bonus that places
every filtered token once before any is repeated, + one coordinate-descent sweep at batch <= 4).
Scores (``privacy/text_metrics.py``): exact PII recovery, set precision/recall of
tokens, word-level ROUGE-L F1 of each note against its best reconstruction.
"""
from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np

from privacy import defenses, pii_corpus, recit, text_victim
from reports import common

# ``batch_trials``: private batches per cell of the batch-size table (seeded, disjoint:
# ``privacy.recit.private_batch``); the other tables use ``trials``.
FULL = dict(batch_sizes=(1, 4, 16, 64), batch_trials={1: 2, 4: 2, 16: 4, 64: 1},
            ranks=(2, 8, 32), rank_batch=4, trials=1, pretrain_steps=300, relax_steps=150,
            relax_max_batch=16, top_k=8, coverage=0.3, sweep_max_batch=4,
            defenses=("noise", "topk"), defense_batch=4, ablation_batches=(4, 16))
QUICK = dict(batch_sizes=(1,), batch_trials={1: 1}, ranks=(2,), rank_batch=1, trials=1,
             pretrain_steps=5, relax_steps=2, relax_max_batch=2, top_k=2, coverage=0.3,
             sweep_max_batch=4, defenses=("noise",), defense_batch=1, ablation_batches=(1,))
ATTACKS = ("token_set", "relaxation", "recit")


def _meta(name: str, batch_size: int, s: dict) -> dict:
  if name == "recit":
    return {"top_k": s["top_k"], "coverage": s["coverage"],
            "sweeps": 1 if batch_size <= s["sweep_max_batch"] else 0}
  if name == "relaxation":
    return {"steps": s["relax_steps"]}
  return {}


def _run(name, victim, batch_size, s, *, defense=None, trials=None):
  rows, t0 = [], time.time()
  for trial in range(trials or s["trials"]):
    notes = recit.private_batch(batch_size, trial)
    rows.append(recit.run_attack(name, victim, notes, key=jax.random.key(trial), defense=defense,
                                 meta=_meta(name, batch_size, s)))
  out = recit.mean_scores(rows)
  out["seconds"] = (time.time() - t0) / len(rows)  # per private batch
  out["example"] = rows[0]["texts"][:2]
  out["trials"] = len(rows)
  out["pii_per_trial"] = [r["pii"]["all"] for r in rows]
  out["pii_se"] = (float(np.std(out["pii_per_trial"], ddof=1) / np.sqrt(len(rows)))
                   if len(rows) > 1 else None)
  print(f"  {name:10s} B={batch_size:3d} {defense or '':6s} pii {out['pii']:.3f} "
        f"P {out['token_precision']:.3f} R {out['token_recall']:.3f} "
        f"ROUGE-L {out['rouge_l']:.3f} ({out['seconds']:.0f} s)", flush=True)
  return out


def _trials(s: dict, batch_size: int) -> int:
  return int({int(k): v for k, v in s["batch_trials"].items()}.get(batch_size, s["trials"]))


def run(s: dict) -> dict:
  setup = recit.Setup(pretrain_steps=s["pretrain_steps"])
  base, log = recit.pretrained_base(setup)
  victim, round_log = recit.round_model(setup, base)
  results = {"setup": {**dataclasses.asdict(setup), **log, **round_log}}
  results["batch"] = {}
  for b in s["batch_sizes"]:
    results["batch"][str(b)] = {
        name: _run(name, victim, b, s, trials=_trials(s, b)) for name in ATTACKS
        if name != "relaxation" or b <= s["relax_max_batch"]}
  results["rank"] = {}
  for r in s["ranks"]:
    v, _ = recit.round_model(dataclasses.replace(setup, rank=r), base)
    results["rank"][str(r)] = {name: _run(name, v, s["rank_batch"], s)
                               for name in ("token_set", "recit")}
  plain_base, _ = recit.pretrained_base(dataclasses.replace(setup, malicious=False))
  plain, _ = recit.round_model(dataclasses.replace(setup, malicious=False), plain_base)
  results["no_malicious"] = {str(b): _run("recit", plain, b, s) for b in s["ablation_batches"]}
  batch = pii_corpus.encode(recit.private_batch(s["defense_batch"], 0),
                                  seq_len=recit.SEQ_LEN)
  g = text_victim.flat(victim.peft_gradient(batch))
  results["defense"] = {"gradient_rms": float(np.sqrt(np.mean(np.square(g))))}
  for d in s["defenses"]:
    results["defense"][d] = {"settings": defenses.DEFAULTS[d],
                             **{name: _run(name, victim, s["defense_batch"], s, defense=d)
                                for name in ("token_set", "recit")}}
  return results


def main(argv=None):
  parser = common.arg_parser(__doc__)
  parser.add_argument("--from-json", action="store_true",
                      help="re-render the report from recit.json in --out-dir (default reports/)")
  args = parser.parse_args(argv)
  out = common.out_dir(args)
  s = QUICK if args.quick else FULL
  if args.from_json:
    record = json.loads((out / "recit.json").read_text())
    results, s = record["results"], record["config"]
  else:
    results = run(s)
    common.write_json(out / "recit.json", name="recit", results=results,
                      config={**s, "quick": args.quick})
  write_report(results, s, out)
  if args.quick:
    common.mark_quick(out / "recit.md")
  print(f"wrote {out / 'recit.md'}")


def _fmt(x):
  return f"{x:.3f}"


def _pm(r: dict) -> str:
  """The PII mean, with its standard error over the private batches when there are several."""
  return _fmt(r["pii"]) + (f" ± {r['pii_se']:.3f}" if r.get("pii_se") is not None else "")


def _verdict(recit: dict, base: dict) -> str:
  """Whether ReCIT's mean PII recovery is above the token set's, and how firmly."""
  diff = recit["pii"] - base["pii"]
  if diff <= 0:
    return "does not hold (ReCIT not above the token set)"
  if recit.get("pii_se") is None:
    return "above, from a single private batch (not a firm result)"
  if diff > 2 * recit["pii_se"]:
    return f"holds (above by {diff / recit['pii_se']:.1f} SE)"
  return "above, but within 2 SE (not a firm result)"


def write_report(results: dict, s: dict, out):
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  sizes = [int(b) for b in results["batch"]]
  for name in ATTACKS:
    xs = [b for b in sizes if name in results["batch"][str(b)]]
    for ax, key in zip(axes[:2], ("pii", "rouge_l")):
      ax.plot(xs, [results["batch"][str(b)][name][key] for b in xs], "o-", label=name)
  ranks = [int(r) for r in results["rank"]]
  for name in ("token_set", "recit"):
    axes[2].plot(ranks, [results["rank"][str(r)][name]["rouge_l"] for r in ranks], "o-",
                 label=name)
  for ax, title, xl in zip(axes, ("exact PII recovery", "ROUGE-L F1",
                                  f"ROUGE-L F1 vs LoRA rank (batch {s['rank_batch']})"),
                           ("batch size", "batch size", "LoRA rank")):
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel(xl)
    ax.legend()
  fig.tight_layout()
  fig.savefig(out / "recit.png", dpi=120)

  cmd = "python -m reports.recit"
  st = results["setup"]
  lines = ["# ReCIT on LoRA gradients: PII and text from a PEFT client's gradient", "",
           f"Every number below comes from `{cmd}` (raw numbers in `recit.json`).", "",
           __doc__.split("\n\n", 2)[2].strip(), "",
           f"Malicious pre-fine-tuning: loss {st.get('pretrain_loss', ['-', '-'])[0]:.3f} -> "
           f"{st.get('pretrain_loss', [0, 0])[1]:.3f} nats/byte on the PNotes; "
           "private batches per cell of the batch-size table: "
           + ", ".join(f"{n} at batch {b}" for b, n in s["batch_trials"].items())
           + f", {s['trials']} in the other tables (seeded, disjoint from each other and from "
           "the attacker's notes). Each number is the mean over the cell's private batches; "
           "'± SE' is the standard error of the PII mean over them (none with one batch).", "",
           "## Versus batch size", "", f"`{cmd}`", "",
           "| batch | attack | n | PII (all) ± SE | name | phone | email | token P | token R | "
           "ROUGE-L | s / batch |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for b in sizes:
    for name, r in results["batch"][str(b)].items():
      lines.append(f"| {b} | {name} | {r['trials']} | {_pm(r)} | {_fmt(r['pii_name'])} | "
                   f"{_fmt(r['pii_phone'])} | {_fmt(r['pii_email'])} | "
                   f"{_fmt(r['token_precision'])} | {_fmt(r['token_recall'])} | "
                   f"{_fmt(r['rouge_l'])} | {r['seconds']:.0f} |")
  lines += ["", "![PII and ROUGE-L](recit.png)", "", "Examples (first two reconstructed notes "
            f"of ReCIT at the largest batch, {sizes[-1]}):", ""]
  lines += [f"    {t}" for t in results["batch"][str(sizes[-1])]["recit"]["example"]]
  lines += ["", f"## Versus LoRA rank (batch {s['rank_batch']})", "", f"`{cmd}`", "",
            "| rank | attack | PII | token P | token R | ROUGE-L |",
            "|---:|---|---:|---:|---:|---:|"]
  for r, row in results["rank"].items():
    for name, x in row.items():
      lines.append(f"| {r} | {name} | {_fmt(x['pii'])} | {_fmt(x['token_precision'])} | "
                   f"{_fmt(x['token_recall'])} | {_fmt(x['rouge_l'])} |")
  lines += ["", "## Without the malicious pre-fine-tuning (random base)", "", f"`{cmd}`", "",
            "| batch | ReCIT PII | ROUGE-L | with pre-fine-tuning: PII | ROUGE-L |",
            "|---:|---:|---:|---:|---:|"]
  for b, x in results["no_malicious"].items():
    y = results["batch"].get(b, {}).get("recit")
    tail = f"{_fmt(y['pii'])} | {_fmt(y['rouge_l'])}" if y else "- | -"
    lines.append(f"| {b} | {_fmt(x['pii'])} | {_fmt(x['rouge_l'])} | {tail} |")
  d = results["defense"]
  lines += ["", f"## With a defense (batch {s['defense_batch']}, `privacy.defenses` defaults)",
            "", f"`{cmd}`; the undefended gradient's RMS entry is {d['gradient_rms']:.2e}.", "",
            "| defense | settings | attack | PII | token P | token R | ROUGE-L |",
            "|---|---|---|---:|---:|---:|---:|"]
  for name in s["defenses"]:
    for attack in ("token_set", "recit"):
      x = d[name][attack]
      lines.append(f"| {name} | {d[name]['settings']} | {attack} | {_fmt(x['pii'])} | "
                   f"{_fmt(x['token_precision'])} | {_fmt(x['token_recall'])} | "
                   f"{_fmt(x['rouge_l'])} |")
  lines += ["", "## The paper's claims next to ours", "", _claims(results, sizes), ""]
  (out / "recit.md").write_text("\n".join(lines) + "\n")


def _claims(results: dict, sizes) -> str:
  batch = results["batch"]
  big = [b for b in sizes if b >= 16]
  wins = [b for b in big
          if batch[str(b)]["recit"]["rouge_l"] > batch[str(b)]["token_set"]["rouge_l"]]
  best = max(batch[str(b)]["recit"]["pii"] for b in sizes)
  baseline = max(batch[str(b)][name]["pii"] for b in sizes
                 for name in ("token_set", "relaxation") if name in batch[str(b)])
  if best == 0:
    ratio = ("no attack recovers a single PII string exactly, so the claim does not reproduce "
             "here")
  elif baseline == 0:
    ratio = ("ReCIT recovers PII where neither baseline recovers any (the ratio is unbounded); "
             "the absolute rate is what to read, and it is far from complete recovery"
             if best < 0.5 else "ReCIT recovers PII where neither baseline recovers any")
  else:
    ratio = (f"ReCIT / best baseline = {best / baseline:.1f}x "
             f"({'at least' if best >= 10 * baseline else 'less than'} the paper's 10x)")
  per_batch = "; ".join(
      f"batch {b}: ReCIT {_pm(batch[str(b)]['recit'])} over {batch[str(b)]['recit']['trials']} "
      f"private batch(es) (names {batch[str(b)]['recit']['pii_name']:.3f}, phones "
      f"{batch[str(b)]['recit']['pii_phone']:.3f}, emails "
      f"{batch[str(b)]['recit']['pii_email']:.3f}) vs token set "
      f"{batch[str(b)]['token_set']['pii']:.3f}: "
      f"{_verdict(batch[str(b)]['recit'], batch[str(b)]['token_set'])}" for b in big)
  return (
      "* Paper (Xie et al. 2025): up to 10x higher PII recovery than prior attacks across PEFT "
      f"paradigms. Ours (LoRA only): best exact PII recovery of ReCIT {best:.3f}, of the "
      f"baselines {baseline:.3f} (the token set has no order, so it never rebuilds a PII "
      f"string): {ratio}.\n"
      "* Paper: ReCIT's PII recovery is above the token-set baseline at batch >= 16. Ours, exact "
      f"PII recovery: {per_batch or 'no batch >= 16 run'}. By ROUGE-L ReCIT is ahead at "
      f"{wins or 'none'} of the batch sizes {big or 'none run'}. Both have the same tokens "
      "(ReCIT's filter is the token set, exact without a defense), so the difference is the "
      "order ReCIT rebuilds.\n"
      f"* Read with care: {_what_leaks(batch, sizes)}\n"
      "* Not reproduced here: the paper's models, data and other PEFT forms (prefix, adapters); "
      "its filter and pairing (not public: ours are our own design, documented in "
      "`privacy/attacks/text.py`); the rank, random-base and defense tables have "
      "one private batch per cell, so differences of one PII string there are noise.")


def _what_leaks(batch: dict, sizes) -> str:
  """Which PII fields ReCIT recovered at all, and what its ROUGE-L is made of."""
  fields = {f: max(batch[str(b)]["recit"][f"pii_{f}"] for b in sizes)
            for f in ("name", "phone", "email")}
  missed = [f for f, v in fields.items() if v == 0]
  return (f"ReCIT's best recovery per field: " +
          ", ".join(f"{f} {v:.3f}" for f, v in fields.items()) + ". " +
          (f"No {' or '.join(missed)} is ever recovered exactly. " if missed else "") +
          "The names come from the 40-name public list the attacker's personal notes also use, so "
          "the pre-fine-tuned prior proposes them, and word-level ROUGE-L is dominated by the "
          "template words that prior also knows (see the random-base ablation and the noise "
          "defense, where ReCIT keeps most of its ROUGE-L while the token set's precision "
          "collapses). What ReCIT adds over the prior is which of those names and templates "
          "occur (the filter's tokens must each be placed once: the coverage term) and their "
          "pairing with the rest of the note" +
          ("; the phone digits, the real secret, stay out of reach of our version."
           if "phone" in missed else "."))


if __name__ == "__main__":
  main()
