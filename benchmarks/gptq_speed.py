"""GPTQ speed and quality: effijax's jitted GPTQ vs Qwix's GPTQ (``qwix.contrib.gptq_core``).

Same layer, same Hessian for both. Our Hessian is GPTQ's ``H = 2 X Xᵀ / n``; Qwix's is
``X Xᵀ``, so Qwix gets ``H * n / 2`` (GPTQ is invariant to the scale of ``H``; damping is
relative). Qwix has no act-order and no static groups, so the head-to-head uses
``act_order=False``; our act-order run is reported as an extra row. Qwix 0.1.8's GPTQ only
works with symmetric (absmax) quantizers (its asymmetric path fails on
``zero_point and ...`` with an array), so both sides quantize symmetrically: ours with
``sym=True`` (GPTQ's grid, zero 2**(b-1)), Qwix with signed int absmax. Each method's
quality is its Hessian-weighted error ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` relative to round-to-nearest
on its own grid (lower is better, RTN = 1).

Times are the median of ``--runs`` runs after one warm-up run (which includes compilation;
Qwix's eager per-column loop compiles one kernel per slice shape on its first call).

  python -m benchmarks.gptq_speed --quick                 # CI smoke run: 128x128, ours only
  python -m benchmarks.gptq_speed --small                 # seconds on a CPU, ours only
  python -m benchmarks.gptq_speed --small --qwix-max 256  # + Qwix (about 2 min warm-up)
  python -m benchmarks.gptq_speed --sizes 4096 --runs 2

Writes the benchmarks.common schema to benchmarks/results/gptq_speed_<platform>[_small].json
(rewritten after every size; --quick: a temporary directory).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import quant
from benchmarks.common import add_quick_flag, result_path, write_result


def _layer(k: int, n: int, seed: int = 0):
  """A random weight and the Hessian of correlated inputs (2k tokens of a mixed basis)."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((k, n), np.float32) * 0.02
  tokens = 2 * k
  x = rng.standard_normal((tokens, k), np.float32) @ (
      np.eye(k, dtype=np.float32) + 0.3 * rng.standard_normal((k, k), np.float32) / np.sqrt(k))
  x = jnp.asarray(x)
  h = quant.hessian_from_inputs(x)  # one sample of `tokens` tokens: n = 1
  h_qwix = h / 2  # Qwix's X Xᵀ (n = 1 here)
  return jnp.asarray(w), h, h_qwix


def _weighted_error(w, w_hat, h) -> float:
  d = (jnp.asarray(w, jnp.float32) - jnp.asarray(w_hat, jnp.float32))
  return float(jnp.sum(d * jnp.matmul(h, d, precision=jax.lax.Precision.HIGHEST)))


def _time(fn, runs: int):
  """(median seconds after one warm-up, warm-up seconds, last result)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  warm = time.perf_counter() - t0
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), warm, out


def bench_size(k: int, n: int, *, bits: int, group: int, runs: int, with_qwix: bool):
  w, h, h_qwix = _layer(k, n)
  rows = []
  rtn_ours = quant.dequantize(quant.rtn(w, bits=bits, group_size=group, dim="oc", sym=True,
                                        zero_in_range=True))
  e_rtn_ours = _weighted_error(w, rtn_ours, h)
  for act_order in (False, True):
    fn = lambda ao=act_order: quant.gptq(w, h, bits=bits, group_size=group, dim="oc",
                                         act_order=ao, sym=True)
    t, warm, qw = _time(fn, runs)
    rows.append(dict(method=f"effijax gptq (act_order={act_order})", k=k, n=n, seconds=t,
                     warmup_seconds=warm,
                     error_vs_rtn=_weighted_error(w, quant.dequantize(qw), h) / e_rtn_ours))
  if with_qwix:
    from qwix._src.core import qarray  # pylint: disable=import-outside-toplevel
    from qwix.contrib import gptq_core  # pylint: disable=import-outside-toplevel
    qtype = {4: jnp.int4, 8: jnp.int8}[bits]
    how = qarray.HowToQuantize(qtype=qtype, channelwise_axes=(0,), tiled_axes={1: group},
                               calibration_method="absmax")
    w_torch = w.T  # Qwix: W[out, in] @ X
    rtn_qwix = qarray.dequantize(qarray.quantize(w_torch, how)).T
    e_rtn_qwix = _weighted_error(w, rtn_qwix, h)
    fn = lambda: gptq_core.quantize_weight(w_torch, h_qwix, how, blocksize=128,
                                           percdamp=0.01)[0]
    t, warm, qa = _time(fn, runs)
    rows.append(dict(method="qwix gptq (no act-order)", k=k, n=n, seconds=t,
                     warmup_seconds=warm,
                     error_vs_rtn=_weighted_error(w, qarray.dequantize(qa).T, h) / e_rtn_qwix))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(parser)
  parser.add_argument("--small", action="store_true", help="one 256x256 layer, quick CPU run")
  parser.add_argument("--sizes", type=int, nargs="+", default=[4096],
                      help="square layer sizes K = N")
  parser.add_argument("--qwix-max", type=int, default=None,
                      help="skip Qwix above this size (default 4096; 0 with --small, since "
                      "its first call compiles one kernel per slice shape: minutes on CPU)")
  parser.add_argument("--bits", type=int, default=4, choices=[4, 8])
  parser.add_argument("--group", type=int, default=128)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--out", default=None, help="JSON path (default: results/...)")
  args = parser.parse_args(argv)
  small = args.small or args.quick
  sizes = [128] if args.quick else [256] if args.small else args.sizes
  runs = 1 if small else args.runs
  qwix_max = args.qwix_max if args.qwix_max is not None else (0 if small else 4096)
  tag = "quick" if args.quick else "small" if args.small else None
  out = args.out or result_path("gptq_speed", tag=tag, quick=args.quick)
  rows = []
  for size in sizes:
    rows += bench_size(size, size, bits=args.bits, group=min(args.group, size), runs=runs,
                       with_qwix=size <= qwix_max)
    _report(args, runs, rows, out)  # after every size, so a long run keeps its partial results


def _report(args, runs, rows, out):
  device = jax.devices()[0]
  print(f"GPTQ {args.bits}-bit, g={args.group}, symmetric, device={device.device_kind} "
        f"({device.platform}), jax {jax.__version__}")
  print(f"{'method':36s} {'K x N':>11s} {'median s':>9s} {'warm-up s':>9s} {'err/RTN':>8s}")
  for r in rows:
    print(f"{r['method']:36s} {r['k']:>5d}x{r['n']:<5d} {r['seconds']:9.2f} "
          f"{r['warmup_seconds']:9.2f} {r['error_vs_rtn']:8.3f}")
  try:
    import qwix  # pylint: disable=import-outside-toplevel
    qwix_version = getattr(qwix, "__version__", "unknown")
  except ImportError:
    qwix_version = None
  config = dict(bits=args.bits, group=args.group, runs=runs, small=args.small,
                quick=args.quick, sizes=sorted({r["k"] for r in rows}), qwix=qwix_version)
  write_result("gptq_speed", config=config, results=rows, out=out)
  print(f"wrote {out}")

if __name__ == "__main__":
  main()
