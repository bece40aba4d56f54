"""RL throughput of the two sides of rl/: the rollout engine (continuous batching, with and
without weight-update interruptions) and the learner (recompute pi_prox + k PPO steps).

* rollout: ``slots`` sequences of ``prompt_len`` random tokens, ``new_tokens`` sampled each
  (no stop tokens: every slot decodes the full length), twice as many requests as slots so
  freed slots are refilled; generated tokens/s over the whole run. ``interrupt_every=K``
  calls ``update_weights`` every K decode steps (the in-flight sequences are re-prefilled, all
  in one call),
  the cost AReaL pays for fresher weights (its paper reports +12-17% throughput *from*
  interruptible generation, because a long tail no longer blocks the update).
* learner: one :meth:`rl.learner.Learner.train` on a batch of ``slots`` trajectories of
  ``prompt_len + new_tokens`` tokens packed into rows of ``token_budget``; tokens/s.
* clock: the same two measurements in the units of rl/trainer.py's simulated clock, what
  ``reports/areal.py`` calibrates on the CPU: seconds per decode step (no interruptions) and
  ``train_delay_steps`` = a trained batch over a decode step. On an accelerator, the ratio
  says how much of the generation asynchrony can hide.

A warm-up pass compiles every shape first. Random weights: throughput does not depend on them.

  python -m benchmarks.rl_throughput --quick     # CI smoke run, seconds
  python -m benchmarks.rl_throughput --small     # CPU, tiny model
  python -m benchmarks.rl_throughput             # 1B-shaped model (an accelerator)

Writes the benchmarks.common schema to benchmarks/results/rl_throughput_<platform>[_small].json
(--quick: a temporary directory).
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

from benchmarks.common import add_quick_flag, result_path, write_result
from models import transformer
from rl import controller, learner, rollout


def rollout_run(cfg, graphdef, params, *, slots, prompt_len, new_tokens, interrupt_every,
                rng) -> dict:
  engine = rollout.RolloutEngine(cfg, graphdef, params, num_slots=slots,
                                 max_prompt_len=prompt_len, max_new_tokens=new_tokens)
  requests = [(i, rng.integers(3, cfg.vocab_size, prompt_len).tolist())
              for i in range(2 * slots)]
  pending, done, steps, version = list(requests), [], 0, 0
  start = time.perf_counter()
  while pending or engine.in_flight():
    while pending and engine.free_slots():
      engine.add(*pending.pop(0))
    done += engine.step()
    steps += 1
    if interrupt_every and steps % interrupt_every == 0 and engine.in_flight():
      version += 1
      engine.update_weights(params, version)
  jax.block_until_ready(engine._logits)  # pylint: disable=protected-access
  seconds = time.perf_counter() - start
  tokens = sum(len(t.tokens) for t in done)
  return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
          "decode_steps": steps, "interruptions": engine.stats["interruptions"]}


def learner_run(cfg, graphdef, params, *, slots, prompt_len, new_tokens, token_budget,
                rng) -> dict:
  per_row = max(1, token_budget // (prompt_len + new_tokens))
  rows = -(-slots // 2 // per_row)
  lrn = learner.Learner(graphdef, params, optax.adam(1e-5), devices=jax.devices()[:1],
                        vocab_limit=cfg.vocab_size, minibatches=2, micro_batches=rows,
                        token_budget=token_budget, group_size=4)
  samples = []
  for uid in range(slots):
    traj = rollout.Trajectory(uid, rng.integers(3, cfg.vocab_size, prompt_len).tolist(),
                              rng.integers(3, cfg.vocab_size, new_tokens).tolist(),
                              (-rng.random(new_tokens)).tolist(), [0] * new_tokens)
    samples.append(controller.Sample(controller.Ticket(uid, uid, None, 0), traj,
                                     float(uid % 2)))
  lrn.train(samples)  # compile
  jax.block_until_ready(lrn.params)
  start = time.perf_counter()
  m = lrn.train(samples)
  jax.block_until_ready(lrn.params)
  seconds = time.perf_counter() - start
  tokens = slots * (prompt_len + new_tokens)
  return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
          "loss": m["loss"]}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_quick_flag(ap)
  ap.add_argument("--small", action="store_true", help="tiny model, CPU-sized")
  ap.add_argument("--layers", type=int, default=None, help="override the preset's layers")
  ap.add_argument("--slots", type=int, default=None)
  ap.add_argument("--out", type=str, default=None, help="JSON path (default: results/)")
  args = ap.parse_args(argv)
  if args.quick:
    cfg = transformer.preset("tiny", n_layers=args.layers or 1)
    slots, prompt_len, new_tokens, budget, every = args.slots or 4, 8, 8, 64, (0, 4)
  elif args.small:
    cfg = transformer.preset("tiny", n_layers=args.layers or 2)
    slots, prompt_len, new_tokens, budget, every = args.slots or 16, 16, 64, 512, (0, 16, 4)
  else:
    cfg = transformer.preset("1b", n_layers=args.layers or 16, param_dtype="bfloat16")
    slots, prompt_len, new_tokens, budget, every = (args.slots or 128, 256, 1024, 8192,
                                                    (0, 256, 64))
  graphdef, params = transformer.init(cfg, seed=0)
  rng = np.random.default_rng(0)
  kw = dict(slots=slots, prompt_len=prompt_len, new_tokens=new_tokens)
  rollout_run(cfg, graphdef, params, interrupt_every=every[-1], rng=rng, **kw)  # compile
  rows = []
  for k in every:
    r = rollout_run(cfg, graphdef, params, interrupt_every=k, rng=rng, **kw)
    rows.append({"interrupt_every": k, **r})
    print(f"rollout, interrupt every {k or 'never'}: {r['tokens_per_s']:.1f} tokens/s "
          f"({r['interruptions']} re-prefills)", flush=True)
  train = learner_run(cfg, graphdef, params, token_budget=budget, rng=rng, **kw)
  print(f"learner: {train['tokens_per_s']:.1f} tokens/s", flush=True)
  step_s = rows[0]["seconds"] / rows[0]["decode_steps"]
  clock = {"decode_step_ms": 1e3 * step_s, "train_batch_ms": 1e3 * train["seconds"],
           "train_delay_steps": train["seconds"] / step_s}
  print(f"clock: {clock['decode_step_ms']:.2f} ms per decode step of {slots} slots, a trained "
        f"batch = {clock['train_delay_steps']:.1f} decode steps", flush=True)
  tag = "quick" if args.quick else "small" if args.small else None
  out = write_result("rl_throughput", config={"model": cfg.to_dict(), **kw,
                                              "token_budget": budget, "quick": args.quick,
                                              "small": args.small},
                     out=args.out or result_path("rl_throughput", tag=tag, quick=args.quick),
                     results={"rollout": rows, "learner": train, "clock": clock})
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
