"""Train a model from a config file (a language model, a classifier, ...).

  python train/main.py --config configs/lm_tiny.py --workdir workdirs/lm_tiny
  python train/main.py --config configs/lm_tiny.py --config.optim.lr=1e-3 --workdir ...
  python train/main.py --config configs/lm_1b.py --compile_only --cpu_devices=8  # memory plan

Re-running with the same --workdir resumes from its latest checkpoint. Exit status: 0 when
the run is complete, 2 for a usage or config error (one "error:" line), 75 (EX_TEMPFAIL)
when the run was preempted (SIGTERM) after saving a checkpoint: rerun to resume.
"""
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved; rerun the same command to resume

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, export).")
flags.DEFINE_bool("overwrite", False, "Delete an incompatible run in --workdir and start over.")
flags.DEFINE_bool("compile_only", False, "Compile the train step, print memory, don't run.")
flags.DEFINE_integer("cpu_devices", None, "Fake this many CPU devices (plan/test sharding "
                     "on a CPU-only machine, e.g. with --compile_only).")
flags.DEFINE_bool("distributed", os.environ.get("EFFIJAX_DISTRIBUTED") == "1",
                  "Call jax.distributed.initialize() (multi-host TPU pods / GPU clusters).")
flags.DEFINE_bool("verbose", False, "Show tracebacks for errors (for bug reports).")
flags.mark_flags_as_required(["config"])


def run(argv) -> int:
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.cpu_devices:  # must precede the first device query
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", flags.FLAGS.cpu_devices)
  if flags.FLAGS.distributed:
    jax.distributed.initialize()
  if not flags.FLAGS["verbosity"].present:  # Orbax/absl INFO logs drown the progress lines
    logging.set_verbosity(logging.WARNING)
  from core import sharding  # pylint: disable=g-import-not-at-top
  from train import loop  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  if flags.FLAGS.compile_only:
    out = loop.compile_only(config, sharding.make_mesh(config.mesh))
    print(json.dumps(out, indent=2))
    return 0
  if not flags.FLAGS.workdir:
    raise app.UsageError("--workdir is required to train.")
  result = loop.train_and_evaluate(config, flags.FLAGS.workdir,
                                   overwrite=flags.FLAGS.overwrite)
  print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}))
  return EXIT_PREEMPTED if result.get("status") == "preempted" else 0


def main(argv):
  try:
    sys.exit(run(argv))
  except (ValueError, RuntimeError, FloatingPointError, FileNotFoundError) as e:
    if flags.FLAGS.verbose or type(e).__name__ not in _USER_ERRORS:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


# Errors that mean "your input is wrong", reported in one line; anything else is a bug and
# keeps its traceback.
_USER_ERRORS = ("ValueError", "CheckpointError", "IncompatibleWorkdirError",
                "ExportDestinationError", "FloatingPointError", "FileNotFoundError")


if __name__ == "__main__":
  app.run(main)
