"""OOMptimizer by compilation: the largest batch per speech bucket whose train step fits.

NeMo's OOMptimizer (Canary, arXiv 2503.05931; ../shared/research/speech_privacy_conformal.md
section A) runs real steps on a GPU with growing batches until one runs out of memory. Here
each trial is a compile of the real sharded train step for one bucket's static shape, and the
verdict is XLA's memory analysis (arguments + outputs + temporaries - donated, per device)
against the budget, so nothing is allocated and no trial runs out of memory
(:func:`core.fit.fit_batch_size`). Buckets go from the largest (longest audio) down; a
smaller bucket fits at least the batch of the larger one, so that batch is its lower bound.

    python -m train.oomptimizer --config configs/asr_balanced.py --target h200 \\
        --out workdirs/asr_balanced_h200.json
    python -m train.oomptimizer --config configs/asr_tiny.py --target cpu \\
        --budget-bytes 200000000 --out /tmp/sizes.json

The JSON (``{"bucket_batch_sizes": [...], ...}``) is what ``data.bucket_batch_sizes`` reads:
``--config.data.bucket_batch_sizes=PATH``. Sizes are global batches, multiples of the
data-parallel size x microbatches. ``--target cpu`` compiles for this machine's devices and
needs ``--budget-bytes`` (a CPU has no HBM to fill).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from configs import targets as targets_lib
from core import checkpoint as ckpt_lib
from core import fit as fit_lib
from core import sharding as sharding_lib
from train import aot, loop, tasks
from train import cli as train_cli


def step_compiler(config, mesh, task=None):
  """``compile(bucket, global_batch)``: the config's sharded train step compiled for one
  bucket's static batch shape on ``mesh`` (nothing allocated)."""
  task = task or tasks.build(config)
  parts = loop.build(config, mesh, task)
  state = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding_lib.replicated(mesh))

  def compile_step(bucket: int, batch: int):
    spec = {name: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parts["batch_sharding"])
            for name, s in task.bucket_spec(bucket, batch).items()}
    return parts["train_step"].lower(state, spec, rng).compile()

  return compile_step


def optimize(config, *, target: str = "cpu", memory_fraction: float = 0.9,
             budget_bytes: float | None = None, max_per_device: int = 256,
             min_batch: int | None = None, granularity: int = 1,
             show_progress: bool = True) -> dict:
  """Per-bucket global batch sizes for ``config`` (task ``asr``) on ``target``.

  ``min_batch``: a global batch known to fit the longest bucket (the search starts there);
  ``granularity``: sizes are multiples of ``granularity`` x data-parallel size x microbatches
  (fewer compiles, coarser sizes).

  Returns ``{"bucket_batch_sizes", "buckets" (shapes), "budget_bytes", "target", "mesh",
  "per_bucket": [fit_batch_size results]}``.
  """
  if not 0 < memory_fraction <= 1:
    raise ValueError(f"--memory-fraction={memory_fraction} must be in (0, 1].")
  if max_per_device < 1:
    raise ValueError(f"--max-per-device={max_per_device} must be >= 1.")
  task = tasks.build(config)
  if not hasattr(task, "bucket_spec"):
    raise ValueError(f"task {config.get('task', 'lm')!r} has no buckets; the OOMptimizer sizes "
                     "the buckets of a speech config (task 'asr', configs/asr_*.py).")
  if target == "cpu":
    if budget_bytes is None:
      raise ValueError("--target cpu has no HBM to fill; pass --budget-bytes N (bytes per "
                       "device), or a real --target such as h200 or v5e-8.")
    mesh = sharding_lib.make_mesh(config.mesh)
    budget = float(budget_bytes)
  else:
    tgt = targets_lib.get(target)
    mesh = aot.target_mesh(config, tgt)
    budget = float(budget_bytes if budget_bytes is not None
                   else memory_fraction * tgt.chip.hbm_bytes)
  if budget <= 0:
    raise ValueError(f"the memory budget must be > 0 bytes, got {budget}.")
  compile_step = step_compiler(config, mesh, task)
  if int(granularity) < 1:
    raise ValueError(f"granularity={granularity} must be >= 1.")
  rows = sharding_lib.data_parallel_size(mesh) * int(config.train.microbatches)
  unit = rows * int(granularity)
  hi = max(unit, rows * int(max_per_device) // unit * unit)
  shapes = task.bucket_shapes()
  sizes: list[int | None] = [None] * len(shapes)
  results: list[dict | None] = [None] * len(shapes)
  lo = unit if min_batch is None else max(unit, -(-int(min_batch) // unit) * unit)
  if lo > hi:
    raise ValueError(f"min_batch={min_batch} is above the largest batch tried ({hi}); raise "
                     "--max-per-device.")
  for k in reversed(range(len(shapes))):
    samples, max_tokens = shapes[k]

    def build(b, k=k):
      return compile_step(k, b)

    bar = tqdm(total=2 + math.ceil(math.log2(max(hi // lo, 1))), disable=not show_progress,
               desc=f"bucket {k} ({samples / task.model_cfg.sample_rate:.2f} s, "
                    f"{max_tokens} tokens)", unit="compile", leave=True)

    def on_trial(b, used, bar=bar):
      bar.update(1)
      bar.set_postfix_str(f"batch {b}: " + ("compiler OOM" if used is None
                                             else f"{used / 1e6:.1f} MB"))

    try:
      res = fit_lib.fit_batch_size(build, lo, hi, budget, multiple=unit, on_trial=on_trial)
    except ValueError as e:
      raise ValueError(f"bucket {k} ({samples} samples, {max_tokens} tokens): {e}") from None
    finally:
      bar.close()
    sizes[k], results[k] = res["batch"], res
    lo = res["batch"]  # a shorter bucket fits at least the longer one's batch
  return {"bucket_batch_sizes": sizes, "buckets": [list(s) for s in shapes],
          "budget_bytes": int(budget), "target": target, "mesh": dict(mesh.shape),
          "unit": unit, "per_bucket": results}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m train.oomptimizer",
                              description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="a speech config file (configs/asr_*.py)")
  p.add_argument("--target", default="cpu",
                 help=f"cpu (this machine; needs --budget-bytes) or one of "
                      f"{', '.join(targets_lib.TARGETS)}")
  p.add_argument("--memory-fraction", type=float, default=aot.DEFAULT_MEMORY_FRACTION,
                 help="share of the target's HBM a step may use")
  p.add_argument("--budget-bytes", type=float, default=None,
                 help="bytes per device (overrides --memory-fraction)")
  p.add_argument("--max-per-device", type=int, default=256,
                 help="largest batch tried per data-parallel device")
  p.add_argument("--out", required=True, help="the bucket_batch_sizes JSON to write")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
      raise ValueError(f"--out {out} exists; pass --overwrite to replace it.")
    if args.target != "cpu":
      targets_lib.get(args.target)  # an unknown name fails before anything compiles
    config = train_cli.load_config(args.config)
    res = optimize(config, target=args.target, memory_fraction=args.memory_fraction,
                   budget_bytes=args.budget_bytes, max_per_device=args.max_per_device)
  except (ValueError, FileNotFoundError, train_cli.UsageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  tmp.write_text(json.dumps({**res, "config": os.fspath(args.config)}, indent=1))
  tmp.replace(out)
  print(f"bucket batch sizes {res['bucket_batch_sizes']} (budget "
        f"{res['budget_bytes'] / 1e9:.3f} GB per device, target {res['target']}) -> {out}\n"
        f"train with --config.data.bucket_batch_sizes={out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
