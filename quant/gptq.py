"""GPTQ (Frantar et al. 2023) with per-OC groups and AdaDim's per-IC groups (Heo et al. 2024).

GPTQ quantizes a linear layer one input channel at a time and spreads each channel's
rounding error over the not-yet-quantized channels so as to minimise ``||W X - Ŵ X||²``,
i.e. ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` with ``H = 2 X Xᵀ / n`` (:mod:`quant.hessian`).

Conventions. The reference (``IST-DASLab/gptq:gptq.py::GPTQ.fasterquant``) works on the torch
weight ``W[OC, IC]``, whose *columns* are input channels. Our weights are in Flax layout
``w[K, N] = Wᵀ``; internally we transpose to ``W = wᵀ [N, K]`` and follow the reference:

1. ``dead = diag(H) == 0``: ``H[i, i] = 1`` and ``W[:, i] = 0`` for dead inputs ``i``.
2. Static groups (``static_groups=True``, ``dim="oc"``): one ``(s, z)`` per
   ``W[:, j*g:(j+1)*g]``, computed before any permutation or update.
3. Act-order (``act_order=True``): ``perm = argsort(diag H)`` descending (stable); permute the
   columns of ``W`` and rows/columns of ``H``.
4. Damping: ``H += damp * mean(diag H) * I``; ``U = chol(H⁻¹)`` upper, ``H⁻¹ = Uᵀ U``
   (the reference computes ``chol`` -> ``cholesky_inverse`` -> ``chol(upper=True)``; we get
   the same ``U`` as the inverse of the "reversed" Cholesky factor, see
   :func:`inverse_hessian_factor`). JAX returns NaNs where torch raises
   on a non positive-definite matrix; we detect them and retry with
   ``damp <- max(10 * damp, 0.01)`` up to ``MAX_DAMP`` (warning when damp was raised).
5. For each block of ``B = block_size`` columns ``[i1, i2)``, for each column ``c``:
   ``w = W1[:, c]``, ``d = U[c, c]``; group parameters
     * per-OC dynamic: at ``c % g == 0`` from ``W[:, c:c+g]`` of the *block-start* ``W``
       (as the reference, the columns of the current block keep the values they had when
       the block started, without the in-block compensation);
     * per-OC static: the group of original channel ``perm[c]``;
     * per-IC (AdaDim ``gptq_ada.py``): from the current, already compensated column ``w``
       itself, in groups of ``g`` consecutive output channels;
   ``q = quant(w)``, ``e = (w - q) / d``, ``W1[:, c:] -= e ⊗ U[c, c:]``.
   After the block: ``W[:, i2:] -= E1 @ U[i1:i2, i2:]`` (lazy batch update).
6. Output: per-OC with act-order and dynamic groups keeps the rows in act-order with
   ``QuantizedWeight.perm`` (each group is contiguous, no ``g_idx``); every other case is
   un-permuted to the original row order (per-IC groups live inside one row, so they simply
   move with it).

Both loops run inside one ``jit``: the column loop is a ``lax.fori_loop``, and so is the block
loop, whose trailing update of step 5 then runs at full width with the columns ``< i2``
masked (twice the reference's ``N·B·(K - i2)`` flops overall). ``_gptq(...,
masked_update=False)`` unrolls the block loop instead, so the update touches only the
columns right of the block, as the reference does; it gives identical codes (tested) but its
compile time grows with ``K / B`` and on SmolLM2's shapes it was not faster on a CPU
(``python -m benchmarks.gptq_update``), so it is not the default. A ``K`` that is
not a multiple of ``B`` is padded with identity-Hessian zero columns (exactly equivalent: padded
columns come last and ``U`` is block diagonal across the padding). All matmuls run in full
float32 precision (float64 inputs stay float64, which the tests use for exact comparisons).
"""
from __future__ import annotations

import functools
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from core import qtensor
from quant import quantizer as qz

MAX_DAMP = 10.0  # relative damping beyond which a failing Cholesky is reported as an error
MIN_ESCALATED_DAMP = 0.01  # first retry when the user's damp (possibly 0) fails


def gptq(w, hessian, *, bits: int, group_size: int, dim: str, act_order: bool = True,
         static_groups: bool = False, damp: float = 0.01, block_size: int = 128,
         sym: bool = False, zero_in_range: bool = True) -> qtensor.QuantizedWeight:
  """GPTQ-quantizes a Flax weight ``w[K, N]`` given the layer Hessian ``hessian[K, K]``.

  Args:
    w: float weight ``[in_features K, out_features N]``.
    hessian: ``2 X Xᵀ / n`` of the layer inputs (:func:`quant.hessian_from_inputs`).
    bits: 2, 3, 4 or 8.
    group_size: divides K (``dim="oc"``) or N (``dim="ic"``).
    dim: ``"oc"`` (groups of input channels of one output channel) or ``"ic"`` (AdaDim:
      groups of output channels of one input channel).
    act_order: process input channels by decreasing ``diag(H)``.
    static_groups: per-OC group parameters from the original ``W`` (``dim="oc"`` only).
    damp: relative damping ``H += damp * mean(diag H) * I`` (raised automatically, with a
      warning, if the damped Hessian is not positive definite).
    block_size: columns per lazy batch update.
    sym, zero_in_range: quantizer flavour (:mod:`quant.quantizer`); the default is GPTQ's.

  Returns:
    A :class:`quant.QuantizedWeight`; ``dequantize`` gives ``Ŵ`` with ``w``'s shape and dtype.
  """
  qz.check_args(w, bits=bits, group_size=group_size, dim=dim)
  k, n = w.shape
  hessian = jnp.asarray(hessian)
  if hessian.shape != (k, k):
    raise ValueError(f"hessian has shape {hessian.shape}, expected ({k}, {k}) = "
                     f"[in_features, in_features] for a weight of shape {w.shape} "
                     "(Flax layout [in_features, out_features]).")
  if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
    raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
  if isinstance(damp, bool) or not (isinstance(damp, numbers.Real) and np.isfinite(damp)
                                     and damp >= 0):
    raise ValueError(f"damp must be a finite float >= 0 (relative to mean(diag H)), "
                     f"got {damp!r}.")
  if static_groups and dim != "oc":
    raise ValueError("static_groups=True only applies to dim='oc'; per-IC groups are computed "
                     "per input channel from the compensated weights, use static_groups=False.")
  qz.check_finite("w", w)
  qz.check_finite("hessian", hessian)

  compute = jnp.float64 if w.dtype == jnp.float64 else jnp.float32
  with jax.default_matmul_precision("highest"):
    codes, scales, zeros, perm, used_damp, ok = _gptq(
        w.astype(compute), hessian.astype(compute), jnp.asarray(damp, compute),
        bits=bits, group_size=group_size, dim=dim, act_order=bool(act_order),
        static_groups=bool(static_groups), block_size=block_size, sym=bool(sym),
        zero_in_range=bool(zero_in_range))
  if not bool(ok):
    raise ValueError(f"the damped Hessian is not positive definite even with damp={MAX_DAMP} "
                     "(relative); check it for a wrong sign or scale, or collect more "
                     "calibration data.")
  if bool(used_damp != jnp.asarray(damp, compute)):
    warnings.warn(f"GPTQ: Cholesky of the damped Hessian failed with damp={damp}; raised it "
                  f"to {float(used_damp):g} (relative to mean(diag H)).", RuntimeWarning,
                  stacklevel=2)
  keep_perm = act_order and dim == "oc" and not static_groups
  return qtensor.from_codes(codes, scales, zeros, bits=bits, group_size=group_size, dim=dim,
                            dtype=w.dtype, perm=perm if keep_perm else None)


def inverse_hessian_factor(h, damp):
  """Upper ``U`` with ``Uᵀ U = (H + damp·mean(diag H)·I)⁻¹``, escalating damp on failure.

  Returns ``(used_damp, U, ok)``; ``ok`` is False if even ``MAX_DAMP`` did not help.
  """
  eye = jnp.eye(h.shape[0], dtype=h.dtype)
  mean_diag = jnp.mean(jnp.diagonal(h))

  def factor(d):
    # With J the reversal permutation, chol(J H J) = L gives H = R Rᵀ for the upper
    # triangular R = J L J, so H⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ (positive diagonal, hence the unique
    # upper Cholesky factor of H⁻¹). One factorisation and one triangular inverse instead of
    # the reference's chol -> cholesky_inverse -> chol (same U, a third of the flops).
    damped = h + (d * mean_diag) * eye
    r = jnp.linalg.cholesky(damped[::-1, ::-1])[::-1, ::-1]
    upper = jnp.triu(jax.scipy.linalg.solve_triangular(r, eye, lower=False))
    return upper, jnp.all(jnp.isfinite(upper))

  def attempt(state):  # the first attempt uses damp, every retry 10x more
    d, _, _, first = state
    d = jnp.where(first, d, jnp.maximum(10 * d, MIN_ESCALATED_DAMP))
    return (d, *factor(d), False)

  def failed(state):
    d, _, ok, first = state
    return first | (~ok & (d < MAX_DAMP))

  # One traced factor() inside the loop (rather than one before it too) halves compile time.
  init = (damp, jnp.zeros_like(h), jnp.asarray(False), jnp.asarray(True))
  d, upper, ok, _ = lax.while_loop(failed, attempt, init)
  return d, upper, ok


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "dim", "act_order",
                                             "static_groups", "block_size", "sym",
                                             "zero_in_range", "masked_update"))
def _gptq(w, h, damp, *, bits, group_size, dim, act_order, static_groups, block_size, sym,
          zero_in_range, masked_update=True):
  """Jitted core; returns codes ``[K, N]``, scales, zeros, perm, used damp, ok."""
  k, n = w.shape
  g, bsize = group_size, block_size
  params = functools.partial(qz.find_params, bits=bits, zero_in_range=zero_in_range, sym=sym)
  quant = functools.partial(qz.quantize_codes, bits=bits)

  # Step 1: dead inputs.
  dead = jnp.diagonal(h) == 0
  h = jnp.where(jnp.diag(dead), 1, h)
  wt = jnp.where(dead[None, :], 0, w.T)  # [N, K], the reference's W

  # Step 2: static groups from the unpermuted W.
  if static_groups:
    s_static, z_static = params(wt.reshape(n, k // g, g), axis=2)
    s_static, z_static = s_static[..., 0], z_static[..., 0]  # [N, K/g]

  # Step 3: act-order.
  perm = jnp.argsort(-jnp.diagonal(h)) if act_order else jnp.arange(k)
  if act_order:
    wt = wt[:, perm]
    h = h[perm][:, perm]

  # Step 4: damping and inverse factor.
  used_damp, upper, ok = inverse_hessian_factor(h, damp)

  # Pad K to a multiple of the block size (identity Hessian, zero weights).
  num_blocks = -(-k // bsize)
  kp = num_blocks * bsize
  pad = kp - k
  wt = jnp.pad(wt, ((0, 0), (0, pad)))
  upper = jnp.pad(upper, ((0, pad), (0, pad))) + jnp.diag(
      jnp.concatenate([jnp.zeros(k, upper.dtype), jnp.ones(pad, upper.dtype)]))
  perm_p = jnp.concatenate([perm, jnp.arange(k, kp)])
  col_ids = jnp.arange(kp)

  codes = jnp.zeros((n, kp), jnp.int32)
  if dim == "oc":
    num_groups = -(-kp // g)
    s_out = jnp.zeros((n, num_groups), wt.dtype)
    z_out = jnp.zeros((n, num_groups), wt.dtype)
  else:
    s_out = jnp.zeros((kp, n // g), wt.dtype)
    z_out = jnp.zeros((kp, n // g), wt.dtype)
  cur = (jnp.ones((n,), wt.dtype), jnp.zeros((n,), wt.dtype))  # current per-OC group params

  def column_params(c, w_col, w_block_start, cur, s_out, z_out):
    """(scale, zero) for column c, shaped like w_col; updates the stored params."""
    if dim == "ic":
      s, z = params(w_col.reshape(n // g, g), axis=1)
      s_out = s_out.at[c].set(s[:, 0])
      z_out = z_out.at[c].set(z[:, 0])
      return jnp.repeat(s[:, 0], g), jnp.repeat(z[:, 0], g), cur, s_out, z_out
    if static_groups:
      j = jnp.minimum(perm_p[c] // g, k // g - 1)  # padded columns reuse the last group
      return s_static[:, j], z_static[:, j], cur, s_out, z_out

    def new_group(args):
      _, s_out, z_out = args
      window = lax.dynamic_slice_in_dim(w_block_start, c, g, axis=1)
      s, z = params(window, axis=1)
      s_out = s_out.at[:, c // g].set(s[:, 0])
      z_out = z_out.at[:, c // g].set(z[:, 0])
      return (s[:, 0], z[:, 0]), s_out, z_out

    cur, s_out, z_out = lax.cond(c % g == 0, new_group, lambda a: a, (cur, s_out, z_out))
    return cur[0], cur[1], cur, s_out, z_out

  def block_columns(b, state):
    """Quantizes the columns of block ``b``; returns the state and the block's errors."""
    wt, codes, cur, s_out, z_out = state
    i1 = b * bsize
    w1 = lax.dynamic_slice_in_dim(wt, i1, bsize, axis=1)
    u1 = lax.dynamic_slice(upper, (i1, i1), (bsize, bsize))

    def column_step(i, col_state):
      w1, err1, codes, cur, s_out, z_out = col_state
      c = i1 + i
      w_col = lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
      d = u1[i, i]
      s, z, cur, s_out, z_out = column_params(c, w_col, wt, cur, s_out, z_out)
      q = quant(w_col, s, z)
      err = qz.exact_divide(w_col - qz.dequantize_codes(q, s, z), d)  # as torch divides
      # U is upper triangular: the row is zero left of i, so this only touches columns >= i.
      w1 = w1 - err[:, None] * u1[i][None, :]
      err1 = lax.dynamic_update_index_in_dim(err1, err, i, axis=1)
      codes = lax.dynamic_update_index_in_dim(codes, q.astype(jnp.int32), c, axis=1)
      return w1, err1, codes, cur, s_out, z_out

    _, err1, codes, cur, s_out, z_out = lax.fori_loop(
        0, bsize, column_step, (w1, jnp.zeros_like(w1), codes, cur, s_out, z_out))
    return (wt, codes, cur, s_out, z_out), err1

  state = (wt, codes, cur, s_out, z_out)
  if masked_update:
    # The old path: one traced block body in a fori_loop, the lazy update at full width with
    # the columns < i2 masked to zero (N·B·Kp flops per block: twice the reference's work).
    def block_step(b, state):
      (wt, *rest), err1 = block_columns(b, state)
      u_rows = lax.dynamic_slice_in_dim(upper, b * bsize, bsize, axis=0)
      u_rows = jnp.where(col_ids[None, :] >= (b + 1) * bsize, u_rows, 0)
      return (wt - jnp.matmul(err1, u_rows, precision=lax.Precision.HIGHEST), *rest)

    state = lax.fori_loop(0, num_blocks, block_step, state)
  else:
    # Blocks unrolled (static offsets), so the lazy update touches only the columns right of
    # the block, W[:, i2:] -= E1 @ U[i1:i2, i2:], as the reference does: N·B·(Kp - i2) flops.
    for b in range(num_blocks):
      (wt, *rest), err1 = block_columns(b, state)
      i1, i2 = b * bsize, (b + 1) * bsize
      if i2 < kp:
        wt = wt.at[:, i2:].add(-jnp.matmul(err1, upper[i1:i2, i2:],
                                           precision=lax.Precision.HIGHEST))
      state = (wt, *rest)
  _, codes, _, s_out, z_out = state

  codes = codes[:, :k]
  inv_perm = jnp.argsort(perm)
  if dim == "ic":
    codes = codes[:, inv_perm]
    scales, zeros = s_out[:k][inv_perm], z_out[:k][inv_perm]
  elif static_groups:
    codes = codes[:, inv_perm]
    scales, zeros = s_static.T, z_static.T
  else:  # dynamic per-OC groups stay in processing order (act-order rows + perm)
    scales, zeros = s_out[:, :k // g].T, z_out[:, :k // g].T
  return codes.T, scales, zeros, perm.astype(jnp.int32), used_damp, ok
