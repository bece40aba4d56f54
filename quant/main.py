"""Quantize an effijax export with RTN or GPTQ, per-OC, per-IC or AdaDim's per-layer choice.

  python quant/main.py --checkpoint workdirs/lm_small/export --method gptq --dim ada \\
      --bits 3 --group 128 --calib-samples 128 --out workdirs/lm_small/gptq_ada_w3 --eval

Writes a quantized export (:mod:`quant.export`: packed weights, scales, zeros, per-layer dim,
model config, tokenizer), prints a per-linear summary (dim choice, proxy and reconstruction
errors) and, with ``--eval``, the validation perplexity and bits/byte of the quantized model
(through ``models.layers.dot`` -> ``kernels_pallas.lowbit_matmul``) next to the unquantized
one. ``--out`` must be a new (or empty) directory; an existing quantized export is replaced
only with ``--overwrite``, and never the source, a training workdir or any other directory. Calibration: ``--calib-samples`` rows of ``--calib-seq-len`` tokens of the training split
(``--data`` names the dataset; default the bundled corpus). Calibration modes: see
:mod:`quant.ptq` (``fp`` for RTN as AdaDim's RTN-ada, ``sequential`` for GPTQ).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import numpy as np

from core import checkpoint, cli
from data import pipeline, tokenizers
from models import registry
from models import transformer as T
from quant import calibration, ptq


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="a dense effijax export directory")
  p.add_argument("--method", choices=ptq.METHODS, default="rtn")
  p.add_argument("--dim", choices=ptq.DIM_MODES, default="ada",
                 help="oc: per output channel; ic: per input channel; ada: AdaDim's choice")
  p.add_argument("--bits", type=int, default=4, help=f"one of {ptq.BITS}")
  p.add_argument("--group", type=int, default=None,
                 help="group size (default: 128, or the largest of 256/128/64/32/16 that "
                 "fits every linear of the model)")
  p.add_argument("--calib-samples", type=int, default=128)
  p.add_argument("--calib-seq-len", type=int, default=256,
                 help="tokens per calibration row (also the --eval row length)")
  p.add_argument("--calib-split", default="train")
  p.add_argument("--calib-mode", choices=ptq.CALIB_MODES, default=None,
                 help="default: fp for rtn (AdaDim RTN-ada), sequential for gptq")
  p.add_argument("--data", default=None, help="TFDS dataset name (default: bundled corpus)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--damp", type=float, default=0.01, help="GPTQ relative damping")
  p.add_argument("--chunk", type=int, default=16, help="sequences per jitted call")
  p.add_argument("--out", required=True,
                 help="output export directory: new, empty, or (with --overwrite) a quantized "
                 "export to replace")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing quantized export at --out")
  p.add_argument("--eval", action="store_true", help="validation ppl, FP vs quantized")
  p.add_argument("--eval-batches", type=int, default=16)
  p.add_argument("--eval-batch-size", type=int, default=16)
  p.add_argument("--eval-split", default="validation")
  p.add_argument("--no-progress", action="store_true")
  return p.parse_args(argv)


def load_source(path: str):
  """``(meta, cfg, graphdef, params)`` of a dense transformer export, or a clear ValueError."""
  meta = checkpoint.read_export_metadata(path)
  if "quantization" in meta:
    raise ValueError(f"--checkpoint {path} is already quantized "
                     f"({meta['quantization'].get('method')}); pass a dense export.")
  model = meta.get("model")
  try:
    if not isinstance(model, dict):
      raise ValueError("export.json has no 'model' dict")
    module, cfg = registry.from_dict(model)
    if module is not T:
      raise ValueError(f"it holds a {model.get('name')!r} model")
  except (TypeError, ValueError) as e:
    raise ValueError(f"--checkpoint {path} is not an export of an effijax transformer "
                     f"(language model): {e}.") from e
  graphdef, abstract = T.abstract_params(cfg)
  _, params = checkpoint.load_export(path, abstract)
  return meta, cfg, graphdef, params


def pick_group_size(args, graphdef, params, spec_kwargs) -> int:
  """``--group``, or the largest size that fits every linear (128 preferred), said aloud."""
  if args.group is not None:
    return args.group
  shapes = ptq.quantized_linears(graphdef, params).values()
  fits = ptq.fitting_group_sizes(shapes, ptq.QuantSpec(**spec_kwargs, group_size=128))
  if not fits:
    raise ValueError("no group size of 256/128/64/32/16 fits every linear of this model; "
                     "pass --group explicitly.")
  group = 128 if 128 in fits else fits[0]
  if group != 128:
    print(f"--group not given: using {group}, the largest group size that fits every linear "
          "of this model (128 does not).")
  return group


def token_bytes_for(tokenizer_spec: str, vocab_size: int) -> np.ndarray:
  tok = tokenizers.get_tokenizer(tokenizer_spec)
  if tok.vocab_size > vocab_size:
    raise ValueError(f"tokenizer {tokenizer_spec!r} has {tok.vocab_size} tokens, more than "
                     f"the model's vocab_size={vocab_size}: wrong export or tokenizer.")
  out = np.zeros(vocab_size, np.float32)
  out[:tok.vocab_size] = tok.token_bytes
  return out


_EVAL_STEPS = {}


def _eval_step(graphdef, token_bytes):
  """The jitted eval step, cached so that repeated evaluations reuse its compilations."""
  key = (graphdef, np.asarray(token_bytes, np.float32).tobytes())
  if key not in _EVAL_STEPS:
    def eval_step(params, batch):
      logits = T.apply(graphdef, params, batch["tokens"], batch["positions"],
                       batch["segment_ids"])
      return T.lm_eval_sums(logits, batch, token_bytes)
    _EVAL_STEPS[key] = jax.jit(eval_step)
  return _EVAL_STEPS[key]


def evaluate(graphdef, params_list, batches, token_bytes) -> list[dict]:
  """Validation loss/perplexity/bits-per-byte of each params tree on the same batches."""
  eval_step = _eval_step(graphdef, token_bytes)
  sums = [dict(nll=0.0, tokens=0.0, bytes=0.0) for _ in params_list]
  for batch in batches:
    for s, params in zip(sums, params_list):
      out = jax.device_get(eval_step(params, batch))
      for k in s:
        s[k] += float(out[k])
  results = []
  for s in sums:
    if s["tokens"] == 0:
      raise ValueError("the evaluation split produced no target tokens.")
    loss = s["nll"] / s["tokens"]
    results.append({"loss": loss, "perplexity": math.exp(loss),
                    "bits_per_byte": s["nll"] / (math.log(2) * max(s["bytes"], 1.0)),
                    "tokens": s["tokens"]})
  return results


def eval_batches(data_cfg, *, split: str, seq_len: int, batch_size: int, num_batches: int):
  it = pipeline.make_lm_iterator(data_cfg, split=split, seq_len=seq_len, batch_size=batch_size,
                                 seed=0, shuffle=False, num_epochs=1)
  out = []
  for batch in it:
    if 0 <= num_batches <= len(out):
      break
    out.append(batch)
  return out


def run(args: argparse.Namespace) -> dict:
  """The whole command; returns {out, records, seconds, eval, qparams} (qparams not printed)."""
  t0 = time.time()
  spec_kwargs = dict(method=args.method, bits=args.bits, dim=args.dim,
                     calib_mode=args.calib_mode, damp=args.damp)
  ptq.QuantSpec(**spec_kwargs, group_size=args.group or 128)  # bad flags fail first
  if not os.path.isdir(args.checkpoint):
    raise ValueError(f"--checkpoint {args.checkpoint!r} is not a directory; pass an effijax "
                     "export (WORKDIR/export written by train/main.py).")
  # Before any work: the destination must be safe to write (never the source, a workdir...).
  checkpoint.check_export_destination(args.out, kind="quantized", overwrite=args.overwrite,
                                      sources=[args.checkpoint])
  meta, cfg, graphdef, params = load_source(args.checkpoint)
  spec = ptq.QuantSpec(**spec_kwargs, group_size=pick_group_size(args, graphdef, params,
                                                                  spec_kwargs))
  ptq.check_layouts(graphdef, params, spec)  # before any data is read
  tokenizer = str(meta.get("tokenizer", "byte"))
  data_cfg = calibration.data_config(tokenizer, name=args.data, data_dir=args.data_dir)
  token_bytes = token_bytes_for(tokenizer, cfg.vocab_size)
  calib = calibration.calibration_batch(data_cfg, num_samples=args.calib_samples,
                                        seq_len=args.calib_seq_len, split=args.calib_split,
                                        seed=args.seed)
  qparams, _, records = ptq.quantize_model(graphdef, params, calib, spec, forward=T.forward,
                                           chunk=args.chunk, progress=not args.no_progress)
  print(ptq.summary_table(records))
  extra = {k: v for k, v in meta.items()
           if k not in ("format", "version", "dtype", "model", "quantization")}
  extra["source"] = os.path.abspath(args.checkpoint)
  quantization = {
      "method": spec.method, "bits": spec.bits, "group_size": spec.group_size,
      "dim": spec.dim, "calib_mode": spec.calib_mode, "damp": spec.damp,
      "calib": {"samples": int(calib["tokens"].shape[0]), "seq_len": args.calib_seq_len,
                "split": args.calib_split, "dataset": data_cfg.name, "seed": args.seed},
      "linears": [r.to_json() for r in records]}
  out_path = checkpoint.save_export(args.out, qparams, model=registry.to_dict(T, cfg),
                                    dtype="float32", extra=extra, quantization=quantization,
                                    overwrite=args.overwrite, sources=[args.checkpoint])
  result = {"out": str(out_path), "records": [r.to_json() for r in records],
            "seconds": round(time.time() - t0, 1), "qparams": qparams}
  if args.eval:
    batches = eval_batches(data_cfg, split=args.eval_split, seq_len=args.calib_seq_len,
                           batch_size=args.eval_batch_size, num_batches=args.eval_batches)
    fp, quant = evaluate(graphdef, [params, qparams], batches, token_bytes)
    result["eval"] = {"fp": fp, "quantized": quant}
    label = f"{spec.method}-{spec.dim} w{spec.bits} g{spec.group_size}"
    print(f"{'model':<24} {'ppl':>9} {'bits/byte':>10} {'loss':>8}")
    for name, r in (("fp (unquantized)", fp), (label, quant)):
      print(f"{name:<24} {r['perplexity']:>9.4f} {r['bits_per_byte']:>10.4f} "
            f"{r['loss']:>8.4f}")
  print(f"wrote {out_path} in {result['seconds']} s")
  return result


def main(argv=None) -> int:
  args = parse_args(argv)
  return cli.report_user_errors(lambda: run(args) and None)


if __name__ == "__main__":
  sys.exit(main())
