"""Training throughput: tokens/s and model-FLOPs utilization (MFU) of the real train step.

Times ``train_step`` (the jitted, sharded step of train/train.py, optimizer included) on
random token batches after warm-up: median of ``--steps`` timed steps, each ended with
``block_until_ready``. MFU = achieved model FLOPs / (devices x peak), with model FLOPs from
``ModelConfig.flops_per_token`` (6N + attention, the PaLM/MaxText convention) and peak dense
bf16 FLOP/s per device from the table below (no MFU on CPU: no meaningful peak).

  python benchmarks/train_throughput.py --config configs/lm_tiny.py
  python benchmarks/train_throughput.py --config configs/lm_1b.py --batch 32   # accelerator
Writes benchmarks/results/train_throughput_<config>_<device>_<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from core import sharding  # noqa: E402
from train import loop  # noqa: E402

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
  spec = importlib.util.spec_from_file_location("bench_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--batch", type=int, default=None, help="global batch (default: config's)")
  ap.add_argument("--seq-len", type=int, default=None)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()

  config = load_config(args.config)
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
  result = {
      "benchmark": "train_throughput", "config": os.path.basename(args.config),
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "device": jax.devices()[0].device_kind, "num_devices": mesh.size,
      "mesh": dict(mesh.shape), "jax": jax.__version__, "backend": jax.default_backend(),
      "params": parts["model_cfg"].num_params(), "global_batch": b, "seq_len": l,
      "median_step_s": step_s, "tokens_per_s": tokens_s, "model_tflops_per_s":
      tokens_s * flops_tok / 1e12, "mfu": mfu, "final_loss": float(m["loss"]),
  }
  print(f"{result['config']}: {result['params']:,} params, batch {b}x{l} on {mesh.size} "
        f"{result['device']} | {step_s * 1e3:.1f} ms/step | {tokens_s:,.0f} tok/s | "
        f"{result['model_tflops_per_s']:.3f} model TFLOP/s | MFU "
        f"{'n/a (no peak for this device)' if mfu is None else f'{mfu:.1%}'}")
  out = args.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"train_throughput_{os.path.splitext(result['config'])[0]}_{jax.default_backend()}_"
      f"{datetime.date.today().isoformat()}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", out)


if __name__ == "__main__":
  main()
