"""AReaL on the CPU: staleness eta, decoupled vs naive PPO, interruptible vs waiting rollouts.

    python -m reports.areal --init-export workdirs/sft_arith/export   # reports/areal.{md,json,png}
    python -m reports.areal --quick      # smoke run (CI): a random tiny model, 2 versions each
    python -m reports.areal --from-json  # re-renders the report from areal.json

Every run starts from the same SFT warm start (see the README: ``python -m rl.tasks.arith_sft``
then ``python train/main.py --config configs/sft_arith.py``) and trains with
``configs/rl_arith.py``'s deterministic one-process schedule (rl/trainer.py). Time is counted
in *ticks*: one decode step of the rollout engine, and training a batch occupies
``train_delay_steps`` ticks during which the rollout keeps generating (when eta allows). That
simulated clock is what asynchrony saves; the CPU wall time is printed too, but both sides run
in one process here, so it cannot show the overlap.

* **eta sweep**: eta in {0, 1, 2, 4, 8}, decoupled loss, interruptible rollouts.
* **loss**: decoupled (Eq. 5) vs naive PPO at the largest eta.
* **interruption**: interruptible vs wait-for-drain weight updates at eta = 2.
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

SETTINGS = dict(versions=60, prompts_per_batch=8, samples_per_prompt=8, eval_problems=128,
                eval_every=20, lr=3e-5, train_delay_steps=16, num_slots=64)
QUICK = dict(versions=2, prompts_per_batch=2, samples_per_prompt=2, eval_problems=8,
             eval_every=2, lr=3e-5, train_delay_steps=2, num_slots=4)
ETAS = (0, 1, 2, 4, 8)


def runs(settings) -> dict[str, dict]:
  """name -> the rl overrides of each run."""
  out = {f"eta={e}": dict(eta=e) for e in ETAS}
  out[f"naive eta={ETAS[-1]}"] = dict(eta=ETAS[-1], loss="naive")
  out["wait eta=2"] = dict(eta=2, interruptible=False)
  return out


def config_for(settings, init_export, quick: bool, **rl):
  c = rl_arith.get_config()
  if quick:
    c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
    c.rl.update(train_problems=16, max_new_tokens=6, token_budget=64, micro_batches=2)
  c.optim.lr = settings["lr"]
  c.rl.update({k: v for k, v in settings.items() if k != "lr"})
  c.rl.update(init_export=init_export, checkpoint_every=10_000, export=False, **rl)
  return c


def run_one(config, workdir: pathlib.Path) -> dict:
  start = time.perf_counter()
  trainer.run(config, workdir, say=lambda m: None)
  metrics = [json.loads(line) for line in (workdir / trainer.METRICS).read_text().splitlines()]
  batch = config.rl.prompts_per_batch * config.rl.samples_per_prompt
  rows = [{"version": m["version"], "samples": m["version"] * batch, "ticks": m["ticks"],
           "wall_s": m["wall_s"], "reward": m["reward"], "kl_behav_prox": m["kl_behav_prox"],
           "staleness": m["staleness"],
           **{k: m[k] for k in ("eval_accuracy", "eval_sampled_accuracy") if k in m}}
          for m in metrics[1:]]
  return {"initial_accuracy": metrics[0]["eval_accuracy"],
          "initial_sampled_accuracy": metrics[0].get("eval_sampled_accuracy", float("nan")),
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
          "ticks": rows[-1]["ticks"], "samples_per_tick": rows[-1]["samples"] / rows[-1]["ticks"],
          "mean_staleness": sum(k * v for k, v in stale.items()) / max(n, 1),
          "max_staleness": max(stale) if stale else 0,
          "mean_kl_behav_prox": float(np.mean([x["kl_behav_prox"] for x in rows])),
          "wall_s": r["seconds"]}


def write_report(results: dict, config: dict, out: pathlib.Path) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, r in results.items():
    rows = r["rows"]
    window = max(1, len(rows) // 10)
    smooth = np.convolve([x["reward"] for x in rows], np.ones(window) / window, mode="valid")
    for ax, key in zip(axes, ("ticks", "samples", "wall_s")):
      ax.plot([x[key] for x in rows][window - 1:], smooth, label=name, lw=1)
  for ax, key in zip(axes, ("simulated time (ticks)", "samples trained on", "CPU wall s")):
    ax.set_xlabel(key)
    ax.set_ylabel("batch reward (moving average)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "areal.png", dpi=110)
  cmd = "python -m reports.areal" + (f" --init-export {config['init_export']}"
                                     if config["init_export"] else "")
  lines = ["# AReaL: asynchronous RL on arithmetic (CPU)", "",
           f"Generated by `{cmd}` on {datetime.date.today().isoformat()} "
           f"({jax.default_backend()}, jax {jax.__version__}); raw numbers in `areal.json`, "
           "curves in `areal.png`.", "", __doc__.split("\n\n", 2)[2].strip(), "",
           "Settings: " + ", ".join(f"{k}={v}" for k, v in config["settings"].items()), "",
           "| run | held-out acc, greedy | held-out acc, sampled | reward, last quarter | ticks "
           "| speed-up vs eta=0 | samples/tick | staleness mean / max | KL(behav‖prox) | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  base = summarize(results["eta=0"])["ticks"] if "eta=0" in results else float("nan")
  for name, r in results.items():
    s = summarize(r)
    lines.append(f"| {name} | {r['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f} | "
                 f"{r['initial_sampled_accuracy']:.3f} -> {s['final_sampled_accuracy']:.3f} | "
                 f"{s['reward_last_quarter']:.3f} | {s['ticks']} | {base / s['ticks']:.2f}x | "
                 f"{s['samples_per_tick']:.2f} | "
                 f"{s['mean_staleness']:.2f} / {s['max_staleness']} | "
                 f"{s['mean_kl_behav_prox']:.2e} | {s['wall_s']:.0f} |")
  lines += claims(results, config)
  (out / "areal.md").write_text("\n".join(lines) + "\n")


def claims(results: dict, config: dict) -> list[str]:
  """The paper's targets next to this run, computed from the results (said plainly)."""
  if "eta=0" not in results:
    return []
  sync = summarize(results["eta=0"])
  n_eval = int(config["settings"].get("eval_problems", 0))
  se = (0.25 / n_eval) ** 0.5 if n_eval else float("nan")
  out = ["", "## The paper's targets next to this run", ""]
  asyn = {k: summarize(r) for k, r in results.items() if k.startswith("eta=") and k != "eta=0"
          and int(k.split("=")[1]) >= 2}
  if asyn:
    best = min(asyn.items(), key=lambda kv: kv[1]["ticks"])
    ratio = best[1]["ticks"] / sync["ticks"]
    reached = best[1]["final_accuracy"] >= sync["final_accuracy"]
    out.append(f"- Async (eta >= 2) vs synchronous time for the same number of versions: "
               f"{best[0]} took {ratio:.2f}x the ticks of eta=0 (target <= 0.6x: "
               f"{'met' if ratio <= 0.6 else 'NOT met'}); its final held-out greedy accuracy "
               f"{best[1]['final_accuracy']:.3f} vs eta=0's {sync['final_accuracy']:.3f} "
               f"({'reached' if reached else 'not reached'}). AReaL's 2.57x needs long-tail "
               "generations much longer than a train step; here a generation is at most "
               "max_new_tokens ticks against train_delay_steps per update.")
  largest = max((int(k.split("=")[1]) for k in results if k.startswith("eta=")), default=None)
  naive = results.get(f"naive eta={largest}")
  if naive is not None and f"eta={largest}" in results:
    dec, nai = summarize(results[f"eta={largest}"]), summarize(naive)
    out.append(f"- Decoupled vs naive PPO at eta={largest}: held-out greedy accuracy "
               f"{dec['final_accuracy']:.3f} vs {nai['final_accuracy']:.3f}, last-quarter "
               f"reward {dec['reward_last_quarter']:.3f} vs {nai['reward_last_quarter']:.3f}. "
               "Naive PPO did not collapse here, so the paper's ablation (23.3 vs 42.2 AIME24 "
               f"at eta=4) does **not reproduce** at this size: KL(behav‖prox) stays at "
               f"{dec['mean_kl_behav_prox']:.1e}, so the pi_prox/pi_behav weights are ~1.")
  if n_eval:
    out.append(f"- Held-out accuracy is measured on at most {n_eval} problems (those not among "
               f"the training problems; standard error at least {se:.3f} at p = 0.5): the changes in the table are within about two standard "
               "errors, so this run does not show RL raising held-out accuracy.")
  return out


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
  config = {"settings": settings, "init_export": args.init_export, "quick": args.quick,
            "runs": names}
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for i, (name, rl) in enumerate(names.items()):
      c = config_for(settings, args.init_export, args.quick, **rl)
      results[name] = run_one(c, pathlib.Path(tmp) / str(i))
      s = summarize(results[name])
      print(f"{name}: acc {results[name]['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f}, "
            f"sampled {results[name]['initial_sampled_accuracy']:.3f} -> "
            f"{s['final_sampled_accuracy']:.3f}, "
            f"{s['ticks']} ticks, staleness {s['mean_staleness']:.2f}, "
            f"{s['wall_s']:.0f} s", flush=True)
      common.write_json(out / "areal.json", name="areal", config=config, results=results)
  write_report(results, config, out)
  if args.quick:
    common.mark_quick(out / "areal.md")


if __name__ == "__main__":
  main()
