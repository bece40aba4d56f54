"""Train a model from a config file (a language model, a classifier, ...).

  python train/main.py --config configs/lm_tiny.py --workdir workdirs/lm_tiny
  python train/main.py --config configs/lm_tiny.py --config.optim.lr=1e-3 --workdir ...
  python train/main.py --config configs/lm_1b.py --compile_only --cpu_devices=8  # memory plan
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


if __name__ == "__main__":
  cli.run(main, precheck=train_cli.precheck)
