"""Run a gradient-inversion audit from a config file; write results JSON and an image grid.

  python -m privacy.main --config configs/privacy/gifd_digits.py --workdir workdirs/gifd
  python -m privacy.main --config configs/privacy/gifd_digits.py --config.defense=topk \
      --config.attacks='("ig","gifd")' --workdir workdirs/gifd_topk

Writes ``WORKDIR/results.json`` (the config, what was measured) and ``WORKDIR/grid.png``
(truth on top, one row per attack); the DCGAN prior is kept in ``WORKDIR/prior`` and reused.
An existing ``results.json`` is never replaced without ``--overwrite``.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib

from absl import flags
from ml_collections import config_flags

from core import cli
from privacy import runner

config_flags.DEFINE_config_file("config", None, "Audit config file (configs/privacy/).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (default: workdirs/privacy/<config>).")
flags.DEFINE_bool("overwrite", False, "Replace an existing results.json (and a stale prior).")
flags.mark_flags_as_required(["config"])


def main(argv) -> int:
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
  f = flags.FLAGS
  config = f.config
  name = pathlib.Path(f["config"].config_filename).stem
  workdir = pathlib.Path(f.workdir or os.path.join("workdirs", "privacy", name))
  results_path = workdir / "results.json"
  if results_path.exists() and not f.overwrite:
    raise cli.UsageError(f"{results_path} exists; pass --overwrite to replace it or choose "
                         f"another --workdir.")
  runner.validate(config)  # before any training: a typo fails in a second
  workdir.mkdir(parents=True, exist_ok=True)
  results = runner.run(config, workdir, overwrite=f.overwrite)
  record = {"name": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "config": config.to_dict(), "results": results}
  tmp = results_path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
  tmp.replace(results_path)
  extras = [p for p in ("grid.png", "reconstructions.txt") if (workdir / p).exists()]
  print(f"wrote {results_path}" + "".join(f" and {workdir / p}" for p in extras))
  return 0


if __name__ == "__main__":
  cli.run(main)
