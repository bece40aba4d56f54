"""The model: decode cache == full forward, segment isolation, GQA vs per-head attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import qtensor
from models import attention, layers, registry
from models import transformer as T


@pytest.fixture(scope="module")
def tiny():
  cfg = T.preset("tiny", n_layers=2)
  graphdef, params = T.init(cfg, seed=0)
  return cfg, graphdef, params


def test_param_count_and_logical_axes(tiny):
  cfg, _, params = tiny
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  axes = T.logical_axes(cfg)
  for (path, x), (_, a) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                               jax.tree_util.tree_flatten_with_path(
                                   axes, is_leaf=lambda v: isinstance(v, tuple))[0]):
    assert isinstance(a, tuple) and len(a) == x.ndim, (path, a)


def test_kv_cache_decode_matches_full_forward(tiny):
  cfg, graphdef, params = tiny
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
  full = T.apply(graphdef, params, tokens)
  step = jax.jit(lambda p, t, pos, c: T.apply(graphdef, p, t, pos, None, c))
  cache = T.init_cache(cfg, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
  logits, cache = step(params, tokens[:, :7], pos, cache)
  np.testing.assert_allclose(logits, full[:, :7], atol=1e-5)
  for t in range(7, 12):
    step_logits, cache = step(params, tokens[:, t:t + 1], jnp.full((2, 1), t), cache)
    np.testing.assert_allclose(step_logits[:, 0], full[:, t], atol=1e-4)


def test_packed_segments_do_not_see_each_other(tiny):
  cfg, graphdef, params = tiny
  a = jax.random.randint(jax.random.key(2), (1, 6), 0, cfg.vocab_size)
  b = jax.random.randint(jax.random.key(3), (1, 5), 0, cfg.vocab_size)
  b2 = jax.random.randint(jax.random.key(4), (1, 5), 0, cfg.vocab_size)
  seg = jnp.array([[1] * 6 + [2] * 5])
  pos = jnp.array([list(range(6)) + list(range(5))])
  packed = T.apply(graphdef, params, jnp.concatenate([a, b], 1), pos, seg)
  alone = T.apply(graphdef, params, b)
  # The second document packed after the first == the document on its own.
  np.testing.assert_allclose(packed[:, 6:], alone, atol=1e-5)
  # And changing it leaves the first document's logits untouched.
  packed2 = T.apply(graphdef, params, jnp.concatenate([a, b2], 1), pos, seg)
  np.testing.assert_allclose(packed[:, :6], packed2[:, :6], atol=0)


def test_gqa_attention_equals_per_head_softmax():
  key = jax.random.split(jax.random.key(5), 3)
  q = jax.random.normal(key[0], (2, 5, 4, 8))
  k = jax.random.normal(key[1], (2, 7, 2, 8))
  v = jax.random.normal(key[2], (2, 7, 2, 8))
  mask = jax.random.bernoulli(jax.random.key(6), 0.7, (2, 5, 7)).at[:, :, 0].set(True)
  out, lse = attention.dot_product_attention(q, k, v, mask, return_lse=True)
  qn, kn, vn, mn = map(np.asarray, (q, k, v, mask))
  for h in range(4):
    kv = h // 2  # query heads are grouped consecutively per kv head
    s = np.einsum("btd,bsd->bts", qn[:, :, h], kn[:, :, kv]) / np.sqrt(8)
    s = np.where(mn, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out[:, :, h], np.einsum("bts,bsd->btd", p, vn[:, :, kv]),
                               atol=1e-5)
    m = s.max(-1)
    np.testing.assert_allclose(lse[:, :, h], m + np.log(np.exp(s - m[..., None]).sum(-1)),
                               rtol=1e-5)
  # jax's own attention (the peer) agrees.
  peer = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")
  np.testing.assert_allclose(out, peer, atol=1e-5)
  # A row with no visible key gives 0 and lse = -inf.
  out0, lse0 = attention.dot_product_attention(q, k, v, mask.at[1, 2].set(False),
                                               return_lse=True)
  assert np.all(out0[1, 2] == 0) and np.all(np.isneginf(lse0[1, 2]))


def test_loss_ignores_padding_and_segment_boundaries():
  logits = jax.random.normal(jax.random.key(7), (1, 6, 10))
  batch = {"tokens": jnp.array([[1, 2, 3, 4, 5, 0]]),
           "segment_ids": jnp.array([[1, 1, 1, 2, 2, 0]])}
  nll, count = T.lm_loss(logits, batch)
  assert float(count) == 3.0  # 1->2, 2->3, 4->5; not 3->4 (new segment), not padding
  lp = jax.nn.log_softmax(logits[0])
  want = -(lp[0, 2] + lp[1, 3] + lp[3, 5])
  np.testing.assert_allclose(nll, want, rtol=1e-6)


def test_bad_model_config():
  with pytest.raises(ValueError, match="multiple of n_kv_heads"):
    T.ModelConfig(n_heads=6, n_kv_heads=4)
  with pytest.raises(ValueError, match="unknown model size"):
    T.preset("huge")
  with pytest.raises(ValueError, match=r"unknown ModelConfig keys \['d_modle'\]"):
    T.ModelConfig.from_dict({"d_modle": 3})
  with pytest.raises(ValueError, match="model.n_layers=0 must be >= 1"):
    T.ModelConfig(n_layers=0)
  available = ", ".join(sorted(registry.MODELS))  # every registered model, listed in order
  assert "transformer" in available and "convnet" in available
  with pytest.raises(ValueError, match=f"unknown model 'bert'; available: {available}\\."):
    registry.from_dict({"name": "bert"})


def test_quantized_kernels_run_through_the_model(tiny):
  """A QuantizedWeight in place of a kernel goes through lowbit_matmul == dequantized dense."""
  cfg, graphdef, params = tiny
  k, n = params["layers"][0]["mlp"]["up_proj"]["kernel"].shape
  q = jax.random.randint(jax.random.key(8), (k, n), 0, 16)
  s = jax.random.uniform(jax.random.key(9), (k // 32, n), minval=0.005, maxval=0.02)
  z = jax.random.randint(jax.random.key(10), (k // 32, n), 4, 12)
  qw = qtensor.from_codes(q, s, z, bits=4, group_size=32, dim="oc", dtype=jnp.float32)
  quantized = jax.tree.map(lambda x: x, params)
  dense = jax.tree.map(lambda x: x, params)
  quantized["layers"][0]["mlp"]["up_proj"]["kernel"] = qw
  dense["layers"][0]["mlp"]["up_proj"]["kernel"] = qtensor.dequantize(qw)
  tokens = jax.random.randint(jax.random.key(11), (2, 8), 0, cfg.vocab_size)
  fwd = jax.jit(lambda p: T.apply(graphdef, p, tokens))
  np.testing.assert_allclose(fwd(quantized), fwd(dense), atol=1e-5)
  assert not np.allclose(fwd(quantized), fwd(params), atol=1e-3)  # it really is used


def test_weight_types_dispatch_through_the_registry():
  """Linear sends a registered weight type to its own matmul (how FP8 weights will join)."""

  @jax.tree_util.register_static
  class Doubled:  # a toy weight type: w stored halved
    def __init__(self, half):
      self.half = half

  layers.register_weight_type(Doubled, lambda x, w: x @ (2.0 * w.half))
  x = jnp.arange(6.0).reshape(2, 3)
  w = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_allclose(layers.dot(x, Doubled(w / 2)), x @ w)
  with pytest.raises(ValueError, match="already has a matmul"):
    layers.register_weight_type(Doubled, lambda x, w: x)
