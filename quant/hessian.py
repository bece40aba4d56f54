"""The GPTQ layer Hessian ``H = 2 X Xᵀ / n``, accumulated over calibration batches.

GPTQ (Frantar et al. 2023) minimises ``||W X - Ŵ X||²`` per linear layer; its Hessian with
respect to a row of ``W`` is ``2 X Xᵀ`` (X: ``[K, tokens]``). The reference
(``IST-DASLab/gptq:gptq.py::GPTQ.add_batch``) keeps a running mean over calibration
*samples* (sequences), summing over the tokens of each sample. For a batch ``x[t, ..., K]``
of ``t`` samples (a 2-D ``x[tokens, K]`` is one sample)::

    H *= n / (n + t);   n += t;   x = sqrt(2 / n) * x;   H += xᵀ x     (x flattened to [-1, K])

so after all batches ``H = (2 / n) Σ_samples Σ_tokens x xᵀ``. The scale of ``H`` does not
change GPTQ's result (damping is relative to ``mean(diag H)``), but we keep the reference's.
Accumulation is in float32 with full-precision matmuls.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class HessianState:
  h: jax.Array  # float32 [K, K]
  num_samples: jax.Array  # int32 scalar: n, the samples seen so far

  @property
  def in_features(self) -> int:
    return self.h.shape[0]


def hessian_init(in_features: int) -> HessianState:
  return HessianState(h=jnp.zeros((in_features, in_features), jnp.float32),
                      num_samples=jnp.zeros((), jnp.int32))


def _num_samples(x) -> int:
  """Samples in a batch as the reference counts them: leading dims of a >=3-D input, else 1."""
  if x.ndim <= 2:
    return 1
  t = 1
  for d in x.shape[:-2]:
    t *= d
  return t


@jax.jit
def _update(state: HessianState, x) -> HessianState:
  t = _num_samples(x)
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  n_old = state.num_samples.astype(jnp.float32)
  n_new = n_old + t
  h = state.h * (n_old / n_new)
  x = jnp.sqrt(2.0 / n_new) * x
  h = h + jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST)
  return HessianState(h=h, num_samples=state.num_samples + t)


def hessian_update(state: HessianState, x) -> HessianState:
  """Folds a calibration batch ``x[..., K]`` (the layer's inputs) into the running Hessian."""
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != state.in_features:
    raise ValueError(f"x has shape {x.shape}; its last axis must be the layer's in_features "
                     f"K={state.in_features}.")
  if x.size == 0:
    raise ValueError(f"x has shape {x.shape} and holds no tokens.")
  if x.ndim == 1:
    x = x[None]
  return _update(state, x)


def hessian_from_inputs(x) -> jax.Array:
  """``H = 2 X Xᵀ / n`` of one batch of layer inputs ``x[..., K]`` (float32 ``[K, K]``)."""
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError("x must have a last axis of in_features, got a scalar.")
  return hessian_update(hessian_init(x.shape[-1]), x).h
