"""Train a model from a config file (a language model, a classifier, ...).

  python train/main.py --config configs/lm_tiny.py --workdir workdirs/lm_tiny
  python train/main.py --config configs/lm_tiny.py --config.optim.lr=1e-3 --workdir ...
  python train/main.py --config configs/lm_1b.py --compile_only --cpu_devices=8  # memory plan
  python train/main.py --config configs/lm_7b.py --compile_only --target v5p-128  # on paper
  python train/main.py --config configs/lm_1b.py --compile_only --target 8xh200 --fit_batch
  python train/main.py --list_configs                     # the configs there are
  python train/main.py --config configs/lm_tiny.py --config_help   # every key and default
  python train/main.py --config configs/lm_tiny.py --workdir ... --eval_only

Re-running with the same --workdir resumes from its latest checkpoint. Exit status: 0 when
the run is complete, 2 for a usage or config error (one "error:" line; --verbose shows the
traceback), 75 (EX_TEMPFAIL) when the run was preempted (SIGTERM) after saving a checkpoint:
rerun the same command to resume.
"""
import json
import os

from absl import flags, logging
from ml_collections import config_flags

from core import cli
from train import cli as train_cli

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved; rerun the same command to resume

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, export).")
flags.DEFINE_bool("overwrite", False, "Delete an incompatible run in --workdir and start over.")
flags.DEFINE_bool("compile_only", False, "Compile the train step, print memory, don't run.")
flags.DEFINE_string("target", None, "With --compile_only: compile for this accelerator target "
                    "without having it (h200, 8xh200, v5e-8, v5p-128, v6e-8, ...: "
                    "configs/targets); prints the per-device memory plan vs its HBM.")
flags.DEFINE_bool("fit_batch", False, "With --target: find the largest global batch that fits "
                  "by bisection over compiles.")
flags.DEFINE_float("memory_fraction", 0.9, "With --target: the share of HBM the plan may use.")
flags.DEFINE_string("plan_json", None, "With --target: also write the plan to this JSON file "
                    "(an existing file needs --overwrite).")
flags.DEFINE_bool("eval_only", False, "Evaluate the newest checkpoint of --workdir; no training.")
flags.DEFINE_integer("cpu_devices", None, "Fake this many CPU devices (plan/test sharding "
                     "on a CPU-only machine, e.g. with --compile_only).")
flags.DEFINE_bool("distributed", os.environ.get("EFFIJAX_DISTRIBUTED") == "1",
                  "Call jax.distributed.initialize() (multi-host TPU pods / GPU clusters).")
flags.DEFINE_bool("list_configs", False, "List the config files and exit.")
flags.DEFINE_bool("config_help", False, "List every key of --config with its default, exit.")
flags.mark_flags_as_required(["config"])


def main(argv) -> int:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
  # jax and the loop are imported here, not at the top: --list_configs and --config_help
  # (handled before flags are parsed) stay instant.
  import jax  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.target or f.fit_batch:
    _check_target_flags(f)
    # The target's compiler is a plugin next to the CPU backend; keep the CPU the default
    # so that jax does not try (and noisily fail) to initialize a GPU or TPU it lacks.
    jax.config.update("jax_platforms", "cpu")
  if f.cpu_devices:  # must precede the first device query
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", f.cpu_devices)
  if f.distributed:
    jax.distributed.initialize()
  if not f["verbosity"].present:  # Orbax/absl INFO logs drown the progress lines
    logging.set_verbosity(logging.WARNING)
  from core import sharding  # pylint: disable=g-import-not-at-top
  from train import loop  # pylint: disable=g-import-not-at-top
  config = f.config
  if f.target:
    return _plan_on_paper(f, config)
  if f.compile_only:
    out = loop.compile_only(config, sharding.make_mesh(config.mesh))
    print(loop.format_memory_plan(out))
    print(json.dumps(out, indent=2))
    return 0
  if not f.workdir:
    raise cli.UsageError("--workdir is required to train (the run's checkpoints, metrics "
                         "and export go there).")
  if f.eval_only:
    result = loop.evaluate_checkpoint(config, f.workdir)
  else:
    result = loop.train_and_evaluate(config, f.workdir, overwrite=f.overwrite)
  print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}))
  return EXIT_PREEMPTED if result.get("status") == "preempted" else 0


def _check_target_flags(f) -> None:
  if not f.compile_only or not f.target:
    raise cli.UsageError("--target and --fit_batch plan a run on paper; use them together with "
                         "--compile_only --target NAME.")
  from configs import targets  # pylint: disable=g-import-not-at-top
  targets.get(f.target)  # unknown name -> the valid ones, before anything is compiled
  if f.plan_json and os.path.exists(f.plan_json) and not f.overwrite:
    raise cli.UsageError(f"--plan_json {f.plan_json} exists; pass --overwrite to replace it.")


def _plan_on_paper(f, config) -> int:
  from train import aot  # pylint: disable=g-import-not-at-top
  out = aot.plan(config, f.target, memory_fraction=f.memory_fraction)
  print(aot.format_plan(out), flush=True)
  if f.fit_batch:
    print(f"largest global batch within {f.memory_fraction:g} x HBM (one compile per trial):",
          flush=True)
    fit = aot.fit_batch(config, f.target, memory_fraction=f.memory_fraction, say=print)
    print(f"fits: global batch {fit['batch']} ({fit['per_device_batch']} per device"
          + (f"); {fit['next_batch']} does not" if fit["next_batch"] else ", the upper bound)"))
    out["fit_batch"] = fit
  text = json.dumps(out, indent=2)
  print(text)
  if f.plan_json:
    tmp = f.plan_json + ".tmp"
    with open(tmp, "w") as fh:
      fh.write(text + "\n")
    os.replace(tmp, f.plan_json)
  return 0


if __name__ == "__main__":
  cli.run(main, precheck=train_cli.precheck)
