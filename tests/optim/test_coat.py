"""COAT: the FP8 group codec (round trip, expansion, edge cases) and coat_adamw vs optax.adamw."""
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from optim import coat, registry
from optim import coat as _coat


# Jitted: eager dispatch compiles every primitive per shape, which dominates CPU test time.
def quantize_groups(x, **kw):
  return jax.jit(lambda a: _coat.quantize_groups(a, **kw))(x)


dequantize_groups = jax.jit(_coat.dequantize_groups)


def _arr(x):
  return jnp.asarray(np.asarray(x, np.float32))


def _fp8_half_ulp_rel(q, fmt):
  """The largest relative rounding error that can have produced the FP8 value q: half the
  spacing h at |q|, relative to the unrounded value (>= |q| - h); normal or subnormal."""
  dt = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}[fmt]
  info = ml_dtypes.finfo(dt)
  q = np.abs(np.asarray(q, np.float32))
  e = np.floor(np.log2(np.maximum(q, float(info.smallest_normal))))
  spacing = 2.0 ** (e - info.nmant)
  return 0.5 * spacing / (q - 0.5 * spacing)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_round_trip_within_fp8_precision_after_expansion(fmt):
  rng = np.random.default_rng(0)
  # Rows of 300: two full groups of 128 and a partial one of 44; magnitudes over ~4 decades.
  x = rng.standard_normal((6, 300)) * np.exp(rng.uniform(-4, 4, (6, 300)))
  g = quantize_groups(_arr(x), fmt=fmt)
  assert g.q.shape == x.shape and g.q.dtype == coat.FORMATS[fmt]
  assert g.scale.shape == g.k.shape == g.sqrt_minmax.shape == (6, 3)
  y = np.asarray(dequantize_groups(g))
  assert y.shape == x.shape and y.dtype == np.float32
  # x_hat / x = (q / q_exact)^(1/k) and |q / q_exact - 1| <= d: the bound below in x.
  q = np.asarray(g.q.astype(jnp.float32))
  k = np.repeat(np.asarray(g.k), 128, axis=1)[:, :300]
  d = _fp8_half_ulp_rel(q, fmt)
  d = np.minimum(d, 1)
  bound = np.maximum((1 + d) ** (1 / k) - 1, 1 - (1 - d) ** (1 / k)) + 1e-5  # + fp32 slack
  rel = np.abs(y - x) / np.abs(x)
  assert np.all(rel <= bound), float(np.max(rel / bound))
  assert np.all(np.sign(y) == np.sign(x))


def test_k_on_the_sixteenth_grid_and_the_group_range_fills_the_format():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((32, 128)) * np.exp(rng.uniform(-1, 1, (32, 1)) * rng.uniform(
      0, 8, (32, 128)))
  g = quantize_groups(_arr(x))
  k = np.asarray(g.k)[:, 0]
  np.testing.assert_array_equal(k * 16, np.round(k * 16))
  assert k.min() >= 1 / 16 and k.max() <= 64
  # The expanded group spans R^k <= 448^2/2, and one more 1/16 step would exceed it.
  a = np.abs(x).astype(np.float64)
  log_r = np.log2((a.max(1) + 1e-30) / (a.min(1) + 1e-30))
  assert np.all(k * log_r <= np.log2(448.0**2 / 2) + 1e-4)
  assert np.all((k + 1 / 16) * log_r > np.log2(448.0**2 / 2))
  # Largest |q| of every group is the format maximum.
  np.testing.assert_array_equal(np.abs(np.asarray(g.q.astype(jnp.float32))).max(1), 448.0)


def _mean_rel_err(x, **kw):
  y = np.asarray(dequantize_groups(quantize_groups(_arr(x), **kw)))
  nz = x != 0
  return float(np.mean(np.abs(y - x)[nz] / np.abs(x)[nz]))


def test_expansion_beats_plain_absmax():
  rng = np.random.default_rng(2)
  # v-like groups (range ~10-100): expansion turns the spare FP8 range into precision.
  v = rng.uniform(0.05, 1.0, (64, 128)) ** 2 * 1e-6
  assert _mean_rel_err(v, expand=True) < 0.65 * _mean_rel_err(v, expand=False)  # ~1/k, k~1.9
  # Heavy-tailed groups (log-normal magnitudes, sigma 3: ranges ~1e6 per group): absmax flushes
  # the small entries to zero or to imprecise subnormals; expansion (k < 1 here) keeps them.
  m = rng.standard_normal((64, 128)) * np.exp(3 * rng.standard_normal((64, 128))) * 1e-3
  with_exp, plain = _mean_rel_err(m, expand=True), _mean_rel_err(m, expand=False)
  assert with_exp < 0.5 * plain, (with_exp, plain)


@pytest.mark.parametrize("expand", [True, False])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_zero_single_nonzero_and_huge_groups_stay_finite(expand, fmt):
  x = np.zeros((5, 128), np.float32)       # row 0: all zeros
  x[1, 17] = -3.5e-7                       # row 1: a single nonzero
  x[2] = np.linspace(-1e6, 1e6, 128)       # row 2: far beyond +-448 (and one zero)
  x[3] = 2.5                               # row 3: all equal (R = 1)
  x[4, :64] = 1e30; x[4, 64:] = 1e-30      # row 4: the widest fp32 range
  g = quantize_groups(_arr(x), fmt=fmt, expand=expand)
  for part in (g.q.astype(jnp.float32), g.scale, g.k, g.sqrt_minmax):
    if part is not None:
      assert np.all(np.isfinite(np.asarray(part)))
  y = np.asarray(dequantize_groups(g))
  assert np.all(np.isfinite(y))
  np.testing.assert_array_equal(y[0], 0.0)
  np.testing.assert_allclose(y[1, 17], -3.5e-7, rtol=1e-5)
  assert np.count_nonzero(y[1]) == 1
  np.testing.assert_allclose(y[2, [0, -1]], [-1e6, 1e6], rtol=1e-5)
  np.testing.assert_allclose(y[3], 2.5, rtol=1e-5)
  np.testing.assert_allclose(y[4, :64], 1e30, rtol=1e-5)


@pytest.mark.parametrize("shape", [(), (5,), (3, 300)])
@pytest.mark.parametrize("expand", [True, False])
def test_zeros_groups_is_the_encoding_of_zeros(shape, expand):
  want = quantize_groups(jnp.zeros(shape), fmt="e5m2", group_size=128, expand=expand)
  got = coat.zeros_groups(shape, fmt="e5m2", group_size=128, expand=expand)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a, np.float32),
                                                          np.asarray(b, np.float32)), got, want)
  assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def test_partial_last_group_and_odd_shapes_round_trip():
  rng = np.random.default_rng(3)
  for shape, gs in [((), 128), ((5,), 128), ((3, 7, 130), 64), ((129,), 1)]:
    x = (rng.standard_normal(shape) + 3.0).astype(np.float32)
    g = quantize_groups(jnp.asarray(x, jnp.bfloat16), group_size=gs)
    y = dequantize_groups(g)
    assert y.shape == x.shape and y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), x, rtol=0.07)
  # A partial group is its own group: its scale does not see the full group's values.
  x = np.concatenate([np.full(128, 1000.0), np.full(3, 1e-3)]).astype(np.float32)
  np.testing.assert_allclose(np.asarray(dequantize_groups(quantize_groups(_arr(x)))), x,
                             rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(fmt="e4m3fnuz"), "not an FP8 format"),
    (dict(group_size=0), "group_size=0"),
    (dict(group_size=-128), "group_size=-128"),
    (dict(group_size=1.5), "positive integer"),
])
def test_codec_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    coat.quantize_groups(jnp.ones(4), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(m_format="fp8"), "m_format='fp8'"),
    (dict(v_format="e3m4"), "v_format='e3m4'"),
    (dict(group_size=0), "group_size=0"),
    (dict(b2=1.0), "b2=1.0"),
    (dict(min_size=-1), "min_size"),
])
def test_coat_adamw_bad_input_fails_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    coat.coat_adamw(1e-3, **kwargs)
  with pytest.raises(ValueError, match=match):
    registry.get_optimizer("coat_adamw", 1e-3, **kwargs)


# --- the optimizer --------------------------------------------------------------------------------


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w1": _arr(rng.standard_normal((32, 256)) * 0.3),
          "w2": _arr(rng.standard_normal((256, 16)) * 0.3),
          "b": jnp.zeros((256,))}


def _loss(p, x, y):
  h = jnp.tanh(x @ p["w1"] + p["b"])
  return jnp.mean((h @ p["w2"] - y) ** 2)


def _run(tx, params, steps):
  rng = np.random.default_rng(7)
  x, y = _arr(rng.standard_normal((64, 32))), _arr(rng.standard_normal((64, 16)))

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(_loss)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, state, losses


def test_fp32_storage_equals_optax_adamw_over_50_steps():
  params = _params()
  mask = {"w1": True, "w2": True, "b": False}
  # min_size above every leaf: the same update code with fp32 moments instead of FP8.
  ours = coat.coat_adamw(3e-3, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1,
                         min_size=10**9, mask=mask)
  ref = optax.adamw(3e-3, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, mask=mask)
  p_ours, s_ours, _ = _run(ours, params, 50)
  p_ref, _, _ = _run(ref, params, 50)
  assert not jax.tree.leaves(s_ours[0].mu, is_leaf=coat._is_groups)[0].dtype == jnp.float8_e4m3fn
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               p_ours, p_ref)
  assert float(jnp.abs(p_ours["w1"] - params["w1"]).max()) > 1e-2  # it really moved


def test_fp8_states_track_adamw_and_are_small():
  params = _params()
  tx = coat.coat_adamw(3e-3, weight_decay=0.01, min_size=4096)
  p, state, losses = _run(tx, params, 50)
  _, _, ref_losses = _run(optax.adamw(3e-3, weight_decay=0.01), params, 50)
  mu = state[0].mu
  assert isinstance(mu["w1"], coat.Fp8Groups) and mu["w1"].q.dtype == jnp.float8_e4m3fn
  assert isinstance(mu["w2"], coat.Fp8Groups) and mu["w2"].scale.shape == (256, 1)
  assert mu["b"].dtype == jnp.float32  # 256 < min_size
  assert losses[-1] < 0.5 * losses[0]
  np.testing.assert_allclose(losses[-1], ref_losses[-1], rtol=0.1)
  # State bytes: 2 x (1 + 12/G) per quantized element vs 8 for fp32 AdamW (+ small leaves).
  n_q = 32 * 256 + 256 * 16
  want = 2 * (n_q + 12 * (32 * 2 + 256 * 1)) + 2 * 4 * 256 + 4
  assert coat.state_nbytes(state) == want
  assert coat.state_nbytes(jax.eval_shape(tx.init, params)) == want


def test_readme_coat_snippet_runs():
  from tests.readme_snippets import python_blocks  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### FP8 optimizer states: COAT (`optim/coat.py`)")
  assert blocks, "README lost its COAT section"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used


def test_registry_and_optax_tree_map_params():
  tx = registry.get_optimizer("coat_adamw", 1e-3, weight_decay=0.1,
                              exclude_from_weight_decay=(r"(^|/)b$",))
  params = _params()
  state = jax.eval_shape(tx.init, params)
  # tree_map_params finds the moment trees (leaves Fp8Groups) the way the train loop does.
  seen = []
  optax.tree_map_params(tx, lambda s, p: seen.append((type(s).__name__, p.shape)), state,
                        params, is_leaf=coat._is_groups, transform_non_params=lambda _: None)
  assert sorted(seen) == sorted([("Fp8Groups", (32, 256)), ("Fp8Groups", (256, 16)),
                                 ("ShapeDtypeStruct", (256,))] * 2)
