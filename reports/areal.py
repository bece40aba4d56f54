"""AReaL on the CPU: staleness eta, decoupled vs naive PPO, interruptible vs waiting rollouts.

    python -m reports.areal --init-export workdirs/sft_arith/export   # reports/areal.{md,json,png}
    python -m reports.areal --quick      # smoke run (CI): a random tiny model, 2 versions each
    python -m reports.areal --from-json  # re-renders the report from areal.json

Every run starts from the same SFT warm start (see the README: ``python -m rl.tasks.arith_sft``
then ``python train/main.py --config configs/sft_arith.py``) and trains with
``configs/rl_arith.py``'s deterministic one-process schedule (rl/trainer.py): 1-3 digit
addition with a scratchpad, completions of about 10 to 46 tokens. Both sides run in one process
here, so the CPU wall time cannot show their overlap; time is the schedule's *clock*, in units
of one decode step of the rollout engine, with the other costs **measured first on this CPU**
(a short eta=0 calibration run): a prefill call costs ``prefill_cost`` units and training a
batch (prox log-probs and the k PPO minibatches) ``train_delay_steps`` units, during which the
rollout keeps generating when eta allows. The clock is then what a two-device run with these
kernels would take.

* **eta sweep**: eta in {0, 1, 2, 4, 8}, decoupled loss, interruptible rollouts.
* **loss**: decoupled (Eq. 5) vs naive PPO at the largest eta.
* **interruption**: interruptible vs wait-for-drain weight updates at eta = 2.
* **what if** training took a quarter of the measured time (eta = 0 and 4), the regime of
  accelerators where decoding is memory-bound: a hypothesis on the same clock, not a measurement.
"""
from __future__ import annotations

import datetime
import json
import pathlib
import tempfile
import time

import jax
import numpy as np

from configs import rl_arith
from reports import common
from rl import trainer

SETTINGS = dict(versions=100, prompts_per_batch=8, samples_per_prompt=8, eval_every=20,
                num_slots=64)
QUICK = dict(versions=2, prompts_per_batch=2, samples_per_prompt=2, eval_problems=8,
             eval_every=2, num_slots=4)
CALIBRATION_VERSIONS = (3, 10)  # measured between these versions (compilation happens before)
QUICK_CALIBRATION_VERSIONS = (1, 2)
ETAS = (0, 1, 2, 4, 8)


def runs(settings) -> dict[str, dict]:
  """name -> the rl overrides of each run."""
  out = {f"eta={e}": dict(eta=e) for e in ETAS}
  out[f"naive eta={ETAS[-1]}"] = dict(eta=ETAS[-1], loss="naive")
  out["wait eta=2"] = dict(eta=2, interruptible=False)
  # What if training were cheaper relative to decoding, as on accelerators where decoding is
  # memory-bound? Same runs, a quarter of the measured training time (a hypothesis, not a
  # measurement).
  for e in (0, 4):
    out[f"train/4 eta={e}"] = dict(eta=e, train_scale=0.25)
  return out


def config_for(settings, init_export, quick: bool, **rl):
  c = rl_arith.get_config()
  if quick:
    c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
    c.rl.update(train_problems=16, max_new_tokens=6, token_budget=64, micro_batches=2,
                eval_samples=1)
  c.rl.update(settings)
  c.rl.update(init_export=init_export, checkpoint_every=10_000, export=False, **rl)
  return c


def calibrate(settings, init_export, quick: bool, workdir: pathlib.Path) -> dict:
  """Measured CPU costs -> the clock's ``prefill_cost`` and ``train_delay_steps``: a short
  synchronous run (eta=0: each side runs alone), timed between two versions so that
  compilation is left out. Per decode step, per prefill call, per trained version."""
  first, last = QUICK_CALIBRATION_VERSIONS if quick else CALIBRATION_VERSIONS
  c = config_for(settings, init_export, quick, eta=0, versions=last, eval_every=10_000)
  trainer.run(c, workdir, say=lambda m: None)
  rows = {m["version"]: m for m in map(json.loads, (workdir / trainer.METRICS).read_text()
                                       .splitlines())}
  a, b = rows[first], rows[last]
  per = lambda key, count: (b[key] - a[key]) / max(b[count] - a[count], 1)
  decode_s = per("decode_s", "decode_steps")
  prefill_s = per("prefill_s", "prefill_calls")
  train_s = (b["train_s"] - a["train_s"]) / (last - first)
  return {"decode_ms": 1e3 * decode_s, "prefill_ms": 1e3 * prefill_s, "train_ms": 1e3 * train_s,
          "prefill_cost": round(prefill_s / decode_s, 2),
          "train_delay_steps": max(1, round(train_s / decode_s)),
          "versions": [first, last]}


def run_one(config, workdir: pathlib.Path) -> dict:
  start = time.perf_counter()
  trainer.run(config, workdir, say=lambda m: None)
  metrics = [json.loads(line) for line in (workdir / trainer.METRICS).read_text().splitlines()]
  batch = config.rl.prompts_per_batch * config.rl.samples_per_prompt
  rows = [{"version": m["version"], "samples": m["version"] * batch, "ticks": m["ticks"],
           "clock": m["clock"], "prefill_calls": m["prefill_calls"],
           "interrupted_samples": m["interrupted_samples"],
           "wall_s": m["wall_s"], "reward": m["reward"], "kl_behav_prox": m["kl_behav_prox"],
           "staleness": m["staleness"],
           **{k: m[k] for k in ("eval_accuracy", "eval_sampled_accuracy") if k in m}}
          for m in metrics[1:]]
  finals = [m for m in metrics if "eval_per_problem" in m]
  return {"initial_accuracy": metrics[0]["eval_accuracy"],
          "initial_sampled_accuracy": metrics[0].get("eval_sampled_accuracy", float("nan")),
          "initial_per_problem": metrics[0]["eval_per_problem"],
          "final_per_problem": finals[-1]["eval_per_problem"],
          "rows": rows,
          "seconds": time.perf_counter() - start}


def summarize(r: dict) -> dict:
  rows = r["rows"]
  last = rows[-max(1, len(rows) // 4):]
  stale = {}
  for row in rows:
    for k, v in row["staleness"].items():
      stale[int(k)] = stale.get(int(k), 0) + v
  n = sum(stale.values())
  return {"final_accuracy": rows[-1].get("eval_accuracy", float("nan")),
          "final_sampled_accuracy": rows[-1].get("eval_sampled_accuracy", float("nan")),
          "reward_last_quarter": float(np.mean([x["reward"] for x in last])),
          "clock": rows[-1]["clock"], "samples_per_kclock": 1e3 * rows[-1]["samples"]
          / rows[-1]["clock"],
          "mean_staleness": sum(k * v for k, v in stale.items()) / max(n, 1),
          "max_staleness": max(stale) if stale else 0,
          "mean_kl_behav_prox": float(np.mean([x["kl_behav_prox"] for x in rows])),
          "wall_s": r["seconds"]}


def time_to_reach(r: dict, key: str, target: float) -> float | None:
  """Clock of the first evaluation at which ``key`` >= ``target`` (None: never)."""
  for row in r["rows"]:
    if key in row and row[key] >= target:
      return row["clock"]
  return None


def write_report(results: dict, config: dict, out: pathlib.Path) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 4, figsize=(19, 4))
  for name, r in results.items():
    rows = r["rows"]
    window = max(1, len(rows) // 10)
    smooth = np.convolve([x["reward"] for x in rows], np.ones(window) / window, mode="valid")
    for ax, key in zip(axes, ("clock", "samples", "wall_s")):
      ax.plot([x[key] for x in rows][window - 1:], smooth, label=name, lw=1)
    evals = [(0.0, r["initial_sampled_accuracy"])] + [
        (x["clock"], x["eval_sampled_accuracy"]) for x in rows if "eval_sampled_accuracy" in x]
    axes[3].plot(*zip(*evals), marker=".", label=name, lw=1)
  for ax, key in zip(axes, ("clock (decode steps, calibrated)", "samples trained on",
                            "CPU wall s (one process)", "clock (decode steps, calibrated)")):
    ax.set_xlabel(key)
    ax.set_ylabel("batch reward (moving average)")
  axes[3].set_ylabel("held-out accuracy, sampled")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "areal.png", dpi=110)
  plt.close(fig)
  cmd = "python -m reports.areal" + (f" --init-export {config['init_export']}"
                                     if config["init_export"] else "")
  cal = config["calibration"]
  lines = ["# AReaL: asynchronous RL on arithmetic (CPU)", "",
           f"Generated by `{cmd}` on {datetime.date.today().isoformat()} "
           f"({jax.default_backend()}, jax {jax.__version__}); raw numbers in `areal.json`, "
           "curves in `areal.png`.", "", __doc__.split("\n\n", 2)[2].strip(), "",
           "Settings: " + ", ".join(f"{k}={v}" for k, v in config["settings"].items())
           + f"; the rest as `configs/rl_arith.py` ({config['held_out']} held-out problems).",
           "",
           f"Calibration (eta=0, versions {cal['versions'][0]} to {cal['versions'][1]}): "
           f"{cal['decode_ms']:.2f} ms per decode step of {config['settings']['num_slots']} "
           f"slots, {cal['prefill_ms']:.2f} ms per prefill call, {cal['train_ms']:.0f} ms per "
           f"trained version, so **prefill_cost = {cal['prefill_cost']}** and "
           f"**train_delay_steps = {cal['train_delay_steps']}** clock units.", "",
           "| run | held-out acc, greedy | held-out acc, sampled | reward, last quarter | clock "
           "| speed-up vs eta=0 | samples per 1k clock | staleness mean / max | KL(behav‖prox) "
           "| wall s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  base = summarize(results["eta=0"])["clock"] if "eta=0" in results else float("nan")
  for name, r in results.items():
    s = summarize(r)
    lines.append(f"| {name} | {r['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f} | "
                 f"{r['initial_sampled_accuracy']:.3f} -> {s['final_sampled_accuracy']:.3f} | "
                 f"{s['reward_last_quarter']:.3f} | {s['clock']:.0f} | "
                 f"{base / s['clock']:.2f}x | {s['samples_per_kclock']:.1f} | "
                 f"{s['mean_staleness']:.2f} / {s['max_staleness']} | "
                 f"{s['mean_kl_behav_prox']:.2e} | {s['wall_s']:.0f} |")
  lines += claims(results, config)
  (out / "areal.md").write_text("\n".join(lines) + "\n")


def _paired_z(before, after) -> float:
  """Mean per-problem change over its standard error (nan if nothing changed)."""
  d = np.asarray(after, float) - np.asarray(before, float)
  return float(d.mean() / (d.std(ddof=1) / len(d) ** 0.5)) if d.std() > 0 else float("nan")


def claims(results: dict, config: dict) -> list[str]:
  """The paper's targets next to this run, computed from the results (said plainly)."""
  if "eta=0" not in results:
    return []
  sync_r = results["eta=0"]
  sync = summarize(sync_r)
  out = ["", "## The paper's targets next to this run", ""]
  # Held-out accuracy before and after on the same problems: a paired comparison, the change
  # per problem over its standard error across problems.
  for key, label in (("eval_sampled_accuracy", "sampled"), ("eval_accuracy", "greedy")):
    before = np.array(sync_r["initial_per_problem"][key])
    after = np.array(sync_r["final_per_problem"][key])
    d, z = after - before, _paired_z(before, after)
    out.append(f"- RL on held-out problems (eta=0, {label}): {before.mean():.3f} -> "
               f"{after.mean():.3f} on {len(d)} problems ({int((d > 0).sum())} better, "
               f"{int((d < 0).sum())} worse), paired change {z:+.1f} standard errors: "
               + ("**RL raises held-out accuracy**." if z >= 2 else
                  "**not** a significant change (< 2 SE)."))
  asyn = {k: r for k, r in results.items() if k.startswith("eta=") and int(k.split("=")[1]) >= 2}
  key = "eval_sampled_accuracy"
  if asyn:
    # Same number of versions: how much less clock, and is the accuracy the same (paired)?
    ratios = {k: summarize(r)["clock"] / sync["clock"] for k, r in asyn.items()}
    zs = {k: _paired_z(sync_r["final_per_problem"][key], r["final_per_problem"][key])
          for k, r in asyn.items()}
    same = all(z > -2 for z in zs.values())
    best = min(ratios, key=ratios.get)
    out.append(f"- Async (eta >= 2) vs synchronous, the same {len(sync_r['rows'])} versions: clock "
               + ", ".join(f"{k} {ratios[k]:.2f}x" for k in asyn)
               + "; final sampled held-out accuracy vs eta=0's, paired: "
               + ", ".join(f"{k} {zs[k]:+.1f} SE" for k in asyn)
               + (" (the same within noise, or better)" if same else " (**lower**)")
               + f". Target <= 0.6x the time to the same accuracy: **"
               + ("met" if ratios[best] <= 0.6 and same else "NOT met")
               + f"** (best {best}, {ratios[best]:.2f}x).")
    target = sync_r["rows"][-1].get(key)
    reach = {k: time_to_reach(r, key, target) for k, r in asyn.items()}
    out.append(f"- First evaluation (every {config['settings']['eval_every']} versions) at or "
               f"above eta=0's final sampled accuracy {target:.3f}: "
               + ", ".join(f"{k} {t / sync['clock']:.2f}x" if t is not None else f"{k} never"
                           for k, t in reach.items())
               + " of eta=0's clock. One evaluation has a standard error of about "
               f"{(target * (1 - target) / config['held_out']) ** 0.5:.3f}, so an early "
               "crossing (or none) is not evidence by itself; the equal-versions comparison "
               "above is.")
  if asyn:
    train = config["calibration"]["train_delay_steps"] + 1  # the countdown, then the update tick
    per_version = sync["clock"] / len(sync_r["rows"])
    out.append(f"- Why: synchronously a version costs {per_version:.0f} clock units, "
               f"{train} of them training and {per_version - train:.0f} generating (the longest "
               "sample of the batch, plus prefills). Overlapping them cannot go below the longer "
               f"side, so async needs at least {train / per_version:.2f}x the synchronous clock "
               "with these measured costs; eta >= 2 finishes its versions at "
               + ", ".join(f"{summarize(r)['clock'] / sync['clock']:.2f}x" for r in asyn.values())
               + ".")
  largest = max((int(k.split("=")[1]) for k in results if k.startswith("eta=")), default=None)
  naive = results.get(f"naive eta={largest}")
  if naive is not None and f"eta={largest}" in results:
    dec, nai = summarize(results[f"eta={largest}"]), summarize(naive)
    z = _paired_z(results[f"eta={largest}"]["final_per_problem"]["eval_sampled_accuracy"],
                  naive["final_per_problem"]["eval_sampled_accuracy"])
    collapsed = z <= -2
    out.append(f"- Decoupled vs naive PPO at eta={largest}: held-out sampled accuracy "
               f"{dec['final_sampled_accuracy']:.3f} vs {nai['final_sampled_accuracy']:.3f}, "
               f"greedy {dec['final_accuracy']:.3f} vs {nai['final_accuracy']:.3f}, last-quarter "
               f"reward {dec['reward_last_quarter']:.3f} vs {nai['reward_last_quarter']:.3f} "
               f"(paired change of naive vs decoupled, sampled: {z:+.1f} SE). "
               + ("Naive PPO degrades where the decoupled loss does not."
                  if collapsed else
                  "Naive PPO did not collapse here, so the paper's ablation (23.3 vs 42.2 AIME24 "
                  "at eta=4) does **not reproduce** at this size: KL(behav‖prox) stays at "
                  f"{dec['mean_kl_behav_prox']:.1e}, so the pi_prox/pi_behav weights stay "
                  "close to 1."))
  cheap0, cheap4 = results.get("train/4 eta=0"), results.get("train/4 eta=4")
  if cheap0 is not None and cheap4 is not None:
    c0, c4 = summarize(cheap0), summarize(cheap4)
    out.append(f"- What if training took a quarter of the measured time (hypothesis): eta=4 "
               f"takes {c4['clock'] / c0['clock']:.2f}x the clock of eta=0 for the same "
               f"versions (held-out sampled accuracy {c4['final_sampled_accuracy']:.3f} vs "
               f"{c0['final_sampled_accuracy']:.3f}, paired "
               f"{_paired_z(cheap0['final_per_problem'][key], cheap4['final_per_problem'][key]):+.1f}"
               " SE). Asynchrony hides the shorter of "
               "generation and training behind the longer, so it gains most when they are "
               "close; on this CPU, training a batch costs more than generating it.")
  wait, inter = results.get("wait eta=2"), results.get("eta=2")
  if wait is not None and inter is not None:
    w, i = summarize(wait), summarize(inter)
    same = (i["clock"] == w["clock"] and inter["final_per_problem"] == wait["final_per_problem"])
    out.append(f"- Interruptible vs wait-for-completion weight updates at eta=2: clock "
               f"{i['clock']:.0f} vs {w['clock']:.0f} ({w['clock'] / i['clock']:.2f}x longer "
               "when waiting), held-out sampled accuracy "
               f"{i['final_sampled_accuracy']:.3f} vs {w['final_sampled_accuracy']:.3f}."
               + (" The two runs are identical: training is the longer side, so by the time "
                  "a version is published the rollout side has long finished the batches the "
                  "gate allowed and sits idle; no update ever finds a sequence to interrupt. "
                  "Interruption pays off only when generation is the longer side."
                  if same else _interruption_text(inter, wait)))
  return out


def _interruption_text(inter: dict, wait: dict) -> str:
  """Why the interruptible and waiting runs differ (when they do), from their own rows."""
  interrupted = sum(r.get("interrupted_samples", 0) for r in inter["rows"])
  samples = inter["rows"][-1]["samples"]
  key = "eval_sampled_accuracy"
  z = _paired_z(inter["final_per_problem"][key], wait["final_per_problem"][key])
  return (f" {interrupted} of the interruptible run's {samples} samples lived through a weight "
          "update, so the two runs generate different samples from there on (accuracy of "
          f"waiting vs interrupting: paired {z:+.1f} SE). Waiting costs almost no clock: "
          "training is still the longer side, so the few sequences in flight at an update "
          "finish while the next batch trains. Interruption pays off when generation is the "
          "longer side.")


def main(argv=None):
  parser = common.arg_parser(__doc__)
  parser.add_argument("--init-export", default=None,
                      help="the SFT warm start (required without --quick)")
  parser.add_argument("--only", default=None, help="comma-separated run names to do")
  parser.add_argument("--from-json", action="store_true",
                      help="re-render areal.md/.png from areal.json in --out-dir (default reports/)")
  args = parser.parse_args(argv)
  if args.from_json:
    out = common.out_dir(args)
    record = json.loads((out / "areal.json").read_text())
    write_report(record["results"], record["config"], out)
    return
  if not args.quick and not args.init_export:
    parser.error("--init-export is required (the SFT export; see the module docstring); "
                 "use --quick for a smoke run from a random model.")
  out = common.out_dir(args)
  settings = QUICK if args.quick else SETTINGS
  names = runs(settings)
  if args.only:
    names = {k: v for k, v in names.items() if k in args.only.split(",")}
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    cal = calibrate(settings, args.init_export, args.quick, pathlib.Path(tmp) / "calibration")
    print(f"calibration: {cal}", flush=True)
    costs = {k: cal[k] for k in ("prefill_cost", "train_delay_steps")}
    config = {"settings": settings, "init_export": args.init_export, "quick": args.quick,
              "runs": names, "calibration": cal,
              "held_out": len(trainer.load_problems(config_for(settings, None, args.quick).rl)[1])}
    for i, (name, rl) in enumerate(names.items()):
      rl = dict(rl)
      delay = max(1, round(costs["train_delay_steps"] * rl.pop("train_scale", 1.0)))
      c = config_for(settings, args.init_export, args.quick,
                     **{**costs, "train_delay_steps": delay}, **rl)
      results[name] = run_one(c, pathlib.Path(tmp) / str(i))
      s = summarize(results[name])
      print(f"{name}: acc {results[name]['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f}, "
            f"sampled {results[name]['initial_sampled_accuracy']:.3f} -> "
            f"{s['final_sampled_accuracy']:.3f}, "
            f"clock {s['clock']:.0f}, staleness {s['mean_staleness']:.2f}, "
            f"{s['wall_s']:.0f} s", flush=True)
      common.write_json(out / "areal.json", name="areal", config=config, results=results)
  write_report(results, config, out)
  if args.quick:
    common.mark_quick(out / "areal.md")


if __name__ == "__main__":
  main()
