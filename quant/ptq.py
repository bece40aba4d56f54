"""Post-training quantization of any model built from :class:`models.layers.Linear`, one block
at a time (RTN or GPTQ, per-OC, per-IC or AdaDim's per-layer choice)::

    x_0 = what block 0 receives (the embedded calibration batch [N, L, d])
    for block i = 0 .. n-1:
      for each group of linears that read the same input, in call order:
        X = the group's input     captured from the FP block        (calib_mode "fp")
                                  or from the block with its earlier  (calib_mode "sequential")
                                  linears already quantized
        for each linear W of the group:
          dim = AdaDim's choice (RTN proxy at the enclosing sub-block), or the fixed "oc"/"ic"
          W <- RTN_dim(W) or GPTQ_dim(W, H = 2 X X^T / n)
      x_{i+1} = block_i(x_i)       FP block (fp), quantized block (sequential)

Blocks, linears, groups and sub-blocks are found by :mod:`quant.capture`; nothing here knows
the architecture. Linears outside the blocks (a transformer's untied ``lm_head``) and every
other parameter (embeddings, norms, convolutions) stay in their export dtype, as in GPTQ's and
AdaDim's reference scripts.

Calibration modes:

* ``"fp"`` -- AdaDim's RTN-ada: every input is captured from the *unquantized* model.
  Default for ``rtn``.
* ``"sequential"`` -- GPTQ's sequential mode with ``--true-sequential``
  (``IST-DASLab/gptq:llama.py``): block ``i``'s input is the output of the already quantized
  blocks ``< i``, and inside the block each group sees inputs produced with the earlier
  groups already quantized. Default for ``gptq``. (AdaDim's own gptq_ada.py propagates FP
  activations; pass ``calib_mode="fp"`` to reproduce that.)

Methods: ``"rtn"`` (the AWQ-style asymmetric quantizer, as AdaDim's RTN) and ``"gptq"``
(:func:`quant.gptq` *only* in the chosen dim, as AdaDim's GPTQ-ada: per-OC with act-order,
static groups and GPTQ's quantizer; per-IC with act-order and the AWQ quantizer).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from core import qtensor
from models import functional
from quant import adadim, capture, hessian, quantizer
from quant.gptq import gptq as run_gptq

METHODS = ("rtn", "gptq")
DIM_MODES = ("oc", "ic", "ada")
CALIB_MODES = ("fp", "sequential")
DEFAULT_CALIB_MODE = {"rtn": "fp", "gptq": "sequential"}
BITS = (2, 3, 4, 8)


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """What to do to every linear: method, bits, group size, dim ("oc"/"ic"/"ada")."""
  method: str = "rtn"
  bits: int = 4
  group_size: int = 128
  dim: str = "ada"
  calib_mode: str | None = None  # None: DEFAULT_CALIB_MODE[method]
  damp: float = 0.01  # GPTQ relative damping

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r} is not one of {METHODS}.")
    if self.dim not in DIM_MODES:
      raise ValueError(f"dim={self.dim!r} is not one of {DIM_MODES} ('ada': AdaDim's "
                       "per-layer choice between 'oc' and 'ic').")
    if self.bits not in BITS:
      raise ValueError(f"bits={self.bits!r} is not supported; use one of {BITS}.")
    if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or \
        self.group_size <= 0:
      raise ValueError(f"group_size={self.group_size!r} must be a positive int.")
    mode = DEFAULT_CALIB_MODE[self.method] if self.calib_mode is None else self.calib_mode
    if mode not in CALIB_MODES:
      raise ValueError(f"calib_mode={mode!r} is not one of {CALIB_MODES}.")
    object.__setattr__(self, "calib_mode", mode)

  @property
  def candidate_dims(self) -> tuple[str, ...]:
    return ("oc", "ic") if self.dim == "ada" else (self.dim,)


@dataclasses.dataclass
class LinearRecord:
  """What happened to one linear: its chosen dim, proxy errors, reconstruction error."""
  layer: int  # block index
  name: str  # path inside the block, e.g. "attn.q_proj"
  shape: tuple[int, int]
  dim: str
  proxy_mse: dict[str, float]  # {"oc": ..., "ic": ...} for dim="ada", else {}
  rel_err: float  # ||X W - X Ŵ||² / ||X W||² on this linear's calibration inputs
  input_absmax: np.ndarray | None = None  # max |x| per input channel (float32 [K])

  def to_json(self) -> dict:
    return {"layer": self.layer, "name": self.name, "shape": list(self.shape), "dim": self.dim,
            "proxy_mse": self.proxy_mse, "rel_err": self.rel_err}


# --------------------------------------------------------------------------------------------
# Layout checks (before any data is read).


def _fits(shape, bits, group_size, dim) -> bool:
  try:
    qtensor.validate_layout(shape, bits=bits, group_size=group_size, dim=dim)
    return True
  except ValueError:
    return False


def quantized_linears(graphdef, params) -> dict[str, tuple[int, int]]:
  """``{"layers.0.attn.q_proj": (K, N), ...}``: the kernels PTQ quantizes, by path."""
  model = functional.merge(graphdef, params)
  blocks = capture.find_blocks(model)
  out = {}
  for i, block in enumerate(capture.block_params_list(params, blocks)):
    prefix = () if blocks is None else blocks + (i,)
    graph = capture.block_graphdefs(graphdef, params, blocks)[i]
    for lp in capture.linear_paths(functional.merge(graph, block)):
      w = capture.get_param(block, capture.kernel_path(lp))
      out[".".join(map(str, prefix + lp))] = tuple(w.shape)
  return out


def fitting_group_sizes(shapes, spec: QuantSpec) -> list[int]:
  """Group sizes (of 256, 128, 64, 32, 16) that fit every linear in every candidate dim."""
  return [g for g in (256, 128, 64, 32, 16) if all(
      _fits(s, spec.bits, g, d) for s in shapes for d in spec.candidate_dims)]


def check_layouts(graphdef, params, spec: QuantSpec) -> None:
  """Raises a ValueError naming the first linear that cannot take ``spec``'s layout."""
  shapes = quantized_linears(graphdef, params)
  if not shapes:
    raise ValueError("the model has no models.layers.Linear to quantize.")
  for name, shape in shapes.items():
    for dim in spec.candidate_dims:
      try:
        qtensor.validate_layout(shape, bits=spec.bits, group_size=spec.group_size, dim=dim)
      except ValueError as e:
        fit = fitting_group_sizes(shapes.values(), spec)
        raise ValueError(
            f"{name} (shape [in={shape[0]}, out={shape[1]}]) cannot be quantized with "
            f"bits={spec.bits}, group_size={spec.group_size}, dim={dim!r}: {e} Group sizes "
            f"that fit every linear of this model: {fit or 'none'}.") from None


# --------------------------------------------------------------------------------------------
# Small jitted helpers, applied in chunks of sequences.


@jax.jit
def _mse(a, b):
  d = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(d * d)


def mse(a, b) -> float:
  """``mean((a - b)^2)`` in float32 (AdaDim's proxy loss)."""
  return float(_mse(jnp.asarray(a), jnp.asarray(b)))


@jax.jit
def _linear(w, x):
  return jnp.einsum("...k,kn->...n", x, w.astype(x.dtype))


def _chunked_linear(w, x, chunk: int):
  return jnp.concatenate([_linear(w, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


@jax.jit
def _sq_sums(ref, out):
  err = (ref - out).astype(jnp.float32)
  return jnp.sum(err * err), jnp.sum(ref.astype(jnp.float32) ** 2)


def relative_error(w, w_hat, x, *, chunk: int = 16) -> float:
  """``||x w - x w_hat||² / ||x w||²``."""
  err, ref = _sq_sums(_chunked_linear(w, x, chunk),
                      _chunked_linear(w_hat.astype(w.dtype), x, chunk))
  return float(err / max(float(ref), 1e-30))


_rtn = jax.jit(quantizer.rtn, static_argnames=("bits", "group_size", "dim", "zero_in_range",
                                               "sym"))
_dequantize = jax.jit(qtensor.dequantize, static_argnums=1)


def quantize_linear(w, inputs, spec: QuantSpec, dim: str, *, chunk: int = 16):
  """``w[K, N]`` -> QuantizedWeight in ``dim`` by ``spec.method`` (inputs ``[N, L, K]``)."""
  if spec.method == "rtn":
    quantizer.check_finite("w", w)
    return _rtn(w, bits=spec.bits, group_size=spec.group_size, dim=dim, zero_in_range=False)
  state = hessian.hessian_init(w.shape[0])
  for i in range(0, inputs.shape[0], chunk):  # each sequence is one GPTQ "sample"
    state = hessian.hessian_update(state, inputs[i:i + chunk])
  return run_gptq(w, state.h, bits=spec.bits, group_size=spec.group_size, dim=dim,
                  act_order=True, static_groups=dim == "oc", zero_in_range=dim == "oc",
                  damp=spec.damp)


# --------------------------------------------------------------------------------------------
# One block, the whole model.


def quantize_block(runner: capture.BlockRunner, groups, block_params, x, spec: QuantSpec, *,
                   layer: int = 0, collect_stats: bool = False, on_linear=None):
  """Quantizes every linear of one block, group by group in call order.

  Args:
    runner: the block's jitted pieces (:class:`quant.capture.BlockRunner`).
    groups: its linear groups in call order (:func:`quant.capture.block_structure`).
    block_params: the block's dense params.
    x: the block's calibration input ``[N, ...]`` (FP or quantized-prefix, as
      ``spec.calib_mode`` says; the caller propagates).
    on_linear: optional callback ``(name)`` before each linear (progress display).

  Returns:
    ``(quantized_block, dequantized_block, records)``: the block with QuantizedWeight kernels,
    the same with their dense dequantized values, and one LinearRecord per linear.
  """
  fp = block_params
  cur = block_params  # dense; earlier linears replaced by their dequantized values
  quantized = block_params
  sequential = spec.calib_mode == "sequential"
  if not sequential:  # every input from the FP block (AdaDim's input_feat hooks)
    fp_inputs = runner.inputs(fp, x, tuple(g.linears[0] for g in groups))
  records = []
  for group in groups:
    first = group.linears[0]
    inp = (runner.inputs(cur, x, (first,)) if sequential else fp_inputs)[first]
    for lp in group.linears:
      name = ".".join(map(str, lp))
      if on_linear is not None:
        on_linear(name)
      kpath = capture.kernel_path(lp)
      w = capture.get_param(fp, kpath)
      if spec.dim == "ada":
        if group.scope is not None:
          ref = runner.scope_output(cur, x, inp, group.scope)
          score = lambda w_hat, kp=kpath, s=group.scope, r=ref: mse(
              r, runner.scope_output(capture.set_param(cur, kp, w_hat), x, inp, s))
        else:
          ref = _chunked_linear(w, inp, runner.chunk)
          score = lambda w_hat, r=ref: mse(r, _chunked_linear(w_hat, inp, runner.chunk))
        dim, errors = adadim.choose_dim(score, w, bits=spec.bits, group_size=spec.group_size)
        del ref
      else:
        dim, errors = spec.dim, {}
      qw = quantize_linear(w, inp, spec, dim, chunk=runner.chunk)
      w_hat = _dequantize(qw, jnp.dtype(w.dtype).name)
      cur = capture.set_param(cur, kpath, w_hat)
      quantized = capture.set_param(quantized, kpath, qw)
      stats = None
      if collect_stats:
        stats = np.asarray(jnp.max(jnp.abs(inp.reshape(-1, inp.shape[-1])), axis=0), np.float32)
      records.append(LinearRecord(layer=layer, name=name, shape=tuple(w.shape), dim=dim,
                                  proxy_mse=errors,
                                  rel_err=relative_error(w, w_hat, inp, chunk=runner.chunk),
                                  input_absmax=stats))
  return quantized, cur, records


def quantize_model(graphdef, params, calib: dict, spec: QuantSpec, *, forward: Callable,
                   chunk: int = 16, progress: bool = True, collect_stats: bool = False):
  """Quantizes every block's linears.

  Args:
    graphdef, params: the model (dense params, a pure dict).
    calib: the calibration batch, ``[N, ...]`` arrays (for a transformer ``{tokens,
      segment_ids, positions}`` from :func:`quant.calibration.calibration_batch`).
    spec: method, bits, group size, dim mode, calibration mode.
    forward: ``forward(model, batch) -> outputs``, how the model consumes a batch (every model
      module has one, e.g. ``models.transformer.forward``).
    chunk: sequences per jitted call (peak memory).
    progress: a tqdm bar over the blocks.
    collect_stats: record the per-input-channel max |x| of every linear's inputs.

  Returns:
    ``(qparams, dense_params, records)``: params whose quantized kernels are QuantizedWeights,
    the same with the dequantized dense kernels, and one ``LinearRecord`` per linear.
  """
  check_layouts(graphdef, params, spec)
  leaves = jax.tree.leaves(calib)
  n = leaves[0].shape[0] if leaves else 0
  if n == 0 or any(a.ndim == 0 or a.shape[0] != n or a.size == 0 for a in leaves):
    raise ValueError(f"calibration batch shapes {jax.tree.map(np.shape, calib)}: expected "
                     "non-empty arrays with the same leading (sample) dimension.")
  calib = jax.tree.map(jnp.asarray, calib)
  blocks = capture.find_blocks(functional.merge(graphdef, params))
  x, ctx = capture.block_inputs(graphdef, params, forward, calib, blocks)
  block_list = capture.block_params_list(params, blocks)
  graphs = capture.block_graphdefs(graphdef, params, blocks)
  q_blocks, dense_blocks, records = [], [], []
  bar = tqdm(range(len(block_list)), desc=f"{spec.method}-{spec.dim} {spec.bits}-bit",
             unit="block", disable=not progress)
  for i in bar:
    block = block_list[i]
    runner = capture.BlockRunner(graphs[i], ctx, n, chunk=chunk)
    groups = capture.block_structure(graphs[i], block, x[:1], _first_sample(ctx, n))
    on_linear = (lambda name, i=i: bar.set_postfix_str(f"block {i} {name}")) if progress \
        else None
    q_block, dense_block, recs = quantize_block(runner, groups, block, x, spec, layer=i,
                                                collect_stats=collect_stats,
                                                on_linear=on_linear)
    q_blocks.append(q_block)
    dense_blocks.append(dense_block)
    records += recs
    if i + 1 < len(block_list):
      x = runner.output(dense_block if spec.calib_mode == "sequential" else block, x)
  bar.close()
  return (capture.with_blocks(params, blocks, q_blocks),
          capture.with_blocks(params, blocks, dense_blocks), records)


def _first_sample(ctx, n):
  """``ctx`` with every per-sample array cut to its first sample (a cheap structure probe)."""
  return jax.tree.map(lambda a: a[:1] if getattr(a, "ndim", 0) and a.shape[0] == n else a, ctx)


def dequantized(qparams):
  """Params with every QuantizedWeight replaced by its dense dequantized kernel."""
  return jax.tree.map(lambda v: qtensor.dequantize(v) if isinstance(v, qtensor.QuantizedWeight)
                      else v, qparams,
                      is_leaf=lambda v: isinstance(v, qtensor.QuantizedWeight))


def summary_table(records) -> str:
  """Per-linear dim choice, proxy errors and reconstruction error as a text table."""
  lines = [f"{'block':>5} {'linear':<14} {'shape':>11} {'dim':>3} {'proxy mse oc':>13} "
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
