"""Asynchronous RL (AReaL) on the arithmetic task from a config file.

  python rl/main.py --config configs/rl_arith.py --workdir workdirs/rl_arith
  python -m rl.main --config configs/rl_arith.py --workdir W --config.rl.eta=2
  python rl/main.py --config configs/rl_arith.py --config_help   # every key and default

Writes WORKDIR/metrics.jsonl (one line per version: reward, losses, KL(behav||prox), the
staleness histogram, held-out accuracy), WORKDIR/checkpoints/ and WORKDIR/export. Re-running
with the same --workdir resumes from the newest checkpoint; --overwrite starts over there.
Exit status 0 when the run is complete, 2 for a usage or config error (one "error:" line).
"""
import json
import os
import sys

if __package__ in (None, ""):  # `python rl/main.py`: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from core import cli  # pylint: disable=wrong-import-position
from train import cli as train_cli  # pylint: disable=wrong-import-position

config_flags.DEFINE_config_file("config", None, "RL config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, export).")
flags.DEFINE_bool("overwrite", False, "Delete this run's checkpoints, metrics and export in "
                  "--workdir and start over.")
flags.DEFINE_integer("cpu_devices", None, "Fake this many CPU devices (two meshes on a CPU).")
flags.DEFINE_bool("config_help", False, "List every key of --config with its default, exit.")
flags.mark_flags_as_required(["config"])


def main(argv) -> int:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
  import jax  # pylint: disable=g-import-not-at-top  (after flags: --config_help stays instant)
  f = flags.FLAGS
  if f.cpu_devices:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", f.cpu_devices)
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not f.workdir:
    raise cli.UsageError("--workdir is required (the run's checkpoints, metrics and export "
                         "go there).")
  if "rl" not in f.config:
    raise cli.UsageError(f"{f['config'].value} is not an RL config (it has no rl section); "
                         "use e.g. configs/rl_arith.py.")
  from rl import trainer  # pylint: disable=g-import-not-at-top
  last = trainer.run(f.config, f.workdir, say=lambda m: print(m, flush=True),
                     overwrite=f.overwrite)
  print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in last.items()}))
  return 0


if __name__ == "__main__":
  cli.run(main, precheck=train_cli.precheck)
