"""Training throughput: tokens/s and model-FLOPs utilization (MFU) of the real train step.

Times ``train_step`` (the jitted, sharded step of train/loop.py, optimizer included) on
random token batches after warm-up: median of ``--steps`` timed steps, each ended with
``block_until_ready``. MFU = achieved model FLOPs / (devices x peak), with model FLOPs from
``ModelConfig.flops_per_token`` (6N + attention, the PaLM/MaxText convention) and peak dense
bf16 FLOP/s per device from the table below (no MFU on CPU: no meaningful peak).

  python -m benchmarks.train_throughput --quick     # CI smoke run: lm_tiny, batch 2 x 32
  python -m benchmarks.train_throughput --config configs/lm_tiny.py
  python -m benchmarks.train_throughput --config configs/lm_1b.py --batch 32   # accelerator

Language-model configs (``task: lm``) only: the batches are random tokens. Writes the
benchmarks.common schema to benchmarks/results/train_throughput_<platform>_<config>.json
(--quick: a temporary directory).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import jax
import numpy as np

from benchmarks.common import add_quick_flag, result_path, write_result
from core import sharding
from train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = dict(config="configs/lm_tiny.py", batch=2, seq_len=32, steps=2, warmup=1)

# Peak dense bf16 FLOP/s per device (vendor datasheets).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "TPU v4": 275e12,
             "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops(device) -> float | None:
  kind = device.device_kind
  for name, peak in PEAK_BF16.items():
    if name.lower() in kind.lower():
      return peak
  return None


def load_config(path: str):
  """``get_config()`` of a config file (relative to the current directory or the repo)."""
  if not os.path.exists(path) and os.path.exists(os.path.join(ROOT, path)):
    path = os.path.join(ROOT, path)
  spec = importlib.util.spec_from_file_location("bench_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(ap)
  ap.add_argument("--config", default=None, help="config file (required unless --quick: "
                  f"{QUICK['config']})")
  ap.add_argument("--batch", type=int, default=None, help="global batch (default: config's)")
  ap.add_argument("--seq-len", type=int, default=None)
  ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  defaults = QUICK if args.quick else dict(steps=10, warmup=2)
  for key, value in defaults.items():  # explicit flags win over --quick's tiny run
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.config is None:
    ap.error("--config is required (or --quick)")

  config = load_config(args.config)
  if config.get("task", "lm") != "lm":
    ap.error(f"{args.config} trains task {config.task!r}; this benchmark feeds random tokens, "
             "so it times language-model configs (task 'lm') only")
  if args.batch:
    config.train.global_batch_size = args.batch
  if args.seq_len:
    config.data.seq_len = args.seq_len
  b, l = int(config.train.global_batch_size), int(config.data.seq_len)
  mesh = sharding.make_mesh(config.mesh)
  parts = loop.build(config, mesh)
  state = parts["init"]()
  rng = np.random.default_rng(0)
  vocab = parts["model_cfg"].vocab_size
  rng_key = jax.random.key_data(jax.random.key(0))

  def batch():  # fresh random tokens each step; one segment per row
    return sharding.to_global_batch(
        {"tokens": rng.integers(3, vocab, (b, l), dtype=np.int32),
         "segment_ids": np.ones((b, l), np.int32),
         "positions": np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy()}, mesh)

  times = []
  for i in range(args.warmup + args.steps):
    x = batch()
    t0 = time.perf_counter()
    state, m = parts["train_step"](state, x, rng_key)
    jax.block_until_ready((state, m))
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  tokens_s = b * l / step_s
  flops_tok = parts["model_cfg"].flops_per_token(l)
  peak = peak_flops(jax.devices()[0])
  mfu = tokens_s * flops_tok / (peak * mesh.size) if peak else None
  name = os.path.splitext(os.path.basename(args.config))[0]
  result = {
      "num_devices": mesh.size, "mesh": dict(mesh.shape), "backend": jax.default_backend(),
      "params": parts["model_cfg"].num_params(), "global_batch": b, "seq_len": l,
      "median_step_s": step_s, "tokens_per_s": tokens_s, "model_tflops_per_s":
      tokens_s * flops_tok / 1e12, "mfu": mfu, "final_loss": float(m["loss"]),
  }
  device = jax.devices()[0].device_kind
  print(f"{name}: {result['params']:,} params, batch {b}x{l} on {mesh.size} "
        f"{device} | {step_s * 1e3:.1f} ms/step | {tokens_s:,.0f} tok/s | "
        f"{result['model_tflops_per_s']:.3f} model TFLOP/s | MFU "
        f"{'n/a (no peak for this device)' if mfu is None else f'{mfu:.1%}'}")
  run_config = {"config": args.config, "global_batch": b, "seq_len": l, "steps": args.steps,
                "warmup": args.warmup, "quick": args.quick, "peak_flops_per_device": peak,
                "experiment": config.to_dict()}
  out = write_result("train_throughput", config=run_config, results=result,
                     out=args.out or result_path("train_throughput", tag=name,
                                                 quick=args.quick))
  print("wrote", out)

if __name__ == "__main__":
  main()
