"""What every benchmark shares: timing, and the one JSON schema its results are written in.

Schema (``write_result``; version ``SCHEMA_VERSION``, keys ``RESULT_KEYS``)::

  {"schema": 1, "name": "lowbit_matmul", "date": "2026-12-02T10:00:00",
   "device": "cpu (cpu) x8", "platform": "cpu", "jax_version": "0.10.2", "cpu_count": 2,
   "command": "python -m benchmarks.x --quick",
   "config": {...what was run...}, "results": [...rows or a dict...]}

Files go to ``benchmarks/results/<name>_<platform>[_<tag>].json`` unless ``out`` is given.
Every benchmark runs as ``python -m benchmarks.<name>`` and has ``--quick`` (``add_quick_flag``):
tiny shapes on the CPU in seconds, written to a temporary directory (``result_path(...,
quick=True)``), never over committed results. CI runs every benchmark that way
(``tests/reports/test_quick.py``), so none of them rot.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SCHEMA_VERSION = 1  # files in results/ without a "schema" key predate it (benchmarks/README.md)
RESULT_KEYS = ("schema", "name", "date", "device", "platform", "jax_version", "cpu_count",
               "command", "config", "results")


def median_time(fn, *args, iters: int) -> float:
  """Seconds per call: median of ``iters`` calls after one compile and one warm-up call."""
  jax.block_until_ready(fn(*args))  # compile
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def device_info() -> dict:
  d = jax.devices()[0]
  return {"device": f"{d.device_kind} ({d.platform}) x{jax.device_count()}",
          "platform": d.platform, "jax_version": jax.__version__,
          "cpu_count": os.cpu_count()}


def command_line() -> str:
  """The command that is running, as a user would type it (``python -m pkg.mod args``)."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  head = f"python -m {spec.name}" if spec is not None and spec.name else \
      f"python {os.path.relpath(sys.argv[0])}"
  return " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])


QUICK_HELP = ("smoke run: tiny shapes, seconds on a CPU, numbers meaningless; writes to a "
              "temporary directory unless --out is given (CI runs every benchmark this way)")


def add_quick_flag(parser) -> None:
  parser.add_argument("--quick", action="store_true", help=QUICK_HELP)


def result_path(name: str, *, tag: str | None = None, quick: bool = False) -> pathlib.Path:
  """``benchmarks/results/<name>_<platform>[_<tag>].json``; with ``quick`` the same name in a
  new temporary directory. A benchmark that saves as it goes calls this once."""
  filename = f"{name}_{device_info()['platform']}{'_' + tag if tag else ''}.json"
  if quick:
    return pathlib.Path(tempfile.mkdtemp(prefix=f"effijax-{name}-")) / filename
  return RESULTS / filename


def write_result(name: str, *, config: dict, results, out: str | os.PathLike | None = None,
                 tag: str | None = None) -> pathlib.Path:
  """Writes ``{name, date, device..., command, config, results}`` as JSON; returns the path.

  ``out`` defaults to :func:`result_path` ``(name, tag=tag)``. Rewriting the same ``out``
  after every row keeps partial results when a time limit cuts a run.
  """
  info = device_info()
  record = {"schema": SCHEMA_VERSION, "name": name,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), **info,
            "command": command_line(), "config": config, "results": results}
  path = pathlib.Path(out) if out is not None else result_path(name, tag=tag)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
  tmp.replace(path)
  return path
