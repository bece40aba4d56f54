"""Metric sinks: ``metrics.jsonl`` (one JSON object per line), TensorBoard, console."""
from __future__ import annotations

import json
import time
from pathlib import Path

from absl import logging


class MetricWriter:

  def __init__(self, workdir: str | Path, *, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      workdir = Path(workdir)
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:  # TensorBoard is optional
        logging.warning("tensorboardX not installed; metrics go to metrics.jsonl only.")

  def write(self, step: int, metrics: dict[str, float]):
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(workdir: str | Path, step: int) -> None:
  """Drops rows with ``step`` beyond ``step`` (atomic rewrite): a resumed run redoes them."""
  path = Path(workdir) / "metrics.jsonl"
  rows = read_metrics(workdir)
  kept = [r for r in rows if r["step"] <= step]
  if len(kept) != len(rows):
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


class Progress:
  """Console line: step, loss, throughput (tok/s or ex/s), ETA (rate between log calls)."""

  def __init__(self, total_steps: int, first_step: int):
    self.total = total_steps
    self._t = time.perf_counter()
    self._step = first_step
    self._tokens = 0.0
    self._unit = "ex"

  def add(self, n: float, unit: str):
    """``n`` more tokens or examples (``unit``: "tok", "ex") went through."""
    self._tokens += n
    self._unit = unit

  def line(self, step: int, metrics: dict[str, float]) -> str:
    now = time.perf_counter()
    dt = max(now - self._t, 1e-9)
    steps_per_s = (step - self._step) / dt
    tok_s = self._tokens / dt
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    self._t, self._step, self._tokens = now, step, 0.0
    eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta != float("inf") else "?"
    return (f"step {step}/{self.total} | loss {metrics['loss']:.4f} | "
            f"{tok_s:,.0f} {self._unit}/s | {steps_per_s:.2f} step/s | ETA {eta_s}")
