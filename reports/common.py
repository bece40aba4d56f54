"""What every report shares: where its files go, the ``--quick`` flag, JSON and figures.

A report ``reports/<name>.py`` regenerates ``reports/<name>.md`` (+ ``.json``, ``.png``) from
scratch with ``python -m reports.<name>``. ``--quick`` runs a seconds-long smoke version
(CI runs every report that way: ``tests/reports/test_quick.py``, so none of them rot) and
writes into a temporary directory, never over the committed results, unless ``--out-dir``
says where. The JSON is the benchmarks' schema (``benchmarks.common.write_result``).
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile

from benchmarks.common import write_result

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


def add_from_json_flag(parser: argparse.ArgumentParser, name: str) -> None:
  """``--from-json``: re-render ``<name>.md`` (and figures) from the last run's JSON."""
  parser.add_argument("--from-json", action="store_true",
                      help=f"re-render the report from the last run's {name}.json in --out-dir "
                      "(default reports/); nothing is recomputed")


def out_dir(args) -> pathlib.Path:
  if args.out_dir:
    path = pathlib.Path(args.out_dir)
  elif args.quick:
    path = pathlib.Path(tempfile.mkdtemp(prefix="effijax-report-"))
  else:
    path = HERE
  path.mkdir(parents=True, exist_ok=True)
  return path


def write_json(path: pathlib.Path, *, name: str, config: dict, results) -> pathlib.Path:
  """``{schema, name, date, device, platform, jax_version, cpu_count, command, config,
  results}`` at ``path``: the one schema of benchmarks and reports."""
  return write_result(name, config=config, results=results, out=path)


def mark_quick(md_path: pathlib.Path) -> None:
  """Heads a ``--quick`` report with a warning: its text was written for the full run."""
  md_path.write_text("> **`--quick` smoke run**: toy sizes; the numbers and the text's "
                     "settings below are not the report's. Run without `--quick` for those.\n\n"
                     + md_path.read_text())


def pyplot():
  """matplotlib's pyplot on the non-interactive Agg backend (reports run headless)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
