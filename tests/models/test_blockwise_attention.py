"""Blockwise (FlashAttention-style) attention equals dense attention, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention
from models import transformer as T
from models.blockwise_attention import blockwise_attention


def _inputs(key, b=2, t=24, hq=4, hkv=2, d=8, dtype=jnp.float32):
  kq, kk, kv, ks, kc = jax.random.split(key, 5)
  q = jax.random.normal(kq, (b, t, hq, d), dtype)
  k = jax.random.normal(kk, (b, t, hkv, d), dtype)
  v = jax.random.normal(kv, (b, t, hkv, d), dtype)
  # packed rows: documents of random lengths, then padding (segment 0)
  lengths = jax.random.randint(ks, (b, 3), 1, t // 3 + 1)
  seg = np.zeros((b, t), np.int32)
  for r in range(b):
    pos = 0
    for n, ln in enumerate(np.asarray(lengths[r]), start=1):
      seg[r, pos:pos + ln] = n
      pos += ln
  cot = jax.random.normal(kc, (b, t, hq, d), jnp.float32)
  return q, k, v, jnp.asarray(seg), cot


def _dense(q, k, v, seg):
  return attention.dot_product_attention(q, k, v, attention.segment_mask(seg))


@pytest.mark.parametrize("block_q,block_k", [(8, 8), (4, 12), (16, 8), (7, 5)])
def test_values_and_gradients_match_dense_attention(block_q, block_k):
  q, k, v, seg, cot = _inputs(jax.random.key(0))
  want = _dense(q, k, v, seg)
  got = blockwise_attention(q, k, v, seg, block_q=block_q, block_k=block_k)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)
  g_want = jax.grad(loss(lambda q, k, v: _dense(q, k, v, seg)), argnums=(0, 1, 2))(q, k, v)
  g_got = jax.grad(loss(lambda q, k, v: blockwise_attention(
      q, k, v, seg, block_q=block_q, block_k=block_k)), argnums=(0, 1, 2))(q, k, v)
  for a, b_ in zip(g_got, g_want):
    np.testing.assert_allclose(a, b_, atol=2e-5, rtol=2e-5)


def test_padding_rows_give_zero_output_and_zero_gradient():
  q, k, v, seg, cot = _inputs(jax.random.key(1))
  seg = seg.at[:, -5:].set(0)
  out = blockwise_attention(q, k, v, seg, block_q=8, block_k=8)
  assert jnp.all(out[:, -5:] == 0)
  dq = jax.grad(lambda q: jnp.sum(blockwise_attention(q, k, v, seg, block_q=8, block_k=8)
                                  * cot))(q)
  assert jnp.all(dq[:, -5:] == 0) and jnp.all(jnp.isfinite(dq))


def test_no_score_matrix_in_the_compiled_step():
  """The point of the algorithm: no [T, T] buffer in the backward pass's temporaries."""
  b, t, h, d = 1, 1024, 2, 16
  q = jax.ShapeDtypeStruct((b, t, h, d), jnp.float32)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def step(fn):
    return jax.jit(jax.grad(lambda q, k, v, s: jnp.sum(fn(q, k, v, s)), argnums=(0, 1, 2)))
  dense = step(_dense).lower(q, q, q, seg).compile().memory_analysis()
  blockwise = step(lambda q, k, v, s: blockwise_attention(
      q, k, v, s, block_q=128, block_k=128)).lower(q, q, q, seg).compile().memory_analysis()
  scores_bytes = b * h * t * t * 4
  assert dense.temp_size_in_bytes >= scores_bytes
  assert blockwise.temp_size_in_bytes < scores_bytes / 4


def test_bad_block_sizes_and_heads_are_errors():
  q, k, v, seg, _ = _inputs(jax.random.key(2))
  with pytest.raises(ValueError, match="block sizes must be positive"):
    blockwise_attention(q, k, v, seg, block_q=0)
  with pytest.raises(ValueError, match="multiple of key/value heads"):
    blockwise_attention(q[:, :, :3], k, v, seg)


def test_transformer_with_blockwise_attention_equals_dense():
  """``model.attention_block`` changes memory, not the function: same logits and gradients."""
  dense_cfg = T.preset("tiny", n_layers=2)
  block_cfg = T.preset("tiny", n_layers=2, attention_block=8)
  graphdef, params = T.init(dense_cfg, seed=0)
  block_graphdef, block_params = T.init(block_cfg, seed=0)
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, block_params)
  assert all(jax.tree.leaves(same))  # the option adds no parameters
  tokens = jax.random.randint(jax.random.key(3), (2, 20), 0, dense_cfg.vocab_size)
  seg = jnp.array([[1] * 12 + [2] * 8, [1] * 17 + [0] * 3])
  pos = jnp.array([list(range(12)) + list(range(8)), list(range(17)) + [0] * 3])

  def loss(gd):
    return lambda p: jnp.mean(T.apply(gd, p, tokens, pos, seg) ** 2)
  np.testing.assert_allclose(T.apply(block_graphdef, params, tokens, pos, seg),
                             T.apply(graphdef, params, tokens, pos, seg), atol=1e-5)
  g_block = jax.grad(loss(block_graphdef))(params)
  g_dense = jax.grad(loss(graphdef))(params)
  for a, b in zip(jax.tree.leaves(g_block), jax.tree.leaves(g_dense)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
  with pytest.raises(ValueError, match="attention_block=-1 must be >= 0"):
    T.preset("tiny", attention_block=-1)
