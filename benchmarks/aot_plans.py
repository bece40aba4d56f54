"""Scale on paper: train-step memory plans of lm_1b / lm_7b compiled for accelerators we do not
have (8xH200, TPU v5e-8, v5p-128, v6e-8), with the targets' own compilers (train/aot.py).

For every (config, target): the config's mesh over the target's compile-only devices, a global
batch of ``--per-device-batch`` x data-parallel size, then per device: params, optimizer
state, temporaries, total vs ``0.9 x HBM``, compile time, XLA FLOPs and (TPU) MFU at XLA's
roofline; with ``--fit`` also the largest fitting global batch (bisection over compiles).

  python -m benchmarks.aot_plans --quick            # 1-layer lm_tiny, 8xh200 + v5e-8: CI smoke
  python -m benchmarks.aot_plans                    # lm_1b, lm_7b x 8xh200 v5e-8 v5p-128 v6e-8
  python -m benchmarks.aot_plans --configs lm_1b --targets 8xh200,v5e-8 --fit

Rows are written as they finish (``results.complete`` at the end) to
benchmarks/results/aot_plans_cpu[_<tag>].json; ``--deadline-min`` stops starting new rows.
A compile of the full lm_1b train step takes minutes on a 2-core CPU (the layers are
unrolled), so the full table is a job for a many-core machine.
"""
from __future__ import annotations

import argparse
import importlib
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the targets' compilers are plugins next to it

from benchmarks.common import add_quick_flag, result_path, write_result  # noqa: E402
from configs import targets as targets_lib  # noqa: E402
from core import sharding  # noqa: E402
from train import aot  # noqa: E402

DEFAULT_CONFIGS = ("lm_1b", "lm_7b")
DEFAULT_TARGETS = ("8xh200", "v5e-8", "v5p-128", "v6e-8")


def load_config(name: str, quick: bool):
  c = importlib.import_module(f"configs.{name}").get_config()
  if quick:
    c.model.n_layers = 1
    c.data.seq_len = 64
  return c


def plan_row(config_name, config, target, per_device_batch, fit, memory_fraction):
  mesh = aot.target_mesh(config, targets_lib.get(target))
  dp = sharding.data_parallel_size(mesh)
  c = aot.with_batch(config, per_device_batch * dp * int(config.train.microbatches))
  row = {"config": config_name, "target": target,
         **aot.plan(c, target, memory_fraction=memory_fraction)}
  print(aot.format_plan(row), flush=True)
  if fit:
    row["fit_batch"] = aot.fit_batch(c, target, memory_fraction=memory_fraction, say=print)
    print(f"largest global batch: {row['fit_batch']['batch']}", flush=True)
  return row


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(ap)
  ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
  ap.add_argument("--targets", default=None, help=f"default {','.join(DEFAULT_TARGETS)} "
                  "(--quick: 8xh200,v5e-8)")
  ap.add_argument("--per-device-batch", type=int, default=1)
  ap.add_argument("--fit", action="store_true", help="also bisect the largest fitting batch")
  ap.add_argument("--memory-fraction", type=float, default=aot.DEFAULT_MEMORY_FRACTION)
  ap.add_argument("--deadline-min", type=float, default=None,
                  help="start no new row after this many minutes")
  ap.add_argument("--tag", default=None)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  configs = ["lm_tiny"] if args.quick else args.configs.split(",")
  targets = (args.targets or ",".join(("8xh200", "v5e-8") if args.quick
                                     else DEFAULT_TARGETS)).split(",")
  for t in targets:
    targets_lib.get(t)  # unknown names fail before any compile
  out = args.out or result_path("aot_plans", tag=args.tag, quick=args.quick)
  setup = dict(configs=configs, targets=targets, per_device_batch=args.per_device_batch,
               fit=args.fit, memory_fraction=args.memory_fraction, quick=args.quick)
  rows, t0 = [], time.time()
  for name in configs:
    for target in targets:
      if args.deadline_min and time.time() - t0 > 60 * args.deadline_min:
        print(f"deadline reached; not starting {name} on {target}", flush=True)
        continue
      rows.append(plan_row(name, load_config(name, args.quick), target,
                           args.per_device_batch, args.fit, args.memory_fraction))
      write_result("aot_plans", config=setup, results={"rows": rows, "complete": False},
                   out=out)
  path = write_result("aot_plans", config=setup, results={"rows": rows, "complete": True},
                      out=out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
