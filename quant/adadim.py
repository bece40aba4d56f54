"""AdaDim: the per-linear choice of the quantization dimension.

AdaDim (Heo et al. 2024, "Rethinking Channel Dimensions to Isolate Outliers for Low-bit Weight
Quantization of Large Language Models", ICLR 2024, arXiv 2309.15531) quantizes each linear
layer either per output channel (``"oc"``: a group is ``g`` input channels of one output
channel) or per input channel (``"ic"``: a group is ``g`` output channels of one input
channel, which isolates an outlier *input* channel in its own groups), whichever
reconstructs better. The test is an RTN proxy (``adadim/quantize/rtn_ada.py::auto_dim_block``):

    err(d) = mean((f(X; W_cur) - f(X; W_cur with W <- RTN_d(W)))^2),   d in {oc, ic}

keeping ``argmin_d err(d)`` (``"oc"`` on ties), where ``RTN_d`` is the AWQ-style asymmetric
group quantizer (:func:`quant.quantizer.fake_quant`, ``zero_in_range=False``), ``X`` the
calibration inputs and ``f`` the *enclosing sub-block*: the attention output for q/k/v, the
MLP output for gate/up, the layer's own output for o_proj and down_proj. Which sub-block
encloses a linear is found from the model (:mod:`quant.capture`); this module only decides.
"""
from __future__ import annotations

from typing import Callable

import jax

from quant import quantizer

DIMS = ("oc", "ic")

# Jitted once per (shape, layout): eager jnp here would compile dozens of tiny programs.
_fake_quant = jax.jit(quantizer.fake_quant,
                      static_argnames=("bits", "group_size", "dim", "zero_in_range", "sym"))


def proxy_weight(w, *, bits: int, group_size: int, dim: str):
  """AdaDim's RTN proxy: AWQ-style asymmetric fake quantization of ``w`` in ``dim``."""
  return _fake_quant(w, bits=bits, group_size=group_size, dim=dim, zero_in_range=False)


def choose_dim(score: Callable, w, *, bits: int, group_size: int) -> tuple[str, dict[str, float]]:
  """``(dim, {dim: proxy error})``; ``score(w_hat)`` is the proxy loss with ``w -> w_hat``.

  Per-IC wins only when strictly better (the reference keeps "oc" on ties).
  """
  errors = {d: score(proxy_weight(w, bits=bits, group_size=group_size, dim=d)) for d in DIMS}
  return ("ic" if errors["ic"] < errors["oc"] else "oc"), errors
