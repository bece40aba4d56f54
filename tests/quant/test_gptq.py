import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.quant import gptq_reference as ref
import quant
from core import packing

gptq_module = importlib.import_module("quant.gptq")  # `quant.gptq` is the function


def _layer(k, n, seed, rank=8, dtype=jnp.float32):
  """Random weight and a correlated-input Hessian: low rank plus a small diagonal."""
  rng = np.random.default_rng(seed)  # numpy: jax.random would compile per shape (slow on CPU)
  w = rng.standard_normal((k, n), np.float32)
  x = rng.standard_normal((4 * 32, rank)) @ rng.standard_normal((rank, k))  # 4 samples
  h = 2 / 4 * x.T @ x
  h += np.diag(rng.uniform(0.05, 1.0, k) * np.mean(np.diag(h)) * 0.1)
  return jnp.asarray(w, dtype), jnp.asarray(h, jnp.float32)


def _weighted_error(w, w_hat, h):
  d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
  return float(np.trace(d.T @ np.asarray(h, np.float64) @ d))


@pytest.mark.parametrize("dim,zero_in_range", [("oc", True), ("ic", False)])
def test_identity_hessian_equals_rtn_exactly(dim, zero_in_range):
  w, _ = _layer(64, 48, seed=1)
  kwargs = dict(bits=4, group_size=16, dim=dim, zero_in_range=zero_in_range)
  qw = quant.gptq(w, jnp.eye(64), act_order=False, **kwargs)
  rt = quant.rtn(w, **kwargs)
  np.testing.assert_array_equal(qw.packed, rt.packed)
  np.testing.assert_array_equal(qw.scales, rt.scales)
  np.testing.assert_array_equal(qw.zeros, rt.zeros)
  assert qw.perm is None


REFERENCE_CASES = [
    # dim, act_order, static_groups, bits, group, block, zero_in_range, sym
    ("oc", False, False, 4, 16, 32, True, False),
    ("oc", True, False, 4, 16, 32, True, False),
    ("oc", False, True, 4, 16, 32, True, False),
    ("oc", True, True, 4, 16, 32, True, False),
    ("ic", False, False, 4, 16, 32, True, False),
    ("ic", True, False, 3, 12, 24, False, False),  # AdaDim flavour, K=64 padded to 72
    ("oc", True, False, 3, 32, 24, True, True),  # group spans blocks, sym, padding
]


# Dead inputs on two representative paths (per-OC act-order, per-IC AdaDim).
REFERENCE_RUNS = [(c, False) for c in REFERENCE_CASES] + [(REFERENCE_CASES[1], True),
                                                           (REFERENCE_CASES[5], True)]


@pytest.mark.parametrize("case,dead", REFERENCE_RUNS,
                         ids=lambda c: "-".join(map(str, c)) if isinstance(c, tuple) else
                         ("dead" if c else "live"))
def test_matches_numpy_reference(case, dead):
  dim, act_order, static_groups, bits, g, block, zero_in_range, sym = case
  with jax.enable_x64(True):
    w, h = _layer(64, 48, seed=3)
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    if dead:  # inputs that never fire: zero rows/columns of H
      for i in (5, 40, 41):
        h[i, :] = h[:, i] = 0
    kwargs = dict(bits=bits, dim=dim, act_order=act_order, static_groups=static_groups,
                  zero_in_range=zero_in_range, sym=sym)
    codes, scales, zeros, perm = ref.gptq(w, h, g=g, block=block, **kwargs)
    qw = quant.gptq(jnp.asarray(w), jnp.asarray(h), group_size=g, block_size=block, **kwargs)
    got_codes = np.asarray(packing.unpack(qw.packed, bits))
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_allclose(np.asarray(qw.scales), scales, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(qw.zeros), zeros)
    if perm is None:
      assert qw.perm is None
    else:
      np.testing.assert_array_equal(np.asarray(qw.perm), perm)
    w_hat = np.asarray(quant.dequantize(qw, jnp.float64))
    assert w_hat.shape == w.shape
    if dead and zero_in_range:  # dead inputs are zeroed, and 0 is on the grid
      np.testing.assert_array_equal(w_hat[[5, 40, 41]], 0)


@pytest.mark.parametrize("dim", ["oc", "ic"])
@pytest.mark.parametrize("bits", [3, 4])
def test_never_worse_than_rtn_in_hessian_weighted_error(dim, bits):
  for seed in range(4):
    w, h = _layer(64, 48, seed=10 + seed, rank=12)
    kwargs = dict(bits=bits, group_size=16, dim=dim)  # GPTQ's flavour, act-order
    e_gptq = _weighted_error(w, quant.dequantize(quant.gptq(w, h, **kwargs)), h)
    e_rtn = _weighted_error(w, quant.dequantize(quant.rtn(w, zero_in_range=True, **kwargs)), h)
    assert e_gptq <= e_rtn, (seed, e_gptq, e_rtn)
    assert e_gptq < 0.8 * e_rtn  # and clearly better on correlated inputs


def test_act_order_layout_keeps_groups_contiguous():
  w, h = _layer(64, 48, seed=4)
  qw = quant.gptq(w, h, bits=4, group_size=16, dim="oc", act_order=True)
  expect_perm = np.argsort(-np.diag(np.asarray(h)), kind="stable")
  np.testing.assert_array_equal(np.asarray(qw.perm), expect_perm)
  assert qw.scales.shape == (64 // 16, 48)
  # Stored row i is input channel perm[i]; dequantize restores the original order.
  w_hat = quant.dequantize(qw)
  codes = np.asarray(packing.unpack(qw.packed, 4), np.float32)
  s = np.repeat(np.asarray(qw.scales), 16, axis=0)
  z = np.repeat(np.asarray(qw.zeros, np.float32), 16, axis=0)
  np.testing.assert_array_equal(np.asarray(w_hat)[expect_perm], s * (codes - z))
  # Static groups (and the per-IC path) need no perm: groups are in the original order.
  assert quant.gptq(w, h, bits=4, group_size=16, dim="oc", static_groups=True).perm is None
  assert quant.gptq(w, h, bits=4, group_size=16, dim="ic").perm is None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dequantize_shape_and_dtype(dtype):
  w, h = _layer(64, 48, seed=5, dtype=dtype)
  qw = quant.gptq(w, h, bits=4, group_size=16, dim="oc")
  w_hat = quant.dequantize(qw)
  assert w_hat.shape == w.shape and w_hat.dtype == dtype
  assert qw.scales.dtype == jnp.float32 and qw.zeros.dtype == jnp.uint8


def test_damping_escalation_warns_and_returns_finite_weights():
  k, n = 64, 48
  w, _ = _layer(k, n, seed=6)
  basis = np.random.default_rng(0).standard_normal((8, k))
  h = basis.T @ basis  # rank 8: singular
  null = np.linalg.svd(basis)[2][-1]  # a direction in its null space
  h -= 0.05 * np.mean(np.diag(h)) * np.outer(null, null)  # rounding made it indefinite
  with pytest.warns(RuntimeWarning, match="raised it to 0.1"):
    qw = quant.gptq(w, jnp.asarray(h, jnp.float32), bits=4, group_size=16, dim="oc")
  assert np.all(np.isfinite(np.asarray(quant.dequantize(qw))))
  with pytest.warns(RuntimeWarning, match="damp=0"):
    quant.gptq(w, jnp.asarray(basis.T @ basis - 1e-3 * np.eye(k), jnp.float32), bits=4,
               group_size=16, dim="oc", damp=0.0)
  with pytest.raises(ValueError, match="not positive definite"):
    quant.gptq(w, -jnp.eye(k), bits=4, group_size=16, dim="oc")


def test_bad_inputs_are_clear_errors():
  w, h = _layer(64, 48, seed=7)
  base = dict(bits=4, group_size=16, dim="oc")
  with pytest.raises(ValueError, match=r"hessian has shape \(64, 48\)"):
    quant.gptq(w, h[:, :48], **base)
  with pytest.raises(ValueError, match=r"expected \(64, 64\)"):
    quant.gptq(w, jnp.eye(48), **base)
  with pytest.raises(ValueError, match="hessian has 1 non-finite"):
    quant.gptq(w, h.at[2, 3].set(jnp.nan), **base)
  with pytest.raises(ValueError, match="w has 1 non-finite"):
    quant.gptq(w.at[0, 0].set(jnp.inf), h, **base)
  with pytest.raises(ValueError, match="not supported"):
    quant.gptq(w, h, bits=6, group_size=16, dim="oc")
  with pytest.raises(ValueError, match="divide out_features"):
    quant.gptq(w, h, bits=4, group_size=32, dim="ic")
  with pytest.raises(ValueError, match="static_groups"):
    quant.gptq(w, h, bits=4, group_size=16, dim="ic", static_groups=True)
  with pytest.raises(ValueError, match="block_size"):
    quant.gptq(w, h, block_size=0, **base)
  with pytest.raises(ValueError, match="damp"):
    quant.gptq(w, h, damp=-1.0, **base)


def test_inverse_factor_is_the_upper_cholesky_of_the_damped_inverse():
  _, h = _layer(64, 48, seed=8)
  used, upper, ok = jax.jit(gptq_module.inverse_hessian_factor)(h, jnp.float32(0.01))
  damped = np.asarray(h, np.float64) + 0.01 * np.mean(np.diag(h)) * np.eye(64)
  u = np.asarray(upper, np.float64)
  assert bool(ok) and float(used) == pytest.approx(0.01)
  np.testing.assert_array_equal(u, np.triu(u))
  np.testing.assert_allclose(u.T @ u @ damped, np.eye(64), atol=2e-3)


@pytest.mark.parametrize("case", [REFERENCE_CASES[1], REFERENCE_CASES[5]],
                         ids=lambda c: "-".join(map(str, c)))
def test_exact_width_update_equals_the_masked_full_width_path(case):
  """The unrolled block loop (``masked_update=False``: trailing update on W[:, i2:] only,
  half the flops) gives exactly the codes, scales and zeros of the default full-width masked
  update, in float32 on a K that needs padding (three blocks). (test_matches_numpy_reference
  checks the default path against the reference.)"""
  dim, act_order, static_groups, bits, g, block, zero_in_range, sym = case
  w, h = _layer(80, 48, seed=7)
  w, h = jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32)
  kwargs = dict(bits=bits, group_size=g, dim=dim, act_order=act_order,
                static_groups=static_groups, block_size=block, sym=sym,
                zero_in_range=zero_in_range)
  with jax.default_matmul_precision("highest"):
    new = gptq_module._gptq(w, h, jnp.float32(0.01), masked_update=False, **kwargs)
    old = gptq_module._gptq(w, h, jnp.float32(0.01), masked_update=True, **kwargs)
  for a, b in zip(new, old):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
