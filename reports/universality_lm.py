"""Universality lens, part (c): language models on the bundled corpus. One AdamW model vs a deep
ensemble vs an SGLD mixture at equal compute, for three model sizes (the paper's claim is
about the size of the class).

    python -m reports.universality          # (a), (b) and this part -> reports/universality.md
    python -m reports.universality_lm       # this part alone -> reports/universality_lm.json
    python -m reports.universality_lm --quick

Every model trains through `train/` (`train.loop.train_and_evaluate`) on the same data:

* **single**: AdamW for B steps (the lm_tiny recipe);
* **deep ensemble**: K members with their own init and data-order seeds, AdamW for B/K steps
  each (equal compute), predicting with the mixture (the average of their probabilities);
* **SGLD mixture**: one pSGLD chain of B steps (``--config.optim.name=sgld``, RMSprop
  preconditioner, Gaussian prior, temperature 1, N = the training split's tokens, step
  ``h = 2 lr / N`` so that the drift is an RMSprop step of size ``lr``), keeping K thinned
  samples after burn-in (``train.snapshot_*``), predicting with their mixture.

Scores: validation bits per byte on the same batches; a mixture is ``logsumexp_s log p_s -
log S`` per token (never averaged logits; the logit average is shown beside it).
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bayes import mixture
from configs import lm_tiny
from core import checkpoint
from data import pipeline, tokenizers
from models import registry
from models import transformer as T
from reports import common
from train import loop

SIZES = {  # d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim (vocab 384, as lm_tiny)
    "d64-l2": (64, 2, 2, 1, 32, 192),
    "d128-l4 (lm_tiny)": (128, 4, 4, 2, 32, 384),
    "d192-l4": (192, 4, 6, 2, 32, 576),
}
FULL = dict(sizes=list(SIZES), budget=300, members=4, seq_len=256, batch=16, eval_batches=16,
            adamw_lr=3e-3, sgld_lr=3e-3, prior_std=1.0, burn_in_fraction=0.5)
QUICK = dict(FULL, sizes=["d64-l2"], budget=8, members=2, seq_len=64, batch=8, eval_batches=2)


def _config(cfg, size: str, *, steps: int, seed: int):
  d, layers, heads, kv, hd, mlp = SIZES[size]
  c = lm_tiny.get_config()
  c.seed = seed
  c.model.update(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv, head_dim=hd,
                 mlp_dim=mlp)
  c.data.seq_len = cfg["seq_len"]
  c.train.update(steps=steps, global_batch_size=cfg["batch"], log_every=max(1, steps // 4),
                 eval_every=steps, checkpoint_every=steps, eval_batches=cfg["eval_batches"],
                 async_checkpoint=False)
  c.optim.lr = cfg["adamw_lr"]
  c.optim.warmup_steps = max(1, steps // 10)
  return c


def train_tokens(data_cfg) -> int:
  """N: the tokens of the training split as the pipeline makes them (bos + text + eos)."""
  return int(sum(len(t) + 1 for t in pipeline.iter_documents(data_cfg, "train")))


def _scorer(graphdef):
  """``(params, batch, token_bytes) -> (log p(target), logits, weights, target bytes)``."""

  @jax.jit
  def score(params, batch, token_bytes):
    logits = T.apply(graphdef, params, batch["tokens"], batch["positions"], batch["segment_ids"])
    targets, weights = T.next_token_targets(batch)
    logp = jax.nn.log_softmax(logits)
    gold = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return gold, logits, weights, token_bytes[targets] * weights

  return score


def evaluate_models(exports: list[Path], data_cfg, cfg) -> dict:
  """bits/byte of each model, of their mixture and of their logit average."""
  metas = [checkpoint.read_export_metadata(p) for p in exports]
  _, model_cfg = registry.from_dict(metas[0]["model"])
  graphdef, abstract = T.abstract_params(model_cfg)
  tok = tokenizers.get_tokenizer(data_cfg.tokenizer)
  token_bytes = np.zeros(model_cfg.vocab_size, np.float32)
  token_bytes[:tok.vocab_size] = tok.token_bytes
  batches = list(pipeline.make_lm_iterator(
      data_cfg, split="validation", seq_len=cfg["seq_len"], batch_size=cfg["batch"], seed=0,
      shuffle=False, num_epochs=1))[:cfg["eval_batches"]]
  fn = _scorer(graphdef)
  golds, logit_sums, weights, nbytes = [], [], None, 0.0
  for path in exports:
    params = checkpoint.load_export(path, abstract)[1]
    g_all, w_all = [], []
    for b, batch in enumerate(batches):
      gold, logits, w, by = fn(params, batch, jnp.asarray(token_bytes))
      g_all.append(np.asarray(gold))
      w_all.append(np.asarray(w))
      if len(logit_sums) <= b:
        logit_sums.append(np.asarray(logits, np.float64))
      else:
        logit_sums[b] += np.asarray(logits, np.float64)
      if weights is None:
        nbytes += float(np.sum(by))
    golds.append(np.concatenate([g.ravel() for g in g_all]))
    weights = weights if weights is not None else np.concatenate([w.ravel() for w in w_all])
  golds = np.stack(golds)  # [S, tokens]
  bpb = lambda logp: float(-(logp * weights).sum() / math.log(2) / nbytes)
  mix = np.asarray(mixture.mixture_log_predictive(jnp.asarray(golds), axis=0))
  # The logit average: softmax of the mean logits (what "averaging outputs" often means).
  logit_avg = []
  for b, batch in enumerate(batches):
    mean_logits = jnp.asarray(logit_sums[b] / len(exports), jnp.float32)
    targets, _ = T.next_token_targets(batch)
    lp = jax.nn.log_softmax(mean_logits)
    logit_avg.append(np.asarray(jnp.take_along_axis(lp, targets[..., None], -1)[..., 0]).ravel())
  return {"members": [bpb(g) for g in golds], "mixture": bpb(mix),
          "logit_average": bpb(np.concatenate(logit_avg)), "tokens": float(weights.sum())}


def run(cfg, workdir: Path, say=print) -> dict:
  """Trains and scores every size; ``{size: {single, ensemble, sgld, ...}}``."""
  data_cfg = _config(cfg, cfg["sizes"][0], steps=1, seed=0).data
  n_tokens = train_tokens(data_cfg)
  budget, k = cfg["budget"], cfg["members"]
  out = {"train_tokens": n_tokens}
  for size in cfg["sizes"]:
    t0 = time.time()
    say(f"(c) {size}: single AdamW model, {budget} steps")
    single_dir = workdir / size / "single"
    single = loop.train_and_evaluate(_config(cfg, size, steps=budget, seed=0), single_dir,
                                     say=lambda m: None)
    members = []
    for seed in range(k):
      say(f"(c) {size}: ensemble member {seed + 1}/{k}, {budget // k} steps")
      d = workdir / size / f"member{seed}"
      loop.train_and_evaluate(_config(cfg, size, steps=budget // k, seed=seed), d,
                              say=lambda m: None)
      members.append(d / "export")
    say(f"(c) {size}: pSGLD chain, {budget} steps")
    c = _config(cfg, size, steps=budget, seed=0)
    c.optim.name = "sgld"
    c.optim.lr = 2 * cfg["sgld_lr"] / n_tokens
    c.optim.schedule = "constant"
    c.optim.warmup_steps = max(1, budget // 10)
    c.optim.grad_clip = 0.0
    c.optim.sgld.update(num_data=n_tokens, preconditioner="rmsprop",
                        prior_std=cfg["prior_std"], temperature=1.0, seed=0)
    burn = int(budget * cfg["burn_in_fraction"])
    c.train.snapshot_start = burn + (budget - burn) // k
    c.train.snapshot_every = (budget - burn) // k
    sgld_dir = workdir / size / "sgld"
    loop.train_and_evaluate(c, sgld_dir, say=lambda m: None)
    samples = loop.snapshots(sgld_dir)
    ens = evaluate_models(members, data_cfg, cfg)
    sg = evaluate_models(samples, data_cfg, cfg)
    one = evaluate_models([single_dir / "export"], data_cfg, cfg)
    out[size] = {
        "params": T.ModelConfig(**{f: v for f, v in zip(
            ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"),
            SIZES[size])}).num_params(),
        "single": one["mixture"], "single_loop_eval_bpb": single["eval_bits_per_byte"],
        "ensemble_mixture": ens["mixture"], "ensemble_logit_average": ens["logit_average"],
        "ensemble_members": ens["members"], "sgld_mixture": sg["mixture"],
        "sgld_logit_average": sg["logit_average"], "sgld_samples": sg["members"],
        "sgld_sample_steps": [int(p.name.split("_")[1]) for p in samples],
        "seconds": time.time() - t0}
    say(f"(c) {size}: bits/byte single {one['mixture']:.4f}, ensemble {ens['mixture']:.4f}, "
        f"SGLD mixture {sg['mixture']:.4f} ({time.time() - t0:.0f} s)")
  return out


def markdown(res: dict, cfg) -> list[str]:
  """The (c) section of universality.md."""
  sizes = [s for s in cfg["sizes"] if s in res]
  k, budget = cfg["members"], cfg["budget"]
  rows = []
  for s in sizes:
    r = res[s]
    rows.append(
        f"| {s} | {r['params']:,} | {r['single']:.4f} | {r['ensemble_mixture']:.4f} "
        f"({np.mean(r['ensemble_members']):.4f}) | {r['ensemble_logit_average']:.4f} | "
        f"{r['sgld_mixture']:.4f} ({np.mean(r['sgld_samples']):.4f}) | "
        f"{r['sgld_logit_average']:.4f} |")
  best = {s: min(("single", "ensemble_mixture", "sgld_mixture"), key=lambda m: res[s][m])
          for s in sizes}
  gain = {s: res[s]["single"] - res[s]["sgld_mixture"] for s in sizes}
  return [
      "## (c) Language models: one model vs a deep ensemble vs an SGLD mixture",
      "",
      f"Byte-level Llama-style models on the bundled corpus (`reports/universality_lm.py`), "
      f"{budget} steps of {cfg['batch']} x {cfg['seq_len']} tokens per method (equal compute): "
      f"one AdamW model; {k} AdamW members of {budget // k} steps each, mixed; one pSGLD chain "
      f"(N = {res['train_tokens']:,} training tokens, temperature 1, N(0, "
      f"{cfg['prior_std']:g}^2) prior, h = 2 x {cfg['sgld_lr']:g} / N) with {k} samples kept "
      f"after a {int(cfg['burn_in_fraction'] * 100)}% burn-in, mixed. Validation bits per byte "
      f"on {cfg['eval_batches']} batches (the members' / samples' own mean in parentheses; the "
      "logit average is softmax of mean logits, for contrast):",
      "",
      "| model size | params | single AdamW | deep ensemble mixture (members) | ensemble "
      "logit average | SGLD mixture (samples) | SGLD logit average |",
      "|---|---:|---:|---:|---:|---:|---:|",
      *rows,
      "",
      "Best per size: " + ", ".join(f"{s}: {best[s].replace('_', ' ')}" for s in sizes) + ". "
      "SGLD mixture minus single: " + ", ".join(f"{s}: {-gain[s]:+.4f}" for s in sizes) +
      " bits/byte.",
  ]


def main(argv=None):
  args = common.arg_parser(__doc__).parse_args(argv)
  cfg = QUICK if args.quick else FULL
  out = common.out_dir(args)
  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix="effijax-universality-lm-") as d:
    res = run(cfg, Path(d))
  res["seconds"] = time.time() - t0
  common.write_json(out / "universality_lm.json", name="universality_lm", config=cfg,
                    results=res)
  (out / "universality_lm.md").write_text("\n".join(markdown(res, cfg)) + "\n")
  print("wrote", out / "universality_lm.json")


if __name__ == "__main__":
  main()
