"""AdaDim's per-linear dim choice vs a brute-force computation; sequential order; GPTQ-ada."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import transformer as T
from quant import adadim, hessian, ptq, qtensor, quantizer
from quant.gptq import gptq

# d_model 64, kv width 32, mlp 128: group 32 fits every linear in both dims.
CFG = T.ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=32, mlp_dim=128)
OUTLIER_ROWS = (3, 17, 40)  # input channels of q_proj made 12x larger: per-IC should win
fake_quant = jax.jit(quantizer.fake_quant, static_argnames=("bits", "group_size", "dim"))


@pytest.fixture(scope="module")
def model():
  _, params = T.init(CFG, seed=0)
  q = params["layers"][0]["attn"]["q_proj"]["kernel"]
  params["layers"][0]["attn"]["q_proj"]["kernel"] = q.at[OUTLIER_ROWS, :].multiply(12.0)
  rng = np.random.default_rng(0)
  calib = {"tokens": rng.integers(3, 259, (4, 24)).astype(np.int32),
           "segment_ids": np.repeat([[1] * 10 + [2] * 14], 4, 0).astype(np.int32),
           "positions": np.repeat([list(range(10)) + list(range(14))], 4, 0).astype(np.int32)}
  return params, calib


def _brute_force_choices(params, calib, spec):
  """Block 0 by hand: nnx sub-modules, numpy float64 MSE, FP inputs (AdaDim RTN-ada)."""
  pos, seg = jnp.asarray(calib["positions"]), jnp.asarray(calib["segment_ids"])
  fp = params["layers"][0]

  @jax.jit
  def fp_inputs(params):
    x = T.embed_tokens(CFG, params, jnp.asarray(calib["tokens"]))
    blk = T.block_module(CFG, params["layers"][0])
    xn = blk.attn_norm(x)
    hn = blk.mlp_norm(x + blk.attn(xn, pos, seg)[0])
    return xn, hn, blk.attn.mix(xn, pos, seg)[0], blk.mlp.hidden(hn)

  xn, hn, o_in, down_in = fp_inputs(params)
  inputs = {"attn.o_proj": o_in, "mlp.down_proj": down_in}

  @jax.jit(static_argnums=1)
  def scope_out(p, name):
    b = T.block_module(CFG, p)
    if name.startswith("attn.") and name != "attn.o_proj":
      return b.attn(xn, pos, seg)[0]
    if name in ("mlp.gate_proj", "mlp.up_proj"):
      return b.mlp(hn)
    return inputs[name] @ adadim.get_kernel(p, name)

  cur, out = fp, {}
  for name in adadim.LINEARS:
    w = adadim.get_kernel(fp, name)
    ref = np.asarray(scope_out(cur, name), np.float64)
    errs = {}
    for d in ("oc", "ic"):
      w_hat = fake_quant(w, bits=spec.bits, group_size=spec.group_size, dim=d)
      cand = np.asarray(scope_out(adadim.set_kernel(cur, name, w_hat), name), np.float64)
      errs[d] = float(np.mean((ref - cand) ** 2))
    best = min(("oc", "ic"), key=lambda d: (errs[d], d != "oc"))
    out[name] = (best, errs)
    cur = adadim.set_kernel(cur, name, fake_quant(
        w, bits=spec.bits, group_size=spec.group_size, dim=best))
  return out


def test_dim_choice_matches_brute_force(model):
  params, calib = model
  spec = adadim.QuantSpec(method="rtn", bits=3, group_size=32, dim="ada")
  assert spec.calib_mode == "fp"
  qparams, dense, records = ptq.quantize_model(CFG, params, calib, spec, chunk=2,
                                               progress=False)
  want = _brute_force_choices(params, calib, spec)
  got = [r for r in records if r.layer == 0]
  assert [r.name for r in got] == list(adadim.LINEARS)
  for r in got:
    dim, errs = want[r.name]
    assert r.dim == dim, r.name
    for d in ("oc", "ic"):
      np.testing.assert_allclose(r.proxy_mse[d], errs[d], rtol=2e-4, err_msg=r.name)
    qw = qparams["layers"][0][r.name.split(".")[0]][r.name.split(".")[1]]["kernel"]
    assert isinstance(qw, qtensor.QuantizedWeight) and qw.dim == r.dim and qw.bits == 3
    np.testing.assert_array_equal(
        qtensor.dequantize(qw), fake_quant(adadim.get_kernel(params["layers"][0], r.name),
                                           bits=3, group_size=32, dim=r.dim))
    assert 0 < r.rel_err < 0.5
  dims = {r.name: r.dim for r in got}
  assert dims["attn.q_proj"] == "ic"  # its outlier input channels are isolated per-IC
  assert set(dims.values()) == {"oc", "ic"}, dims
  # Every block gets a record per linear and the dense params equal the dequantized ones.
  assert len(records) == CFG.n_layers * len(adadim.LINEARS)
  for (_, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(ptq.dequantized(qparams))[0],
                            jax.tree_util.tree_flatten_with_path(dense)[0]):
    np.testing.assert_array_equal(a, b)


def test_siblings_are_scored_against_the_quantized_earlier_siblings(model):
  """k_proj's reference attention output already holds the quantized q_proj."""
  params, calib = model
  spec = adadim.QuantSpec(method="rtn", bits=3, group_size=32, dim="ada")
  fns = adadim.BlockFunctions(CFG, calib["positions"], calib["segment_ids"], chunk=4)
  x = fns.embed(params, calib["tokens"])
  fp = params["layers"][0]
  _, _, records = adadim.quantize_block(fns, fp, x, spec)
  k_err = records[1].proxy_mse
  xn = fns.attn_input(fp, x)
  w_k = adadim.get_kernel(fp, "attn.k_proj")
  q_hat = adadim.proxy_weight(adadim.get_kernel(fp, "attn.q_proj"), spec, records[0].dim)
  for cur, should_match in ((adadim.set_kernel(fp, "attn.q_proj", q_hat), True), (fp, False)):
    ref = fns.attn_output(cur, xn)
    got = adadim.mse(ref, fns.attn_output(
        adadim.set_kernel(cur, "attn.k_proj", adadim.proxy_weight(w_k, spec, "oc")), xn))
    assert np.isclose(got, k_err["oc"], rtol=1e-5) == should_match


def test_gptq_runs_only_in_the_chosen_dim_with_the_captured_hessian(model):
  """GPTQ-ada, sequential mode: layer-1 inputs come from the quantized layer 0."""
  params, calib = model
  spec = adadim.QuantSpec(method="gptq", bits=4, group_size=32, dim="ada")
  assert spec.calib_mode == "sequential"
  qparams, dense, records = ptq.quantize_model(CFG, params, calib, spec, chunk=4,
                                               progress=False)
  fns = adadim.BlockFunctions(CFG, calib["positions"], calib["segment_ids"], chunk=4)
  x0 = fns.embed(params, calib["tokens"])
  x1 = fns.block_output(dense["layers"][0], x0)  # the quantized block's output
  xn = fns.attn_input(params["layers"][1], x1)
  rec = [r for r in records if r.layer == 1 and r.name == "attn.q_proj"][0]
  h = hessian.hessian_update(hessian.hessian_init(CFG.d_model), xn).h
  want = gptq(adadim.get_kernel(params["layers"][1], "attn.q_proj"), h, bits=4, group_size=32,
              dim=rec.dim, act_order=True, static_groups=rec.dim == "oc",
              zero_in_range=rec.dim == "oc")
  got = qparams["layers"][1]["attn"]["q_proj"]["kernel"]
  assert got.dim == rec.dim
  np.testing.assert_allclose(qtensor.dequantize(got), qtensor.dequantize(want), atol=1e-6)
  # GPTQ reconstructs its own inputs better than RTN in the same dims.
  _, _, rtn_records = ptq.quantize_model(
      CFG, params, calib, adadim.QuantSpec(method="rtn", bits=4, group_size=32, dim="ada",
                                           calib_mode="sequential"), chunk=4, progress=False)
  assert np.mean([r.rel_err for r in records]) < np.mean([r.rel_err for r in rtn_records])


def test_bad_specs_and_layouts():
  with pytest.raises(ValueError, match="bits=5 is not supported"):
    adadim.QuantSpec(bits=5)
  with pytest.raises(ValueError, match="method="):
    adadim.QuantSpec(method="awq")
  with pytest.raises(ValueError, match="dim="):
    adadim.QuantSpec(dim="both")
  with pytest.raises(ValueError, match="calib_mode="):
    adadim.QuantSpec(calib_mode="random")
  tiny = T.preset("tiny")  # k/v_proj are 128 x 64: per-IC groups of 128 do not fit
  adadim.check_layouts(tiny, adadim.QuantSpec(group_size=128, dim="oc"))
  with pytest.raises(ValueError, match=r"layers\.\*\.attn\.k_proj \(shape \[in=128, out=64\]\).*fit every "
                     r"linear of this model: \[64, 32, 16\]"):
    adadim.check_layouts(tiny, adadim.QuantSpec(group_size=128, dim="ic"))
  with pytest.raises(ValueError, match=r"attn\.q_proj .*group_size=48.*\[128, 64, 32, 16\]"):
    adadim.check_layouts(tiny, adadim.QuantSpec(group_size=48, dim="oc"))
