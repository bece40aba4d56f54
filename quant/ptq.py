"""Post-training quantization of a whole model, one block at a time.

    x_0 = embed(tokens)                                   (calibration batch [N, L])
    for block i = 0 .. n_layers-1:
      quantize block i's linears from x_i      (quant.adadim.quantize_block)
      x_{i+1} = block_i(x_i)                   FP block        (calib_mode "fp", AdaDim RTN-ada)
                                              quantized block (calib_mode "sequential", GPTQ)

Only the seven linears of every block are quantized; the embedding, the norms and an untied
``lm_head`` stay in their export dtype (as in GPTQ's and AdaDim's reference scripts).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from models import transformer as T
from quant import adadim


def quantize_model(cfg: T.ModelConfig, params, calib: dict, spec: adadim.QuantSpec, *,
                   chunk: int = 16, progress: bool = True, collect_stats: bool = False):
  """Quantizes every block's linears.

  Args:
    cfg: the model config.
    params: the dense params (pure dict, ``params["layers"][i]["attn"]["q_proj"]["kernel"]``).
    calib: calibration batch ``{tokens, segment_ids, positions}`` (``[N, L]``,
      :func:`quant.calibration.calibration_batch`).
    spec: method, bits, group size, dim mode, calibration mode.
    chunk: sequences per jitted call (peak memory).
    progress: a tqdm bar over the blocks.
    collect_stats: record the per-input-channel max |x| of every linear's inputs.

  Returns:
    ``(qparams, dense_params, records)``: params whose linear kernels are QuantizedWeights,
    the same with the dequantized dense kernels, and one ``adadim.LinearRecord`` per linear.
  """
  adadim.check_layouts(cfg, spec)
  tokens = jnp.asarray(calib["tokens"])
  if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
    raise ValueError(f"calibration tokens have shape {tokens.shape}; expected a non-empty "
                     "[num_samples, seq_len] batch.")
  fns = adadim.BlockFunctions(cfg, calib["positions"], calib["segment_ids"], chunk=chunk)
  x = fns.embed(params, tokens)
  layers_q, layers_dense, records = {}, {}, []
  bar = tqdm(range(cfg.n_layers), desc=f"{spec.method}-{spec.dim} {spec.bits}-bit",
             unit="block", disable=not progress)
  for i in bar:
    block = params["layers"][i]
    on_linear = (lambda name, i=i: bar.set_postfix_str(f"layer {i} {name}")) if progress \
        else None
    q_block, dense_block, recs = adadim.quantize_block(
        fns, block, x, spec, layer=i, collect_stats=collect_stats, on_linear=on_linear)
    layers_q[i], layers_dense[i] = q_block, dense_block
    records += recs
    if i + 1 < cfg.n_layers:
      x = fns.block_output(dense_block if spec.calib_mode == "sequential" else block, x)
  bar.close()
  qparams = {**params, "layers": layers_q}
  dense = {**params, "layers": layers_dense}
  return qparams, dense, records


def dequantized(qparams):
  """Params with every QuantizedWeight replaced by its dense dequantized kernel."""
  from quant import qtensor  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda v: qtensor.dequantize(v) if isinstance(v, qtensor.QuantizedWeight)
                      else v, qparams,
                      is_leaf=lambda v: isinstance(v, qtensor.QuantizedWeight))


def summary_table(records) -> str:
  """Per-linear dim choice, proxy errors and reconstruction error as a text table."""
  lines = [f"{'layer':>5} {'linear':<14} {'shape':>11} {'dim':>3} {'proxy mse oc':>13} "
           f"{'proxy mse ic':>13} {'rel err':>10}"]
  for r in records:
    oc = f"{r.proxy_mse['oc']:.3e}" if "oc" in r.proxy_mse else "-"
    ic = f"{r.proxy_mse['ic']:.3e}" if "ic" in r.proxy_mse else "-"
    shape = f"{r.shape[0]}x{r.shape[1]}"
    lines.append(f"{r.layer:>5} {r.name:<14} {shape:>11} {r.dim:>3} {oc:>13} {ic:>13} "
                 f"{r.rel_err:>10.3e}")
  n_ic = sum(r.dim == "ic" for r in records)
  lines.append(f"{n_ic}/{len(records)} linears per-IC")
  return "\n".join(lines)
