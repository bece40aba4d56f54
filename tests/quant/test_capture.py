"""quant.capture finds blocks, linears, groups and proxy scopes from the model itself."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import qtensor
from models import convnet, functional
from models import transformer as T
from quant import capture, ptq, quantizer

CFG = T.ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=32, mlp_dim=128)


def _calib(n=3, t=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"tokens": jnp.asarray(rng.integers(3, 259, (n, t)), jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(t), (n, t)),
          "segment_ids": jnp.ones((n, t), jnp.int32)}


def test_transformer_structure_is_adadims_table():
  """Found from the graph, the groups and scopes are the ones AdaDim's reference hard-codes."""
  graphdef, params = T.init(CFG, seed=0)
  blocks = capture.find_blocks(functional.merge(graphdef, params))
  assert blocks == ("layers",)
  x, ctx = capture.block_inputs(graphdef, params, T.forward, _calib(), blocks)
  assert x.shape == (3, 16, 64)
  graph = capture.block_graphdefs(graphdef, params, blocks)[0]
  groups = capture.block_structure(graph, params["layers"][0], x, ctx)
  assert [(g.linears, g.scope) for g in groups] == [
      ((("attn", "q_proj"), ("attn", "k_proj"), ("attn", "v_proj")), ("attn",)),
      ((("attn", "o_proj"),), None),
      ((("mlp", "gate_proj"), ("mlp", "up_proj")), ("mlp",)),
      ((("mlp", "down_proj"),), None)]


def test_runner_pieces_equal_the_modules_called_by_hand():
  graphdef, params = T.init(CFG, seed=1)
  calib = _calib(n=5)
  x, ctx = capture.block_inputs(graphdef, params, T.forward, calib, ("layers",))
  m = functional.merge(graphdef, params)
  pos, seg = calib["positions"], calib["segment_ids"]
  np.testing.assert_allclose(x, m.embed(calib["tokens"], jnp.float32))
  graph = capture.block_graphdefs(graphdef, params, ("layers",))[0]
  runner = capture.BlockRunner(graph, ctx, 5, chunk=2)  # uneven chunks: 2 + 2 + 1
  blk = m.layers[0]
  np.testing.assert_allclose(runner.output(params["layers"][0], x), blk(x, pos, seg)[0],
                             atol=1e-5, rtol=1e-5)
  got = runner.inputs(params["layers"][0], x, (("attn", "q_proj"), ("mlp", "up_proj")))
  xn = blk.attn_norm(x)
  hn = blk.mlp_norm(x + blk.attn(xn, pos, seg)[0])
  np.testing.assert_allclose(got[("attn", "q_proj")], xn, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got[("mlp", "up_proj")], hn, atol=1e-5, rtol=1e-5)
  inp = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
  np.testing.assert_allclose(runner.scope_output(params["layers"][0], x, inp, ("mlp",)),
                             blk.mlp(inp), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(runner.scope_output(params["layers"][0], x, inp, ("attn",)),
                             blk.attn(inp, pos, seg)[0], atol=1e-5, rtol=1e-5)


def test_ptq_is_model_agnostic_on_the_convnet():
  """No block list: the whole convnet is one block; its two head Linears quantize (RTN) and
  its convolutions stay dense."""
  cfg = convnet.Config(channels=(8,), hidden=32)
  graphdef, params = convnet.init(cfg, seed=0)
  rng = np.random.default_rng(0)
  calib = {"images": jnp.asarray(rng.uniform(size=(6, 8, 8, 1)), jnp.float32),
           "labels": jnp.zeros((6,), jnp.int32)}
  # The 10-class head has no per-IC group of 32 along N=10: AdaDim cannot run, and says so.
  with pytest.raises(ValueError, match=r"out \(shape \[in=32, out=10\]\)"):
    ptq.quantize_model(graphdef, params, calib, ptq.QuantSpec(group_size=32, dim="ada"),
                       forward=convnet.forward, progress=False)
  spec = ptq.QuantSpec(method="rtn", bits=4, group_size=32, dim="oc")
  qparams, _, records = ptq.quantize_model(graphdef, params, calib, spec,
                                           forward=convnet.forward, chunk=4, progress=False)
  assert [r.name for r in records] == ["hidden", "out"]
  for r in records:
    qw = qparams[r.name]["kernel"]
    assert isinstance(qw, qtensor.QuantizedWeight) and qw.dim == r.dim
    np.testing.assert_array_equal(qtensor.dequantize(qw), quantizer.fake_quant(
        params[r.name]["kernel"], bits=4, group_size=32, dim=r.dim, zero_in_range=False))
  np.testing.assert_array_equal(qparams["convs"][0]["kernel"], params["convs"][0]["kernel"])
  logits = convnet.apply(graphdef, qparams, calib["images"])  # runs through the low-bit matmul
  dense = convnet.apply(graphdef, ptq.dequantized(qparams), calib["images"])
  np.testing.assert_allclose(logits, dense, atol=1e-4)


def test_a_forward_that_skips_the_blocks_is_an_error():
  graphdef, params = T.init(CFG, seed=0)
  with pytest.raises(ValueError, match="never called the model's first block"):
    capture.block_inputs(graphdef, params, lambda m, b: m.embed(b["tokens"], jnp.float32),
                         _calib(), ("layers",))
