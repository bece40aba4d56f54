"""What every benchmark shares: timing, and the one JSON schema its results are written in.

Schema (``write_result``)::

  {"name": "lowbit_matmul", "date": "2026-12-02T10:00:00", "device": "cpu (cpu) x8",
   "platform": "cpu", "jax_version": "0.10.2", "command": "python -m benchmarks.x --quick",
   "config": {...what was run...}, "results": [...rows or a dict...]}

Files go to ``benchmarks/results/<name>_<platform>[_<tag>].json`` unless ``out`` is given.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import shlex
import statistics
import sys
import time

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


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


def write_result(name: str, *, config: dict, results, out: str | os.PathLike | None = None,
                 tag: str | None = None) -> pathlib.Path:
  """Writes ``{name, date, device..., command, config, results}`` as JSON; returns the path."""
  info = device_info()
  record = {"name": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            **info, "command": command_line(), "config": config, "results": results}
  path = pathlib.Path(out) if out is not None else \
      RESULTS / f"{name}_{info['platform']}{'_' + tag if tag else ''}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
  tmp.replace(path)
  return path
