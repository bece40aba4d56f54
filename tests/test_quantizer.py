import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import gptq_reference as ref  # tests/ is a package (tests/rl, tests/bayes, tests/optim)
import quant
from quant import qtensor


def _weights(shape, seed=0, dtype=jnp.float32):
  # numpy, not jax.random: its threefry kernels compile per shape (seconds on CPU).
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _expand(a, g, dim, shape):
  return np.repeat(np.asarray(a, np.float64), g, axis=0 if dim == "oc" else 1)[:shape[0]]


@pytest.mark.parametrize("bits,dim,zero_in_range,sym", [
    (2, "oc", False, False), (3, "ic", False, False), (4, "oc", False, False),
    (8, "ic", False, False), (2, "ic", True, False), (3, "oc", True, False),
    (4, "ic", True, True), (3, "oc", True, True), (4, "oc", False, True), (8, "oc", True, False),
])
def test_rtn_error_at_most_half_a_step_within_range(bits, dim, zero_in_range, sym):
  w = _weights((64, 48), seed=bits)
  g = 16
  q, s, z = quant.quantize(w, bits=bits, group_size=g, dim=dim, zero_in_range=zero_in_range,
                           sym=sym)
  maxq = 2**bits - 1
  assert q.dtype == jnp.int32 and int(q.min()) >= 0 and int(q.max()) <= maxq
  np.testing.assert_array_equal(np.asarray(z), np.round(np.asarray(z)))  # integer zeros
  s_full, z_full = _expand(s, g, dim, w.shape), _expand(z, g, dim, w.shape)
  w_hat = s_full * (np.asarray(q) - z_full)
  lo, hi = -z_full * s_full, (maxq - z_full) * s_full
  w64 = np.asarray(w, np.float64)
  # Codes 0 and maxq also take the half step beyond the ends of the grid.
  inside = (w64 >= lo - s_full / 2 - 1e-6) & (w64 <= hi + s_full / 2 + 1e-6)
  if not sym:  # an asymmetric range spans each group's min..max (groups have both signs)
    assert inside.all()
  assert inside.mean() > 0.9
  err = np.abs(w64 - w_hat)
  assert np.all(err[inside] <= s_full[inside] / 2 * (1 + 1e-5) + 1e-7)
  # Outside it the code saturates at the nearest end of the grid.
  np.testing.assert_allclose(w_hat[~inside], np.clip(w64, lo, hi)[~inside], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dim", ["oc", "ic"])
@pytest.mark.parametrize("zero_in_range,sym", [(False, False), (True, False), (True, True)])
def test_rtn_matches_reference_quantizers(bits, dim, zero_in_range, sym):
  with jax.enable_x64(True):
    w = jnp.asarray(np.random.default_rng(7).standard_normal((64, 48)))
    qw = quant.rtn(w, bits=bits, group_size=16, dim=dim, zero_in_range=zero_in_range, sym=sym)
    q, s, z = quant.quantize(w, bits=bits, group_size=16, dim=dim,
                             zero_in_range=zero_in_range, sym=sym)
    expect = ref.rtn(np.asarray(w), bits, 16, dim, zero_in_range, sym)
    got = _expand(s, 16, dim, w.shape) * (np.asarray(q) - _expand(z, 16, dim, w.shape))
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(qtensor.packing.unpack(qw.packed, bits)), q)


def test_zero_in_range_keeps_zero_exact_and_handles_all_zero_groups():
  w = _weights((32, 8)).at[:16, 0].set(0.0).at[3, 1].set(0.0)  # group 0 of column 0 all zero
  q, s, z = quant.quantize(w, bits=4, group_size=16, dim="oc", zero_in_range=True)
  assert float(s[0, 0]) == pytest.approx(2 / 15)  # GPTQ maps an all-zero group to [-1, 1]
  w_hat = quant.dequantize(quant.rtn(w, bits=4, group_size=16, dim="oc", zero_in_range=True))
  assert float(w_hat[3, 1]) == 0.0 and not np.any(np.asarray(w_hat[:16, 0]))


def test_sym_uses_the_middle_zero_point():
  _, s, z = quant.quantize(_weights((64, 16)), bits=3, group_size=32, dim="oc", sym=True,
                           zero_in_range=True)
  np.testing.assert_array_equal(np.asarray(z), 4.0)


def test_per_ic_and_per_oc_have_the_same_number_of_groups():
  w = _weights((128, 256))
  sizes = {}
  for dim in ("oc", "ic"):
    qw = quant.rtn(w, bits=4, group_size=64, dim=dim)
    assert qw.scales.shape == qw.zeros.shape == qtensor.group_shape(w.shape, 64, dim)
    sizes[dim] = qw.scales.size
  assert sizes["oc"] == sizes["ic"] == 128 * 256 // 64


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("dim", ["oc", "ic"])
def test_dequantize_round_trip_shape_dtype_and_fake_quant(dtype, dim):
  w = _weights((64, 32), dtype=dtype)
  qw = quant.rtn(w, bits=3, group_size=16, dim=dim)
  w_hat = quant.dequantize(qw)
  assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
  np.testing.assert_array_equal(np.asarray(w_hat, np.float32),
                                np.asarray(quant.fake_quant(w, bits=3, group_size=16, dim=dim),
                                           np.float32))
  assert qw.zeros.dtype == jnp.uint8 and qw.perm is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=5, group_size=16, dim="oc"), "not supported"),
    (dict(bits=4, group_size=24, dim="oc"), "must be positive and divide"),
    (dict(bits=4, group_size=7, dim="ic"), "must be positive and divide"),
    (dict(bits=4, group_size=16, dim="rows"), "not one of"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    quant.rtn(_weights((64, 48)), **kwargs)


def test_bad_weights_are_clear_errors():
  with pytest.raises(ValueError, match="multiple of 32"):
    quant.rtn(_weights((48, 32)), bits=3, group_size=16, dim="oc")
  with pytest.raises(ValueError, match="non-finite"):
    quant.rtn(_weights((64, 32)).at[3, 4].set(jnp.nan), bits=4, group_size=16, dim="oc")
  with pytest.raises(ValueError, match="2-D"):
    quant.rtn(_weights((64,)), bits=4, group_size=16, dim="oc")
  with pytest.raises(ValueError, match="floating point"):
    quant.rtn(jnp.ones((64, 32), jnp.int32), bits=4, group_size=16, dim="oc")


def test_hessian_is_the_reference_running_mean():
  k = 24
  x1 = np.asarray(_weights((2, 5, k), seed=1), np.float64)  # 2 samples of 5 tokens
  x2 = np.asarray(_weights((3, 4, k), seed=2), np.float64)  # 3 samples of 4 tokens
  state = quant.hessian_update(quant.hessian_init(k), x1)
  state = quant.hessian_update(state, x2)
  tokens = np.concatenate([x1.reshape(-1, k), x2.reshape(-1, k)])
  expect = 2 / 5 * tokens.T @ tokens  # (2/n) sum over samples and tokens, n = 5 samples
  np.testing.assert_allclose(state.h, expect, rtol=1e-5, atol=1e-5)
  assert int(state.num_samples) == 5
  # A 2-D batch is one sample whose tokens are summed.
  np.testing.assert_allclose(quant.hessian_from_inputs(x1[0]), 2 * x1[0].T @ x1[0], rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="in_features"):
    quant.hessian_update(state, np.ones((3, k + 1)))
