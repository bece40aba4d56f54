"""COAT train step vs AdamW: step time, compiled memory and peak device memory.

Runs the real jitted train step of train/loop.py (random token batches) once per optimizer:
``coat_adamw`` (FP8 E4M3 moments with expansion, optim/coat.py) and ``adamw`` (fp32 moments),
same model, batch and mesh. Per optimizer: median step time of ``--steps`` timed steps after
``--warmup``, XLA's memory analysis of the compiled step (arguments = params + optimizer state +
batch, temporaries), the optimizer state's bytes, and the device's ``peak_bytes_in_use`` where
the backend reports it (GPU/TPU). COAT runs first: the peak counter cannot be reset, so the
AdamW peak is the maximum over both runs (it is the larger one).

  python -m benchmarks.coat_step --quick                        # CI smoke run: lm_tiny, CPU
  python -m benchmarks.coat_step --config configs/lm_1b.py      # H200: batch 8 x 2048

No CPU timing claims: on the CPU this only checks that the benchmark runs. Writes the
benchmarks.common schema to benchmarks/results/coat_step_<platform>_<config>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from benchmarks.common import add_quick_flag, result_path, write_result
from benchmarks.train_throughput import load_config
from core import sharding
from optim import coat
from train import loop

QUICK = dict(config="configs/lm_tiny.py", batch=2, seq_len=32, steps=2, warmup=1, layers=1)
DEFAULTS = dict(batch=8, seq_len=2048, steps=10, warmup=2, layers=None)
OPTIMIZERS = ("coat_adamw", "adamw")


def run_one(config, name: str, args) -> dict:
  config.optim.name = name
  b, l = int(config.train.global_batch_size), int(config.data.seq_len)
  mesh = sharding.make_mesh(config.mesh)
  parts = loop.build(config, mesh)
  state = parts["init"]()
  vocab = parts["model_cfg"].vocab_size
  rng = np.random.default_rng(0)
  key = jax.random.key_data(jax.random.key(0))

  def batch():
    return sharding.to_global_batch(
        {"tokens": rng.integers(3, vocab, (b, l), dtype=np.int32),
         "segment_ids": np.ones((b, l), np.int32),
         "positions": np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy()}, mesh)

  x = batch()
  mem = parts["train_step"].lower(state, x, key).compile().memory_analysis()
  times = []
  for i in range(args.warmup + args.steps):
    x = batch()
    t0 = time.perf_counter()
    state, m = parts["train_step"](state, x, key)
    jax.block_until_ready((state, m))
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  out = {"median_step_s": statistics.median(times), "tokens_per_s": b * l / statistics.median(
      times), "opt_state_bytes": coat.state_nbytes(state["opt_state"]),
         "argument_bytes": int(mem.argument_size_in_bytes),
         "temp_bytes": int(mem.temp_size_in_bytes),
         "peak_bytes_in_use": stats.get("peak_bytes_in_use"), "final_loss": float(m["loss"])}
  del state, parts
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(ap)
  ap.add_argument("--config", default=None, help="config file (required unless --quick)")
  ap.add_argument("--batch", type=int, default=None, help="global batch (default 8)")
  ap.add_argument("--seq-len", type=int, default=None, help="default 2048")
  ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
  ap.add_argument("--layers", type=int, default=None, help="override model.n_layers")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  for key, value in (QUICK if args.quick else DEFAULTS).items():
    if getattr(args, key, None) is None:
      setattr(args, key, value)
  if args.config is None:
    ap.error("--config is required (or --quick)")
  results = {}
  for name in OPTIMIZERS:
    config = load_config(args.config)
    if config.get("task", "lm") != "lm":
      ap.error(f"{args.config} is not a language-model config (task 'lm')")
    config.train.global_batch_size = args.batch
    config.data.seq_len = args.seq_len
    if args.layers:
      config.model.n_layers = args.layers
    results[name] = run_one(config, name, args)
    r = results[name]
    print(f"{name}: {r['median_step_s'] * 1e3:.1f} ms/step | optimizer state "
          f"{r['opt_state_bytes'] / 1e9:.3f} GB | compiled arguments "
          f"{r['argument_bytes'] / 1e9:.3f} GB, temporaries {r['temp_bytes'] / 1e9:.3f} GB | "
          f"peak {r['peak_bytes_in_use']}", flush=True)
  results["coat_vs_adamw"] = {
      "step_time": results["coat_adamw"]["median_step_s"] / results["adamw"]["median_step_s"],
      "opt_state_bytes": (results["coat_adamw"]["opt_state_bytes"]
                          / results["adamw"]["opt_state_bytes"])}
  name = os.path.splitext(os.path.basename(args.config))[0]
  out = write_result("coat_step", config={
      "config": args.config, "global_batch": args.batch, "seq_len": args.seq_len,
      "steps": args.steps, "warmup": args.warmup, "layers": args.layers, "quick": args.quick,
      "optimizers": list(OPTIMIZERS)}, results=results,
      out=args.out or result_path("coat_step", tag=name, quick=args.quick))
  print("wrote", out)


if __name__ == "__main__":
  main()
