"""Canary's efficiency claims on our scale (arXiv 2503.05931): batching and the encoder/decoder
split.

1. **Batching at one memory budget.** The budget is what the longest bucket needs at a fixed
   global batch; a fixed batch size must fit the longest bucket, so every bucket gets it,
   while the OOMptimizer (``train.oomptimizer``) gives each bucket the largest batch that
   compiles within the same budget. Reported: per-bucket sizes, mean batch size and padding
   (1 - real / padded audio seconds and tokens) over one epoch of the training split.
2. **Encoder-heavy vs balanced.** ``asr_balanced`` (6/6 blocks) and ``asr_encoder_heavy``
   (10/1 blocks, about equal parameters) trained for the same steps on the same batches;
   validation WER of greedy decoding and RTFx (audio seconds / wall seconds of transcription
   by ``infer.asr.Transcriber``, compilation excluded).

    python -m reports.canary            # full: both configs as committed (CPU: hours)
    python -m reports.canary --quick    # toy sizes into a temporary directory

A skeleton: the train throughput (audio-seconds/s) of the two batch-size policies is not
measured yet.
"""
from __future__ import annotations

import datetime
import time

import numpy as np

from configs import asr_balanced, asr_encoder_heavy
from core import fit, sharding
from data import bucketing
from infer import asr as infer_asr
from reports import common
from train import loop, oomptimizer, tasks
from train.tasks import asr as asr_task

FULL = {"steps": 3000, "budget_rows": 64, "max_per_device": 256, "granularity": 1,
        "overrides": {}}
QUICK = {"steps": 8, "budget_rows": 8, "max_per_device": 16, "granularity": 4,
         "overrides": {"model": dict(d_model=32, n_heads=2, head_dim=16, mlp_dim=64,
                                     subsampling_channels=8),
                       "data": dict(num_train=48, num_eval=8, max_words=2, num_buckets=2,
                                    num_subbuckets=1, max_duration=8 * 2.0)}}


def configs(cfg):
  out = {}
  for name, module in (("balanced", asr_balanced), ("encoder_heavy", asr_encoder_heavy)):
    c = module.get_config()
    for section, values in cfg["overrides"].items():
      for k, v in values.items():
        c[section][k] = v
    c.train.steps = cfg["steps"]
    c.train.eval_every = cfg["steps"]
    c.train.checkpoint_every = cfg["steps"]
    c.train.log_every = max(1, cfg["steps"] // 10)
    c.train.async_checkpoint = False
    c.optim.warmup_steps = max(1, min(c.optim.warmup_steps, cfg["steps"] // 4))
    out[name] = c
  return out


def batching(config, cfg) -> dict:
  """Fixed vs OOMptimizer batch sizes at the budget of a fixed batch on the longest bucket."""
  task = tasks.build(config)
  longest = task.grid.num_buckets - 1
  fixed_rows = cfg["budget_rows"]
  compile_step = oomptimizer.step_compiler(config, sharding.make_mesh(config.mesh), task)
  budget = fit.step_bytes(compile_step(longest, fixed_rows))
  fitted = oomptimizer.optimize(config, target="cpu", budget_bytes=budget,
                                max_per_device=cfg["max_per_device"], min_batch=fixed_rows,
                                granularity=cfg["granularity"], show_progress=False)
  fixed = [fixed_rows] * task.grid.num_buckets
  corpus = task.corpus(config.data.train_split)
  dur = corpus["num_samples"] / 16_000
  ntok = [len(task.tokenizer.encode(t)) for t in corpus["text"]]
  out = {"budget_bytes": int(budget), "bucket_shapes": task.bucket_shapes()}
  for name, sizes in (("fixed", fixed), ("oomptimizer", fitted["bucket_batch_sizes"])):
    sampler = bucketing.BucketedBatches(dur, ntok, task.grid, batch_sizes=sizes, seed=0,
                                        num_epochs=1)
    out[name] = {"bucket_batch_sizes": sizes,
                 **bucketing.padding_fractions(list(sampler), dur, ntok)}
  return out


def architecture(config, workdir) -> dict:
  """Train, then WER and RTFx of greedy transcription of the validation split."""
  t0 = time.time()
  res = loop.train_and_evaluate(config, workdir, overwrite=True)
  train_s = time.time() - t0
  task = tasks.build(config)
  corpus = task.corpus(config.data.eval_split)
  audios = [ex["audio"] for ex in corpus["source"]]
  model = infer_asr.Transcriber(str(workdir / "export"))
  texts, stats = model.transcribe(audios)
  errors, words = asr_task.word_errors(list(corpus["text"]), texts)
  return {"num_params": task.model_cfg.num_params(), "enc_layers": task.model_cfg.enc_layers,
          "dec_layers": task.model_cfg.dec_layers, "train_seconds": train_s,
          "eval_wer_loop": res.get("eval_wer"), "wer": errors / max(words, 1), **stats}


def main():
  args = common.arg_parser(__doc__).parse_args()
  cfg = QUICK if args.quick else FULL
  out = common.out_dir(args)
  cfgs = configs(cfg)
  print("batching: fixed vs OOMptimizer batch sizes", flush=True)
  batch = batching(cfgs["balanced"], cfg)
  arch = {}
  for name, c in cfgs.items():
    print(f"training {name}", flush=True)
    arch[name] = architecture(c, out / f"run_{name}")
  common.write_json(out / "canary.json", name="canary",
                    config={k: v for k, v in cfg.items()},
                    results={"batching": batch, "architecture": arch})
  command = "python -m reports.canary" + (" --quick" if args.quick else "")
  f, o = batch["fixed"], batch["oomptimizer"]
  md = [
      "# Canary-style ASR: batch sizes by compilation, encoder-heavy vs balanced",
      "",
      f"Generated by `{command}` on {datetime.date.today().isoformat()}.",
      "",
      "## Batching at one memory budget "
      f"({batch['budget_bytes'] / 1e6:.1f} MB per device)",
      "",
      "| policy | batch sizes per bucket | mean batch | padding audio | padding tokens |",
      "|---|---|---|---|---|",
      f"| fixed | {f['bucket_batch_sizes']} | {f['mean_batch_size']:.1f} | "
      f"{100 * f['duration']:.1f}% | {100 * f['tokens']:.1f}% |",
      f"| OOMptimizer | {o['bucket_batch_sizes']} | {o['mean_batch_size']:.1f} | "
      f"{100 * o['duration']:.1f}% | {100 * o['tokens']:.1f}% |",
      "",
      f"## Encoder-heavy vs balanced after {cfg['steps']} steps",
      "",
      "| config | blocks (enc/dec) | params | validation WER | RTFx |",
      "|---|---|---|---|---|",
  ]
  for name, r in arch.items():
    md.append(f"| asr_{name} | {r['enc_layers']}/{r['dec_layers']} | {r['num_params']:,} | "
              f"{100 * r['wer']:.1f}% | {r['rtfx']:.1f} |")
  md += ["", "Train throughput (audio-seconds/s) per batch policy: not measured yet."]
  path = out / "canary.md"
  path.write_text("\n".join(md) + "\n")
  if args.quick:
    common.mark_quick(path)
  print(f"wrote {path}", flush=True)
  print(np.round(o["mean_batch_size"] / max(f["mean_batch_size"], 1e-9), 2),
        "x mean batch with the OOMptimizer", flush=True)


if __name__ == "__main__":
  main()
