"""Kernel-level benchmark of Hydragen shared-prefix decode attention (Sq = 1, bf16, D = 128).

Three variants side by side, in one run, on the same random inputs:

* naive: every sequence holds its own copy of the prefix KV (``[B, P + S, Hkv, D]``), one
  XLA softmax attention over it; reads the prefix B times.
* xla: the Hydragen decomposition in plain XLA (prefix einsum with all B queries of a kv
  head as one matrix, per-sequence suffix einsum, exact LSE merge).
* pallas: ``shared_prefix_attention`` with the Pallas kernel of the backend.

Each config first checks xla and pallas against naive (max |err| of the output), then times
each variant (median of ``--iters`` calls after warm-up, ``block_until_ready``), and reports
achieved TB/s of the minimum bytes: prefix KV once + suffix KVs + q + out.

  python -m benchmarks.prefix_attention --quick      # CI smoke run, seconds (interpret mode)
  python -m benchmarks.prefix_attention --small      # CPU, seconds (Pallas in interpret mode)
  python -m benchmarks.prefix_attention              # the full grid, on an accelerator
  python -m benchmarks.prefix_attention --gpu-check  # device correctness + block sweep + grid

Writes the benchmarks.common schema (rewritten after every row) to
benchmarks/results/prefix_attention_<platform>[_small|_gpu_check].json; ``--out`` is a
directory for that file, or a ``.json`` path; ``--gpu-check`` writes into ``$OUT`` when set
(the device tool); ``--quick`` into a temporary directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import add_quick_flag, median_time, result_path, write_result
from kernels_pallas import prefix_attention as pa

TARGET = dict(b=64, p=8192, s=256, hq=32, hkv=32)  # PERFORMANCE.md's target shape
HEADS = ((32, 32), (32, 8))  # MHA, GQA
D = 128


def naive_attention(q, k_full, v_full, lengths):
  """q [B, Hq, D] against each sequence's own full KV [B, T, Hkv, D] (first lengths valid)."""
  b, hq, d = q.shape
  hkv = k_full.shape[2]
  qg = q.reshape(b, hkv, hq // hkv, d)
  s = jnp.einsum("bhgd,bthd->bhgt", qg, k_full, preferred_element_type=jnp.float32)
  s = s / np.sqrt(d)
  s = jnp.where(jnp.arange(k_full.shape[1]) < lengths[:, None, None, None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  out = jnp.einsum("bhgt,bthd->bhgd", p.astype(v_full.dtype), v_full,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, hq, d).astype(q.dtype)


def xla_decomposition(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lengths):
  """Hydragen in plain XLA: q [B, Hq, D], prefix [P, Hkv, D], suffix [B, S, Hkv, D]."""
  b, hq, d = q.shape
  hkv = prefix_k.shape[1]
  qg = q.reshape(b, hkv, hq // hkv, d)

  def part(s, v, eq_pv):
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(s - m)
    l = jnp.sum(e, axis=-1)
    out = jnp.einsum(eq_pv, e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    lse = jnp.where(l > 0, m[..., 0] + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
    return out / jnp.where(l > 0, l, 1.0)[..., None], lse

  s = jnp.einsum("bhgd,phd->bhgp", qg, prefix_k, preferred_element_type=jnp.float32)
  o, l = part(s / np.sqrt(d), prefix_v, "bhgp,phd->bhgd")
  outs, lses = [o], [l]
  if suffix_k.shape[1]:
    s = jnp.einsum("bhgd,bthd->bhgt", qg, suffix_k, preferred_element_type=jnp.float32)
    valid = jnp.arange(suffix_k.shape[1]) < suffix_lengths[:, None, None, None]
    o, l = part(jnp.where(valid, s / np.sqrt(d), -jnp.inf), suffix_v, "bhgt,bthd->bhgd")
    outs, lses = outs + [o], lses + [l]
  out, _ = pa.merge_attention(outs, lses)
  return out.reshape(b, hq, d).astype(q.dtype)


def pallas_variant(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lengths, *, impl,
                   interpret, block_sizes=None):
  levels = [pa.PrefixLevel(prefix_k[None], prefix_v[None], (q.shape[0],))]
  q4 = q[:, None]
  if block_sizes is None:
    out, _ = pa.shared_prefix_attention(q4, levels, suffix_k, suffix_v, suffix_lengths,
                                        impl=impl, interpret=interpret)
    return out[:, 0]
  # Block sweep: the two calls spelled out so that block_sizes reaches both kernels.
  o1, l1 = pa.prefix_attention(q4, prefix_k, prefix_v, impl=impl, interpret=interpret,
                               block_sizes=block_sizes)
  o2, l2 = pa.suffix_attention(q4, suffix_k, suffix_v, suffix_lengths, impl=impl,
                               interpret=interpret, block_sizes=block_sizes)
  return pa.merge_attention([o1, o2], [l1, l2])[0][:, 0].astype(q.dtype)


def min_bytes(b, p, s, hq, hkv, itemsize=2):
  return itemsize * (2 * p * hkv * D + 2 * b * s * hkv * D + 2 * b * hq * D)


def device_memory_bytes():
  try:
    return jax.devices()[0].memory_stats()["bytes_limit"]
  except Exception:  # CPU and some backends report none
    return 16 << 30


def run_config(b, p, s, hq, hkv, *, impl, interpret, iters, seed, block_sizes=None,
               with_naive=True):
  key = jax.random.split(jax.random.key(seed), 5)
  bf16 = jnp.bfloat16
  q = jax.random.normal(key[0], (b, hq, D), bf16)
  prefix_k = jax.random.normal(key[1], (p, hkv, D), bf16)
  prefix_v = jax.random.normal(key[2], (p, hkv, D), bf16)
  suffix_k = jax.random.normal(key[3], (b, s, hkv, D), bf16)
  suffix_v = jax.random.normal(key[4], (b, s, hkv, D), bf16)
  lengths = jnp.full((b,), s, jnp.int32)
  args = (q, prefix_k, prefix_v, suffix_k, suffix_v, lengths)
  variants = {
      "xla": jax.jit(xla_decomposition),
      "pallas": jax.jit(functools.partial(pallas_variant, impl=impl, interpret=interpret,
                                          block_sizes=block_sizes)),
  }
  row = dict(b=b, p=p, s=s, hq=hq, hkv=hkv, d=D, min_bytes=min_bytes(b, p, s, hq, hkv))
  naive_bytes = 2 * 2 * b * (p + s) * hkv * D
  # Naive holds B copies of the prefix: skip it when that (plus slack) does not fit.
  if with_naive and 2.5 * naive_bytes < device_memory_bytes():
    full = lambda pre, suf: jnp.concatenate(
        [jnp.broadcast_to(pre, (b,) + pre.shape), suf], axis=1)
    k_full, v_full = jax.jit(full)(prefix_k, suffix_k), jax.jit(full)(prefix_v, suffix_v)
    naive = jax.jit(naive_attention)
    naive_args = (q, k_full, v_full, jnp.full((b,), p + s, jnp.int32))
    expected = naive(*naive_args).astype(jnp.float32)
    row["naive_ms"] = 1e3 * median_time(naive, *naive_args, iters=iters)
    del k_full, v_full, naive_args
  else:
    row["note"] = f"naive skipped: {naive_bytes / 2**30:.1f} GiB of copied KV does not fit"
    expected = variants["xla"](*args).astype(jnp.float32)
  for name, fn in variants.items():
    err = float(jnp.max(jnp.abs(fn(*args).astype(jnp.float32) - expected)))
    row[f"{name}_max_err"] = err
    if not err < 5e-2:  # bf16 inputs, f32 accumulation: errors are ~1e-2 at most
      raise AssertionError(f"{name} disagrees with the reference by {err} at {row}")
    row[f"{name}_ms"] = 1e3 * median_time(fn, *args, iters=iters)
  for name in ("naive", "xla", "pallas"):
    if f"{name}_ms" in row:
      row[f"{name}_tbps"] = row["min_bytes"] / (row[f"{name}_ms"] * 1e-3) / 1e12
  if "naive_ms" in row:
    row["pallas_vs_naive"] = row["naive_ms"] / row["pallas_ms"]
  row["pallas_vs_xla"] = row["xla_ms"] / row["pallas_ms"]
  return row


def print_row(row):
  def ms(name):
    return f"{row[name + '_ms']:9.3f}" if name + "_ms" in row else "        -"
  speed = f"{row.get('pallas_vs_naive', float('nan')):6.1f}x {row['pallas_vs_xla']:5.2f}x"
  print(f"B={row['b']:4d} P={row['p']:6d} S={row['s']:4d} H={row['hq']}/{row['hkv']:<3d}"
        f"{ms('naive')}{ms('xla')}{ms('pallas')} ms  {row['pallas_tbps']:6.2f} TB/s  {speed}"
        f"  err {row['pallas_max_err']:.1e} {row.get('note', '')}", flush=True)


def device_correctness(impl, interpret=False):
  """Kernels (not interpret) vs the oracle on odd shapes: lengths, GQA, empty suffix, tree."""
  rng = np.random.default_rng(0)
  for dtype, g in itertools.product((jnp.float32, jnp.bfloat16), (1, 4)):
    b, hkv, d = 5, 2, 128
    q = jnp.asarray(rng.standard_normal((b, 1, hkv * g, d)), dtype)
    k0, v0 = (jnp.asarray(rng.standard_normal((1, 301, hkv, d)), dtype) for _ in range(2))
    k1, v1 = (jnp.asarray(rng.standard_normal((2, 77, hkv, d)), dtype) for _ in range(2))
    sk, sv = (jnp.asarray(rng.standard_normal((b, 45, hkv, d)), dtype) for _ in range(2))
    l1, s_len = np.array([77, 50]), np.array([0, 45, 3, 17, 1])
    levels = [pa.PrefixLevel(k0, v0, (5,)), pa.PrefixLevel(k1, v1, (2, 3), jnp.asarray(l1))]
    out, lse = pa.shared_prefix_attention(q, levels, sk, sv, jnp.asarray(s_len), impl=impl,
                                          interpret=interpret)
    group = np.array([0, 0, 1, 1, 1])
    full_k = [np.concatenate([k0[0], k1[group[i], :l1[group[i]]], sk[i, :s_len[i]]])
              for i in range(b)]
    full_v = [np.concatenate([v0[0], v1[group[i], :l1[group[i]]], sv[i, :s_len[i]]])
              for i in range(b)]
    t = max(map(len, full_k))
    pad = lambda xs: jnp.asarray(np.stack([np.pad(x, ((0, t - len(x)), (0, 0), (0, 0)))
                                           for x in xs]), dtype)
    ref_out, ref_lse = pa.reference_attention(q, pad(full_k), pad(full_v),
                                              jnp.asarray([len(x) for x in full_k]))
    err_o = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref_out)))
    err_l = float(jnp.max(jnp.abs(lse - ref_lse)))
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-3
    status = "ok" if err_o < tol and err_l < tol else "FAIL"
    print(f"correctness {impl} {jnp.dtype(dtype).name} G={g}: out {err_o:.2e} lse {err_l:.2e}"
          f" {status}", flush=True)
    if status != "ok":
      raise AssertionError("kernel disagrees with the oracle on the device")


def output_path(args) -> pathlib.Path:
  tag = "quick" if args.quick else "small" if args.small else "gpu_check" if args.gpu_check \
      else None
  if args.out is None and args.gpu_check and os.environ.get("OUT"):
    args.out = os.environ["OUT"]  # the device tool brings back what is under $OUT
  if args.out is None:
    return result_path("prefix_attention", tag=tag, quick=args.quick)
  out = pathlib.Path(args.out)
  return out if out.suffix == ".json" else out / result_path("prefix_attention", tag=tag).name


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_quick_flag(parser)
  parser.add_argument("--small", action="store_true", help="tiny CPU run (interpret mode)")
  parser.add_argument("--gpu-check", action="store_true",
                      help="device correctness, block sweep at the target, then the grid")
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--out", default=None, help="a directory (default benchmarks/results/) "
                      "or a .json path")
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  impl = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(backend, "pallas_gpu")
  interpret = backend not in ("gpu", "tpu")
  target = (TARGET["b"], TARGET["p"], TARGET["s"], TARGET["hq"], TARGET["hkv"])
  if args.small or args.quick:
    configs = [(4, 64, 16, 4, 4), (4, 96, 0, 4, 2)]  # MHA; GQA with an empty suffix
    target, args.iters = configs[0], min(args.iters, 2 if args.quick else 3)
  else:
    configs = [target]
    configs += [(b, p, s, hq, hkv) for (hq, hkv), b, p, s in itertools.product(
        HEADS, (16, 64, 256), (1024, 4096, 16384), (0, 128, 512))]
  path = output_path(args)
  config = dict(impl=impl, interpret=interpret, iters=args.iters, small=args.small,
                quick=args.quick, gpu_check=args.gpu_check, d=D,
                configs=[dict(zip("b p s hq hkv".split(), c)) for c in configs],
                block_sizes={f"{k[0]}/{k[1]}": dataclasses.asdict(v)
                             for k, v in pa.BLOCK_SIZES.items()})
  results = dict(rows=[], sweep=[])
  save = lambda: write_result("prefix_attention", config=config, results=results, out=path)
  print(f"device {jax.devices()[0].device_kind}  jax {jax.__version__}  impl {impl}"
        f"{' (interpret)' if interpret else ''}", flush=True)
  if args.gpu_check:
    device_correctness(impl, interpret)
    for bm, bk, warps in ((64, 64, 4), (64, 128, 4), (128, 64, 8), (32, 128, 4), (64, 32, 4)):
      blocks = dataclasses.replace(pa.BLOCK_SIZES[(impl, "decode")], block_m=bm, block_k=bk,
                                   num_warps=warps)
      row = run_config(*target, impl=impl, interpret=interpret, iters=args.iters, seed=1,
                       block_sizes=blocks, with_naive=False)
      row["block_sizes"] = dataclasses.asdict(blocks)
      results["sweep"].append(row)
      save()
      print(f"sweep {blocks}: pallas {row['pallas_ms']:.3f} ms ({row['pallas_tbps']:.2f} TB/s),"
            f" xla {row['xla_ms']:.3f} ms", flush=True)
  print(f"{'config':32s}{'naive':>9s}{'xla':>9s}{'pallas':>9s}", flush=True)
  for i, cfg in enumerate(configs):
    row = run_config(*cfg, impl=impl, interpret=interpret, iters=args.iters, seed=i)
    results["rows"].append(row)
    save()
    print_row(row)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
