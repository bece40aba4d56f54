"""Inference on paper: one lm_7b decode step compiled for a single chip we do not have
(infer/plan.py): weights (bf16 or int4), KV cache (plain or Hydragen shared prefix),
temporaries and the total against 0.9 x HBM, for batch 64 sharing a 16K-token prefix.

  python -m benchmarks.aot_decode_plans --quick     # 1-layer lm_tiny on h200: CI smoke run
  python -m benchmarks.aot_decode_plans             # lm_7b, {bf16, int4} x {plain, Hydragen}
  python -m benchmarks.aot_decode_plans --targets h200,v5e-4 --fit

The TPU targets use the first chip of the slice. Rows are written as they finish
(``results.complete`` at the end) to benchmarks/results/aot_decode_plans_cpu[_<tag>].json. A
compile that XLA refuses (XLA:TPU checks HBM at compile time) is recorded as its error.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.common import add_quick_flag, result_path, write_result  # noqa: E402
from configs import targets as targets_lib  # noqa: E402
from infer import plan  # noqa: E402
from models import transformer  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(ap)
  ap.add_argument("--targets", default="h200")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--prefix-len", type=int, default=16384)
  ap.add_argument("--suffix-len", type=int, default=1024, help="each sequence's own tokens")
  ap.add_argument("--weights", default="bf16,int4")
  ap.add_argument("--fit", action="store_true", help="also bisect the largest batch")
  ap.add_argument("--deadline-min", type=float, default=None)
  ap.add_argument("--tag", default=None)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if args.quick:
    cfg = transformer.ModelConfig(n_layers=1)
    args.batch, args.prefix_len, args.suffix_len = 8, 256, 64
  else:
    cfg = transformer.preset("7b")
  targets = args.targets.split(",")
  for t in targets:
    targets_lib.get(t)
  out = args.out or result_path("aot_decode_plans", tag=args.tag, quick=args.quick)
  setup = dict(model="lm_tiny(1 layer)" if args.quick else "lm_7b", targets=targets,
               batch=args.batch, prefix_len=args.prefix_len, suffix_len=args.suffix_len,
               weights=args.weights, fit=args.fit)
  rows, t0 = [], time.time()
  for target in targets:
    for weights in args.weights.split(","):
      bits = None if weights == "bf16" else int(weights.removeprefix("int"))
      for hydragen in (True, False):
        if args.deadline_min and time.time() - t0 > 60 * args.deadline_min:
          print(f"deadline reached; not starting {target} {weights} hydragen={hydragen}")
          continue
        t = time.time()
        kw = dict(prefix_len=args.prefix_len, suffix_len=args.suffix_len, hydragen=hydragen,
                  bits=bits)
        try:
          row = plan.plan(cfg, target, batch=args.batch, **kw)
        except Exception as e:  # pylint: disable=broad-except
          if "RESOURCE_EXHAUSTED" not in str(e):
            raise
          row = {"target": target, "batch": args.batch, "weights": weights,
                 "hydragen": hydragen, "fits": False,
                 "compile_error": str(e).splitlines()[0][:300]}
        row["compile_s"] = round(time.time() - t, 1)
        if args.fit:
          try:
            row["fit_batch"] = plan.fit_batch(cfg, target, max_batch=max(args.batch, 1) * 4,
                                              **kw)
          except ValueError as e:
            row["fit_batch"] = {"error": str(e)}
        print({k: v for k, v in row.items() if k != "fit_batch"}, flush=True)
        rows.append(row)
        write_result("aot_decode_plans", config=setup,
                     results={"rows": rows, "complete": False}, out=out)
  path = write_result("aot_decode_plans", config=setup, results={"rows": rows, "complete": True},
                      out=out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
