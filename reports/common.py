"""What every report shares: where its files go, the ``--quick`` flag, JSON and figures.

A report ``reports/<name>.py`` regenerates ``reports/<name>.md`` (+ ``.json``, ``.png``) from
scratch with ``python -m reports.<name>``. ``--quick`` runs a seconds-long smoke version
(CI runs every report that way, so none of them rot) and writes into a temporary directory,
never over the committed results, unless ``--out-dir`` says where.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

from benchmarks.common import command_line, device_info

HERE = pathlib.Path(__file__).resolve().parent


def arg_parser(doc: str) -> argparse.ArgumentParser:
  """An ArgumentParser with ``--quick`` and ``--out-dir``; add the report's own flags."""
  p = argparse.ArgumentParser(description=(doc or "").strip().split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="seconds-long smoke run into a temporary directory (CI)")
  p.add_argument("--out-dir", default=None,
                 help="where <name>.md/.json/.png go (default: reports/, or a temporary "
                 "directory with --quick)")
  return p


def out_dir(args) -> pathlib.Path:
  if args.out_dir:
    path = pathlib.Path(args.out_dir)
  elif args.quick:
    path = pathlib.Path(tempfile.mkdtemp(prefix="effijax-report-"))
  else:
    path = HERE
  path.mkdir(parents=True, exist_ok=True)
  return path


def write_json(path: pathlib.Path, payload: dict) -> pathlib.Path:
  """``payload`` plus the device, jax version and the command that made it."""
  record = {**device_info(), "command": command_line(), **payload}
  path.write_text(json.dumps(record, indent=1, default=str) + "\n")
  return path


def pyplot():
  """matplotlib's pyplot on the non-interactive Agg backend (reports run headless)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
