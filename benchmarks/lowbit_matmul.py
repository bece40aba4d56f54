"""Benchmark: weight-only low-bit matmul vs XLA's bf16 dot and XLA dequantize+dot.

For every (M, K, N, bits, dim) config, on fresh random data: check our kernel against the f32
reference first, then time (median of >= 10 calls after warm-up, block_until_ready)
  * ``bf16_dot``:     x @ w with a dense bf16 weight (the bar: PERFORMANCE.md),
  * ``xla_dequant``:  x @ dequantize(qw, bf16) under jit (XLA fuses what it can),
  * ``ours``:         lowbit_matmul(x, qw, impl=...),
and report speedups vs bf16_dot and achieved GB/s on the packed weight bytes (qw.nbytes()).

  python -m benchmarks.lowbit_matmul --quick                       # CI smoke run, seconds
  python -m benchmarks.lowbit_matmul --small                       # CPU, ~30 s (interpret)
  python -m benchmarks.lowbit_matmul --preset check --check-only   # accelerator correctness
  python -m benchmarks.lowbit_matmul --preset target               # K=8192, N=24576 only
  python -m benchmarks.lowbit_matmul                               # accelerator: full table

Writes the benchmarks.common schema (rewritten after every row; ``results.complete`` set at the
end) to benchmarks/results/lowbit_matmul_<platform>_<preset>[_correctness].json (--quick: a
temporary directory; --out: that path). benchmarks/gpu_check_lowbit.sh runs the H200 sequence.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import add_quick_flag, median_time, result_path, write_result
from core import qtensor
from kernels_pallas import lowbit_matmul as lm

LLAMA_SHAPES = [  # (K, N): Llama-7B and Llama-70B linear layers, plus the PERFORMANCE.md shape
    (4096, 4096), (4096, 11008), (11008, 4096),
    (8192, 8192), (8192, 28672), (28672, 8192),
    (8192, 24576),
]
PRESETS = {
    # CI smoke run (--quick): one small layer, both dims, two bit widths, interpret mode.
    "quick": dict(ms=(1, 5), shapes=[(256, 128)], bits=(4, 3), dims=("oc", "ic"), group=128),
    # CPU: reference vs the interpret-mode kernel, seconds.
    "small": dict(ms=(1, 16), shapes=[(256, 256)], bits=(4, 3), dims=("oc", "ic"), group=128),
    # Accelerator correctness over every kernel variant, decode/prefill tables and odd M.
    "check": dict(ms=(1, 3, 17, 64), shapes=[(1024, 768), (11008, 512)], bits=(2, 3, 4, 8),
                  dims=("oc", "ic"), group=128),
    # The PERFORMANCE.md target shape first (int4 >= 3.5x bf16 for M <= 16).
    "target": dict(ms=(1, 4, 16, 64), shapes=[(8192, 24576)], bits=(4, 3, 2),
                   dims=("oc", "ic"), group=128),
    "full": dict(ms=(1, 4, 16, 64, 256), shapes=LLAMA_SHAPES, bits=(4, 3, 2),
                 dims=("oc", "ic"), group=128),
}


def random_weight(key, k, n, bits, dim, g):
  kq, ks, kz = jax.random.split(key, 3)
  gshape = qtensor.group_shape((k, n), g, dim)
  q = jax.random.randint(kq, (k, n), 0, 2**bits, jnp.int32)
  s = jax.random.uniform(ks, gshape, jnp.float32, 0.002, 0.02).astype(jnp.bfloat16)
  z = jax.random.randint(kz, gshape, 0, 2**bits, jnp.int32)
  return qtensor.from_codes(q, s, z, bits=bits, group_size=g, dim=dim, dtype=jnp.bfloat16)


def rel_err(y, ref):
  y, ref = np.asarray(y, np.float32), np.asarray(ref, np.float32)
  return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def run(cfg, impl, interpret, iters, check_only, tol, on_row=lambda rows: None):
  ours = jax.jit(lambda x, w: lm.lowbit_matmul(x, w, impl=impl, interpret=interpret))
  reference = jax.jit(lm.reference)
  xla_dequant = jax.jit(lambda x, w: jnp.dot(x, qtensor.dequantize(w, jnp.bfloat16),
                                             preferred_element_type=jnp.float32
                                             ).astype(x.dtype))
  bf16_dot = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32
                                          ).astype(x.dtype))
  rows, failures = [], 0
  key = jax.random.PRNGKey(int(time.time()))
  for k, n in cfg["shapes"]:
    for bits in cfg["bits"]:
      for dim in cfg["dims"]:
        key, kw = jax.random.split(key)
        qw = random_weight(kw, k, n, bits, dim, cfg["group"])
        w_dense = qtensor.dequantize(qw, jnp.bfloat16)
        for m in cfg["ms"]:
          key, kx = jax.random.split(key)
          x = jax.random.normal(kx, (m, k), jnp.bfloat16)
          err = rel_err(ours(x, qw), reference(x, qw))
          ok = err < tol
          failures += not ok
          row = dict(m=m, k=k, n=n, bits=bits, dim=dim, group=cfg["group"], rel_err=err,
                     correct=ok, weight_bytes=qw.nbytes())
          if not check_only and ok:
            t_bf16 = median_time(bf16_dot, x, w_dense, iters=iters)
            t_deq = median_time(xla_dequant, x, qw, iters=iters)
            t_ours = median_time(ours, x, qw, iters=iters)
            row.update(bf16_dot_us=t_bf16 * 1e6, xla_dequant_us=t_deq * 1e6,
                       ours_us=t_ours * 1e6, speedup_vs_bf16=t_bf16 / t_ours,
                       xla_dequant_speedup_vs_bf16=t_bf16 / t_deq,
                       ours_weight_gbps=qw.nbytes() / t_ours / 1e9,
                       bf16_weight_gbps=w_dense.nbytes / t_bf16 / 1e9)
          rows.append(row)
          print(format_row(row), flush=True)
          on_row(rows)  # keep partial results if a time limit cuts the run
  return rows, failures


HEADER = (f"{'M':>4} {'K':>6} {'N':>6} {'b':>2} {'dim':>3} {'err':>8} "
          f"{'bf16 us':>9} {'deq us':>9} {'ours us':>9} {'x bf16':>7} {'GB/s':>7}")


def format_row(r):
  s = (f"{r['m']:>4} {r['k']:>6} {r['n']:>6} {r['bits']:>2} {r['dim']:>3} "
       f"{r['rel_err']:>8.1e}")
  if "ours_us" in r:
    s += (f" {r['bf16_dot_us']:>9.1f} {r['xla_dequant_us']:>9.1f} {r['ours_us']:>9.1f} "
          f"{r['speedup_vs_bf16']:>7.2f} {r['ours_weight_gbps']:>7.1f}")
  elif not r["correct"]:
    s += "  WRONG: not timed"
  return s


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
  ap.add_argument("--small", action="store_true", help="alias for --preset small (CPU)")
  add_quick_flag(ap)
  ap.add_argument("--check-only", action="store_true", help="correctness only, no timing")
  ap.add_argument("--impl", default="auto", help="lowbit_matmul impl (default: auto)")
  ap.add_argument("--iters", type=int, default=20, help="timed calls per point (>= 10; "
                  "--quick: 2)")
  ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/"
                  "lowbit_matmul_<platform>_<preset>.json)")
  args = ap.parse_args(argv)
  preset = "quick" if args.quick else "small" if args.small else args.preset

  backend = jax.default_backend()
  impl, interpret = args.impl, False
  if impl == "auto":
    impl = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(backend, "pallas_gpu")
    interpret = backend not in ("gpu", "tpu")  # CPU: the GPU kernel in interpret mode
  if interpret and preset not in ("small", "quick"):
    print("No accelerator: use --small or --quick (interpret mode is far too slow for real "
          "shapes).")
    return 2
  iters = 2 if args.quick else max(10, args.iters)
  device = jax.devices()[0]
  print(f"device={device.device_kind} backend={backend} jax={jax.__version__} impl={impl}"
        f"{' (interpret)' if interpret else ''} preset={preset}")
  out = args.out or result_path(
      "lowbit_matmul", tag=preset + ("_correctness" if args.check_only else ""),
      quick=args.quick)
  config = dict(
      host=platform.node(), impl=impl, interpret=interpret, preset=preset,
      shapes=PRESETS[preset], check_only=args.check_only, iters=iters, tol=2e-2,
      block_sizes={f"{k[0]}/{k[1]}": dataclasses.asdict(v) for k, v in lm.BLOCK_SIZES.items()})

  def save(rows, done=False):
    failures = sum(not r["correct"] for r in rows)
    write_result("lowbit_matmul", config=config, out=out,
                 results=dict(complete=done, failures=failures, rows=rows))

  print(HEADER)
  rows, failures = run(PRESETS[preset], impl, interpret, iters, args.check_only,
                       tol=config["tol"], on_row=save)
  save(rows, done=True)
  print(f"wrote {out}; {failures} incorrect config(s)")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
