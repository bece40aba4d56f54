"""AdaDim: per-linear choice of the quantization dimension, and one block's quantization.

AdaDim (Heo et al. 2024, "Rethinking Channel Dimensions to Isolate Outliers for Low-bit Weight
Quantization of Large Language Models", ICLR 2024, arXiv 2309.15531) quantizes each linear
layer either per output channel (``"oc"``: a group is ``g`` input channels of one output
channel) or per input channel (``"ic"``: a group is ``g`` output channels of one input
channel, which isolates an outlier *input* channel in its own groups), whichever
reconstructs better. The test is an RTN proxy (``adadim/quantize/rtn_ada.py::auto_dim_block``):

    err(d) = mean((f(X; W_cur) - f(X; W_cur with W <- RTN_d(W)))^2),   d in {oc, ic}

keeping ``argmin_d err(d)`` (``"oc"`` on ties), where ``RTN_d`` is the AWQ-style asymmetric
group quantizer (:func:`quant.quantizer.fake_quant`, ``zero_in_range=False``), ``X`` the
calibration inputs and ``f`` the *enclosing sub-block*:

* ``q/k/v_proj`` -> the attention sub-block output ``o_proj(attention(q, k, v))``;
* ``gate/up_proj`` -> the MLP sub-block output ``down(silu(gate x) * up x)``;
* ``o_proj``, ``down_proj`` -> the layer's own output ``x @ W``.

Choices are sequential in the order q, k, v, o, gate, up, down: ``W_cur`` already holds the
*quantized* earlier siblings (k is scored against a reference attention output computed with
the quantized q), exactly as the reference loads each winner before scoring the next linear.

Methods (``QuantSpec.method``):

* ``"rtn"``: round-to-nearest in the chosen dim (AWQ quantizer, as AdaDim's RTN).
* ``"gptq"``: GPTQ (:func:`quant.gptq`) *only* in the chosen dim, as AdaDim's GPTQ-ada
  (``adadim/update/gptq_ada.py``): per-OC with act-order, static groups and GPTQ's quantizer
  (range includes 0); per-IC with act-order and the AWQ quantizer on each compensated column.
  The Hessian ``2 X Xᵀ / n`` comes from the captured inputs of that linear.

Calibration modes (``QuantSpec.calib_mode``): where each linear's inputs ``X`` come from.

* ``"fp"`` -- AdaDim's RTN-ada: every input is captured from the *unquantized* model (block
  ``i`` sees the FP output of block ``i-1``; inside the block, o_proj/MLP/down inputs come from
  the FP block). Default for ``rtn``.
* ``"sequential"`` -- GPTQ's sequential mode with ``--true-sequential``
  (``IST-DASLab/gptq:llama.py``): block ``i``'s input is the output of the *already
  quantized* blocks ``< i``, and inside the block each linear sees the inputs produced with the
  earlier linears already quantized (o_proj after q/k/v, the MLP after the attention, down
  after gate/up). Default for ``gptq``. (AdaDim's own gptq_ada.py propagates FP activations;
  pass ``calib_mode="fp"`` to reproduce that.)
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from models import transformer as T
from quant import hessian, qtensor, quantizer
from quant.gptq import gptq as run_gptq

LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
# The output at which the RTN proxy scores each linear (AdaDim's auto_dim_block).
PROXY_SCOPE = {"attn.q_proj": "attn", "attn.k_proj": "attn", "attn.v_proj": "attn",
               "attn.o_proj": "linear", "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp",
               "mlp.down_proj": "linear"}
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
  layer: int
  name: str
  shape: tuple[int, int]
  dim: str
  proxy_mse: dict[str, float]  # {"oc": ..., "ic": ...} for dim="ada", else {}
  rel_err: float  # ||X W - X Ŵ||² / ||X W||² on this linear's calibration inputs
  input_absmax: np.ndarray | None = None  # max |x| per input channel (float32 [K])

  def to_json(self) -> dict:
    return {"layer": self.layer, "name": self.name, "shape": list(self.shape), "dim": self.dim,
            "proxy_mse": self.proxy_mse, "rel_err": self.rel_err}


# --------------------------------------------------------------------------------------------
# Parameter paths ("attn.q_proj" -> block_params["attn"]["q_proj"]["kernel"]).


def get_kernel(block_params, name: str):
  outer, inner = name.split(".")
  return block_params[outer][inner]["kernel"]


def set_kernel(block_params, name: str, value):
  """A copy of ``block_params`` (sharing untouched leaves) with that kernel replaced."""
  outer, inner = name.split(".")
  out = dict(block_params)
  out[outer] = dict(out[outer])
  out[outer][inner] = {**out[outer][inner], "kernel": value}
  return out


def check_layouts(cfg: T.ModelConfig, spec: QuantSpec) -> None:
  """Raises a ValueError naming the first linear that cannot take ``spec``'s layout."""
  shapes = {name: tuple(get_kernel(_abstract_block(cfg), name).shape) for name in LINEARS}
  for name, shape in shapes.items():
    for dim in spec.candidate_dims:
      try:
        qtensor.validate_layout(shape, bits=spec.bits, group_size=spec.group_size, dim=dim)
      except ValueError as e:
        fit = [g for g in (256, 128, 64, 32, 16) if all(
            _fits(s, spec.bits, g, d) for s in shapes.values() for d in spec.candidate_dims)]
        raise ValueError(
            f"layers.*.{name} (shape [in={shape[0]}, out={shape[1]}]) cannot be quantized "
            f"with bits={spec.bits}, group_size={spec.group_size}, dim={dim!r}: {e} Group "
            f"sizes that fit every linear of this model: {fit or 'none'}.") from None


def _fits(shape, bits, group_size, dim) -> bool:
  try:
    qtensor.validate_layout(shape, bits=bits, group_size=group_size, dim=dim)
    return True
  except ValueError:
    return False


@functools.lru_cache(maxsize=None)
def _abstract_block(cfg: T.ModelConfig):
  return T.abstract_params(cfg)[1]["layers"][0]


# --------------------------------------------------------------------------------------------
# Sub-block functions, jitted once per model config and applied in chunks of sequences.


class BlockFunctions:
  """The pieces of a block as pure functions of ``(block_params, activations)``.

  Activations are ``[N, L, ...]`` arrays (N calibration sequences); every call runs the jitted
  piece on chunks of ``chunk`` sequences and concatenates, bounding peak memory.
  """

  def __init__(self, cfg: T.ModelConfig, positions, segment_ids, *, chunk: int = 16):
    self.cfg, self.chunk = cfg, int(chunk)
    self.positions = jnp.asarray(positions)
    self.segment_ids = jnp.asarray(segment_ids)
    jitted = _jitted_block_functions(cfg)
    self._attn_input, self._attn_output = jitted["attn_input"], jitted["attn_output"]
    self._o_input, self._mlp_input = jitted["o_input"], jitted["mlp_input"]
    self._mlp_output, self._down_input = jitted["mlp_output"], jitted["down_input"]
    self._block_output, self._embed = jitted["block_output"], jitted["embed"]
    self._linear = _linear

  def _map(self, fn, params, *arrays, with_mask: bool = False):
    n = arrays[0].shape[0]
    outs = []
    for i in range(0, n, self.chunk):
      args = [a[i:i + self.chunk] for a in arrays]
      if with_mask:
        args += [self.positions[i:i + self.chunk], self.segment_ids[i:i + self.chunk]]
      outs.append(fn(params, *args))
    return jnp.concatenate(outs)

  def embed(self, params, tokens):
    return self._map(self._embed, params, jnp.asarray(tokens))

  def attn_input(self, p, x):
    return self._map(self._attn_input, p, x)

  def attn_output(self, p, xn):
    return self._map(self._attn_output, p, xn, with_mask=True)

  def o_input(self, p, xn):
    return self._map(self._o_input, p, xn, with_mask=True)

  def mlp_input(self, p, x):
    return self._map(self._mlp_input, p, x, with_mask=True)

  def mlp_output(self, p, hn):
    return self._map(self._mlp_output, p, hn)

  def down_input(self, p, hn):
    return self._map(self._down_input, p, hn)

  def block_output(self, p, x):
    return self._map(self._block_output, p, x, with_mask=True)

  def linear(self, w, x):
    return self._map(self._linear, w, x)


@functools.lru_cache(maxsize=None)
def _jitted_block_functions(cfg: T.ModelConfig) -> dict:
  """One set of jitted pieces per model config, so repeated runs reuse the compilations."""
  blk = functools.partial(T.block_module, cfg)
  return {
      "attn_input": jax.jit(lambda p, x: blk(p).attn_norm(x)),
      "attn_output": jax.jit(lambda p, xn, pos, seg: blk(p).attn(xn, pos, seg)[0]),
      "o_input": jax.jit(lambda p, xn, pos, seg: blk(p).attn.mix(xn, pos, seg)[0]),
      "mlp_input": jax.jit(lambda p, x, pos, seg: _mlp_input(blk(p), x, pos, seg)),
      "mlp_output": jax.jit(lambda p, hn: blk(p).mlp(hn)),
      "down_input": jax.jit(lambda p, hn: blk(p).mlp.hidden(hn)),
      "block_output": jax.jit(lambda p, x, pos, seg: blk(p)(x, pos, seg)[0]),
      "embed": jax.jit(lambda p, tokens: T.embed_tokens(cfg, p, tokens)),
  }


@jax.jit
def _linear(w, x):
  return jnp.einsum("...k,kn->...n", x, w.astype(x.dtype))


def _mlp_input(block, x, positions, segment_ids):
  """``mlp_norm(x + attn(attn_norm(x)))``: what gate_proj and up_proj see."""
  h, _ = block.attn(block.attn_norm(x), positions, segment_ids)
  return block.mlp_norm(x + h)


@jax.jit
def _mse(a, b):
  d = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(d * d)


def mse(a, b) -> float:
  """``mean((a - b)^2)`` in float32 (AdaDim's proxy loss)."""
  return float(_mse(jnp.asarray(a), jnp.asarray(b)))


@jax.jit
def _sq_sums(ref, out):
  err = (ref - out).astype(jnp.float32)
  return jnp.sum(err * err), jnp.sum(ref.astype(jnp.float32) ** 2)


def relative_error(fns: BlockFunctions, w, w_hat, x) -> float:
  """``||x w - x w_hat||² / ||x w||²``."""
  err, ref = _sq_sums(fns.linear(w, x), fns.linear(w_hat.astype(w.dtype), x))
  return float(err / max(float(ref), 1e-30))


# --------------------------------------------------------------------------------------------
# One linear, one block.


# Jitted once per (shape, layout): eager jnp here would compile dozens of tiny programs.
_fake_quant = jax.jit(quantizer.fake_quant,
                      static_argnames=("bits", "group_size", "dim", "zero_in_range", "sym"))
_rtn = jax.jit(quantizer.rtn, static_argnames=("bits", "group_size", "dim", "zero_in_range",
                                               "sym"))
_dequantize = jax.jit(qtensor.dequantize, static_argnums=1)


def proxy_weight(w, spec: QuantSpec, dim: str):
  """AdaDim's RTN proxy: AWQ-style asymmetric fake quantization of ``w`` in ``dim``."""
  return _fake_quant(w, bits=spec.bits, group_size=spec.group_size, dim=dim,
                     zero_in_range=False)


def quantize_linear(w, inputs, spec: QuantSpec, dim: str, *, chunk: int = 16):
  """``w[K, N]`` -> QuantizedWeight in ``dim`` by ``spec.method`` (inputs ``[N, L, K]``)."""
  if spec.method == "rtn":
    quantizer.check_finite("w", w)
    return _rtn(w, bits=spec.bits, group_size=spec.group_size, dim=dim, zero_in_range=False)
  state = hessian.hessian_init(w.shape[0])
  for i in range(0, inputs.shape[0], chunk):  # each sequence is one GPTQ "sample"
    state = hessian.hessian_update(state, inputs[i:i + chunk])
  return run_gptq(w, state.h, bits=spec.bits, group_size=spec.group_size, dim=dim,
                       act_order=True, static_groups=dim == "oc",
                       zero_in_range=dim == "oc", damp=spec.damp)


def choose_dim(score, w, spec: QuantSpec) -> tuple[str, dict[str, float]]:
  """``(dim, {dim: proxy mse})``: ``score(w_hat)`` is the proxy loss with ``w`` -> ``w_hat``."""
  if spec.dim != "ada":
    return spec.dim, {}
  errors = {d: score(proxy_weight(w, spec, d)) for d in ("oc", "ic")}
  return ("ic" if errors["ic"] < errors["oc"] else "oc"), errors


def quantize_block(fns: BlockFunctions, block_params, x, spec: QuantSpec, *, layer: int = 0,
                   collect_stats: bool = False, on_linear=None):
  """Quantizes every linear of one block, in ``LINEARS`` order (see the module docstring).

  Args:
    fns: the block functions (positions/segment ids of the calibration batch).
    block_params: ``params["layers"][layer]`` (dense kernels).
    x: the block's calibration input ``[N, L, d_model]`` (FP or quantized-prefix, as
      ``spec.calib_mode`` says; the caller propagates).
    spec: method, bits, group size, dim mode, calibration mode.
    on_linear: optional callback ``(name)`` before each linear (progress display).

  Returns:
    ``(quantized_block, dequantized_block, records)``: the block with QuantizedWeight kernels,
    the same with their dense dequantized values, and one LinearRecord per linear.
  """
  fp = block_params
  cur = block_params  # dense; earlier linears replaced by their dequantized values
  quantized = block_params
  sequential = spec.calib_mode == "sequential"
  xn = fns.attn_input(fp, x)  # norms are not quantized: the same in both modes
  if not sequential:  # every input from the FP block (AdaDim's input_feat hooks)
    inputs_fp = {"attn": xn, "o": fns.o_input(fp, xn)}
    inputs_fp["mlp"] = fns.mlp_input(fp, x)
    inputs_fp["down"] = fns.down_input(fp, inputs_fp["mlp"])
  inputs = {"attn": xn}
  records = []
  for name in LINEARS:
    if on_linear is not None:
      on_linear(name)
    key = {"attn.o_proj": "o", "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp",
           "mlp.down_proj": "down"}.get(name, "attn")
    if key not in inputs:  # first linear of a group: its input from the current block
      if not sequential:
        inputs[key] = inputs_fp[key]
      elif key == "o":
        inputs[key] = fns.o_input(cur, xn)
      elif key == "mlp":
        inputs[key] = fns.mlp_input(cur, x)
      else:
        inputs[key] = fns.down_input(cur, inputs["mlp"])
    inp = inputs[key]
    w = get_kernel(fp, name)

    scope = PROXY_SCOPE[name]
    if scope == "attn":
      ref = fns.attn_output(cur, inp)
      score = lambda w_hat, n=name: mse(ref, fns.attn_output(set_kernel(cur, n, w_hat), inp))
    elif scope == "mlp":
      ref = fns.mlp_output(cur, inp)
      score = lambda w_hat, n=name: mse(ref, fns.mlp_output(set_kernel(cur, n, w_hat), inp))
    else:
      ref = fns.linear(w, inp)
      score = lambda w_hat: mse(ref, fns.linear(w_hat, inp))
    dim, errors = choose_dim(score, w, spec) if spec.dim == "ada" else (spec.dim, {})
    del ref

    qw = quantize_linear(w, inp, spec, dim, chunk=fns.chunk)
    w_hat = _dequantize(qw, jnp.dtype(w.dtype).name)
    cur = set_kernel(cur, name, w_hat)
    quantized = set_kernel(quantized, name, qw)
    stats = None
    if collect_stats:
      stats = np.asarray(jnp.max(jnp.abs(inp.reshape(-1, inp.shape[-1])), axis=0), np.float32)
    records.append(LinearRecord(layer=layer, name=name, shape=tuple(w.shape), dim=dim,
                                proxy_mse=errors, rel_err=relative_error(fns, w, w_hat, inp),
                                input_absmax=stats))
  return quantized, cur, records
