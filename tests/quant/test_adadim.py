"""AdaDim's per-linear dim choice vs a brute-force computation; sequential order; GPTQ-ada."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import qtensor
from models import attention, functional, layers
from models import transformer as T
from quant import adadim, capture, hessian, ptq, quantizer
from quant.gptq import gptq

# d_model 64, kv width 32, mlp 128: group 32 fits every linear in both dims.
CFG = T.ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=32, mlp_dim=128)
LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
OUTLIER_ROWS = (3, 17, 40)  # input channels of q_proj made 12x larger: per-IC should win
fake_quant = jax.jit(quantizer.fake_quant, static_argnames=("bits", "group_size", "dim"))


def kpath(name):
  return tuple(name.split(".")) + ("kernel",)


@pytest.fixture(scope="module")
def model():
  graphdef, params = T.init(CFG, seed=0)
  q = params["layers"][0]["attn"]["q_proj"]["kernel"]
  params["layers"][0]["attn"]["q_proj"]["kernel"] = q.at[OUTLIER_ROWS, :].multiply(12.0)
  rng = np.random.default_rng(0)
  calib = {"tokens": rng.integers(3, 259, (4, 24)).astype(np.int32),
           "segment_ids": np.repeat([[1] * 10 + [2] * 14], 4, 0).astype(np.int32),
           "positions": np.repeat([list(range(10)) + list(range(14))], 4, 0).astype(np.int32)}
  return graphdef, params, calib


def _fp_inputs(graphdef, params, calib):
  """Block 0's inputs written out by hand from the nnx sub-modules (an independent oracle)."""
  pos, seg = jnp.asarray(calib["positions"]), jnp.asarray(calib["segment_ids"])
  m = functional.merge(graphdef, params)
  x = m.embed(jnp.asarray(calib["tokens"]), jnp.float32)
  blk = m.layers[0]
  xn = blk.attn_norm(x)
  b, t, _ = xn.shape
  q = layers.rope(blk.attn.q_proj(xn).reshape(b, t, 2, 32), pos, theta=CFG.rope_theta)
  k = layers.rope(blk.attn.k_proj(xn).reshape(b, t, 1, 32), pos, theta=CFG.rope_theta)
  v = blk.attn.v_proj(xn).reshape(b, t, 1, 32)
  o_in = attention.dot_product_attention(q, k, v, attention.segment_mask(seg)).reshape(b, t, 64)
  hn = blk.mlp_norm(x + blk.attn(xn, pos, seg)[0])
  down_in = jax.nn.silu(blk.mlp.gate_proj(hn)) * blk.mlp.up_proj(hn)
  return x, xn, hn, o_in, down_in, pos, seg


def _brute_force_choices(graphdef, params, calib, spec):
  """Block 0 by hand: nnx sub-modules, numpy float64 MSE, FP inputs (AdaDim RTN-ada)."""
  _, xn, hn, o_in, down_in, pos, seg = _fp_inputs(graphdef, params, calib)
  block_graph = capture.block_graphdefs(graphdef, params, ("layers",))[0]
  inputs = {"attn.o_proj": o_in, "mlp.down_proj": down_in}

  def scope_out(p, name):
    b = functional.merge(block_graph, p)
    if name in ("attn.q_proj", "attn.k_proj", "attn.v_proj"):
      return b.attn(xn, pos, seg)[0]
    if name in ("mlp.gate_proj", "mlp.up_proj"):
      return b.mlp(hn)
    return inputs[name] @ capture.get_param(p, kpath(name))

  fp = params["layers"][0]
  cur, out = fp, {}
  for name in LINEARS:
    w = capture.get_param(fp, kpath(name))
    ref = np.asarray(scope_out(cur, name), np.float64)
    errs = {}
    for d in ("oc", "ic"):
      w_hat = fake_quant(w, bits=spec.bits, group_size=spec.group_size, dim=d)
      cand = np.asarray(scope_out(capture.set_param(cur, kpath(name), w_hat), name), np.float64)
      errs[d] = float(np.mean((ref - cand) ** 2))
    best = min(("oc", "ic"), key=lambda d: (errs[d], d != "oc"))
    out[name] = (best, errs)
    cur = capture.set_param(cur, kpath(name), fake_quant(
        w, bits=spec.bits, group_size=spec.group_size, dim=best))
  return out


def test_dim_choice_matches_brute_force(model):
  graphdef, params, calib = model
  spec = ptq.QuantSpec(method="rtn", bits=3, group_size=32, dim="ada")
  assert spec.calib_mode == "fp"
  qparams, dense, records = ptq.quantize_model(graphdef, params, calib, spec,
                                               forward=T.forward, chunk=2, progress=False)
  want = _brute_force_choices(graphdef, params, calib, spec)
  got = [r for r in records if r.layer == 0]
  assert [r.name for r in got] == list(LINEARS)
  for r in got:
    dim, errs = want[r.name]
    assert r.dim == dim, r.name
    for d in ("oc", "ic"):
      np.testing.assert_allclose(r.proxy_mse[d], errs[d], rtol=2e-4, err_msg=r.name)
    qw = capture.get_param(qparams["layers"][0], kpath(r.name))
    assert isinstance(qw, qtensor.QuantizedWeight) and qw.dim == r.dim and qw.bits == 3
    np.testing.assert_array_equal(
        qtensor.dequantize(qw), fake_quant(capture.get_param(params["layers"][0], kpath(r.name)),
                                           bits=3, group_size=32, dim=r.dim))
    assert 0 < r.rel_err < 0.5
  dims = {r.name: r.dim for r in got}
  assert dims["attn.q_proj"] == "ic"  # its outlier input channels are isolated per-IC
  assert set(dims.values()) == {"oc", "ic"}, dims
  # Every block gets a record per linear and the dense params equal the dequantized ones.
  assert len(records) == CFG.n_layers * len(LINEARS)
  for (_, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(ptq.dequantized(qparams))[0],
                            jax.tree_util.tree_flatten_with_path(dense)[0]):
    np.testing.assert_array_equal(a, b)


def test_choose_dim_keeps_oc_on_ties_and_picks_the_smaller_error():
  w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)
  assert adadim.choose_dim(lambda w_hat: 1.0, w, bits=4, group_size=32)[0] == "oc"
  ic = adadim.proxy_weight(w, bits=4, group_size=32, dim="ic")
  dim, errs = adadim.choose_dim(lambda w_hat: float(jnp.sum((w_hat - ic) ** 2)), w, bits=4,
                                group_size=32)
  assert dim == "ic" and errs["ic"] == 0.0 < errs["oc"]


def test_siblings_are_scored_against_the_quantized_earlier_siblings(model):
  """k_proj's reference attention output already holds the quantized q_proj."""
  graphdef, params, calib = model
  spec = ptq.QuantSpec(method="rtn", bits=3, group_size=32, dim="ada")
  x, ctx = capture.block_inputs(graphdef, params, T.forward, jax.tree.map(jnp.asarray, calib),
                                ("layers",))
  graph = capture.block_graphdefs(graphdef, params, ("layers",))[0]
  fp = params["layers"][0]
  runner = capture.BlockRunner(graph, ctx, x.shape[0], chunk=4)
  groups = capture.block_structure(graph, fp, x, ctx)
  _, _, records = ptq.quantize_block(runner, groups, fp, x, spec)
  k_err = records[1].proxy_mse
  xn = runner.inputs(fp, x, (("attn", "q_proj"),))[("attn", "q_proj")]
  w_k = capture.get_param(fp, kpath("attn.k_proj"))
  q_hat = adadim.proxy_weight(capture.get_param(fp, kpath("attn.q_proj")), bits=3,
                              group_size=32, dim=records[0].dim)
  for cur, should_match in ((capture.set_param(fp, kpath("attn.q_proj"), q_hat), True),
                            (fp, False)):
    ref = runner.scope_output(cur, x, xn, ("attn",))
    k_hat = adadim.proxy_weight(w_k, bits=3, group_size=32, dim="oc")
    got = ptq.mse(ref, runner.scope_output(capture.set_param(cur, kpath("attn.k_proj"), k_hat),
                                           x, xn, ("attn",)))
    assert np.isclose(got, k_err["oc"], rtol=1e-5) == should_match


def test_gptq_runs_only_in_the_chosen_dim_with_the_captured_hessian(model):
  """GPTQ-ada, sequential mode: layer-1 inputs come from the quantized layer 0."""
  graphdef, params, calib = model
  spec = ptq.QuantSpec(method="gptq", bits=4, group_size=32, dim="ada")
  assert spec.calib_mode == "sequential"
  qparams, dense, records = ptq.quantize_model(graphdef, params, calib, spec,
                                               forward=T.forward, chunk=4, progress=False)
  # Block 1's input: the quantized block 0's output, by hand.
  x0, _, _, _, _, pos, seg = _fp_inputs(graphdef, params, calib)
  m = functional.merge(graphdef, dense)
  x1 = m.layers[0](x0, pos, seg)[0]
  xn = m.layers[1].attn_norm(x1)
  rec = [r for r in records if r.layer == 1 and r.name == "attn.q_proj"][0]
  h = hessian.hessian_update(hessian.hessian_init(CFG.d_model), xn).h
  want = gptq(params["layers"][1]["attn"]["q_proj"]["kernel"], h, bits=4, group_size=32,
              dim=rec.dim, act_order=True, static_groups=rec.dim == "oc",
              zero_in_range=rec.dim == "oc")
  got = qparams["layers"][1]["attn"]["q_proj"]["kernel"]
  assert got.dim == rec.dim
  np.testing.assert_allclose(qtensor.dequantize(got), qtensor.dequantize(want), atol=1e-6)
  # GPTQ reconstructs its own inputs better than RTN in the same dims.
  _, _, rtn_records = ptq.quantize_model(
      graphdef, params, calib, ptq.QuantSpec(method="rtn", bits=4, group_size=32, dim="ada",
                                             calib_mode="sequential"),
      forward=T.forward, chunk=4, progress=False)
  assert np.mean([r.rel_err for r in records]) < np.mean([r.rel_err for r in rtn_records])


def test_bad_specs_and_layouts():
  with pytest.raises(ValueError, match="bits=5 is not supported"):
    ptq.QuantSpec(bits=5)
  with pytest.raises(ValueError, match="method="):
    ptq.QuantSpec(method="awq")
  with pytest.raises(ValueError, match="dim="):
    ptq.QuantSpec(dim="both")
  with pytest.raises(ValueError, match="calib_mode="):
    ptq.QuantSpec(calib_mode="random")
  graphdef, params = T.abstract_params(T.preset("tiny"))  # k/v_proj: 128 x 64
  ptq.check_layouts(graphdef, params, ptq.QuantSpec(group_size=128, dim="oc"))
  with pytest.raises(ValueError, match=r"layers\.0\.attn\.k_proj \(shape \[in=128, out=64\]\)"
                     r".*fit every linear of this model: \[64, 32, 16\]"):
    ptq.check_layouts(graphdef, params, ptq.QuantSpec(group_size=128, dim="ic"))
  with pytest.raises(ValueError, match=r"layers\.0\.attn\.k_proj .*group_size=48.*\[128, 64, 32, 16\]"):
    ptq.check_layouts(graphdef, params, ptq.QuantSpec(group_size=48, dim="oc"))
