"""COAT FP8 activations: the E4M3 codecs, the custom VJPs against exact gradients with a
closed-form error bound, and the real model (same loss, gradients within a stated bound)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import fp8_act, transformer
from models.configs import preset


def _arr(x):
  return jnp.asarray(np.asarray(x, np.float32))


def test_codecs_round_trip_and_zero_inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 64)) * np.exp(rng.uniform(-2, 2, (4, 64)))
  q, s = jax.jit(fp8_act.quantize_tensor)(_arr(x))
  y = np.asarray(fp8_act.dequantize_tensor(q, s, jnp.float32))
  # E4M3: half-ulp 2^-4 relative in the normal range, 2^-10 * scale absolute below it.
  assert np.all(np.abs(y - x) <= 2**-4 * np.abs(x) + 2**-10 * float(s) + 1e-7)
  q, s = jax.jit(fp8_act.quantize_1x16)(_arr(x))
  assert s.shape == (4, 4)
  y = np.asarray(fp8_act.dequantize_1x16(q, s, jnp.float32))
  s_el = np.repeat(np.asarray(s), 16, axis=1)
  assert np.all(np.abs(y - x) <= 2**-4 * np.abs(x) + 2**-10 * s_el + 1e-7)
  for quant, deq in ((fp8_act.quantize_tensor, fp8_act.dequantize_tensor),
                     (fp8_act.quantize_1x16, fp8_act.dequantize_1x16)):
    q, s = quant(jnp.zeros((2, 32)))
    np.testing.assert_array_equal(np.asarray(deq(q, s, jnp.float32)), 0.0)
  with pytest.raises(ValueError, match="divisible by 16"):
    fp8_act.quantize_1x16(jnp.ones((2, 20)))


def test_dots_vjp_dx_exact_and_dw_within_the_e4m3_bound():
  rng = np.random.default_rng(1)
  x = _arr(rng.standard_normal((3, 8, 32)))
  w1, w2 = _arr(rng.standard_normal((32, 16))), _arr(rng.standard_normal((32, 24)))
  ct1, ct2 = _arr(rng.standard_normal((3, 8, 16))), _arr(rng.standard_normal((3, 8, 24)))

  def loss(f):
    return lambda x, ws: sum(jnp.sum(o * c) for o, c in zip(f(x, ws), (ct1, ct2)))

  exact = lambda x, ws: tuple(x @ w for w in ws)
  (v8, (dx8, dw8)) = jax.jit(jax.value_and_grad(loss(fp8_act.dots), argnums=(0, 1)))(x, (w1, w2))
  (v, (dx, dw)) = jax.jit(jax.value_and_grad(loss(exact), argnums=(0, 1)))(x, (w1, w2))
  np.testing.assert_allclose(v8, v, rtol=1e-6)          # forward unquantized
  np.testing.assert_allclose(dx8, dx, rtol=1e-5, atol=1e-5)  # dx = g W^T needs no x
  scale = float(jnp.max(jnp.abs(x))) / 448
  err_x = 2**-4 * np.abs(np.asarray(x)) + 2**-10 * scale  # per-element bound on |x^ - x|
  for got, want, ct in zip(dw8, dw, (ct1, ct2)):
    bound = np.einsum("btk,btn->kn", err_x, np.abs(np.asarray(ct))) + 1e-5
    assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= bound)
    assert not np.allclose(got, want, rtol=1e-6)  # the FP8 path is really taken


def _grads(fp8):
  cfg = preset("tiny", n_layers=1, mlp_dim=256, fp8_activations=fp8)
  graphdef, params = transformer.init(cfg, seed=0)
  rng = np.random.default_rng(2)
  tok = jnp.asarray(rng.integers(3, 300, (4, 64)), jnp.int32)
  batch = {"tokens": tok, "segment_ids": jnp.ones_like(tok),
           "positions": jnp.broadcast_to(jnp.arange(64), tok.shape)}

  def loss(p):
    logits = transformer.apply(graphdef, p, tok, batch["positions"], batch["segment_ids"])
    total, count = transformer.lm_loss(logits, batch)
    return total / count

  return jax.jit(jax.value_and_grad(loss))(params)


def test_real_model_same_loss_and_gradients_within_8_percent():
  l0, g0 = _grads(False)
  l1, g1 = _grads(True)
  assert float(l0) == float(l1)  # the forward pass is the unquantized one
  rels = {jax.tree_util.keystr(p): float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
          for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1))}
  # Per-tensor E4M3 inputs: each saved element is off by <= 2^-4 relative (6.25%); the
  # weight gradients average such errors over tokens, so their relative L2 error is below it.
  assert max(rels.values()) < 0.08, rels
  assert min(rels.values()) > 1e-4, rels  # and the FP8 residuals are really used


def _mlp_stack(n_layers: int, fp8: bool):
  """``n_layers`` residual SwiGLU MLPs, the FP8 path (models/fp8_act) or the plain one."""
  def loss(x, ws):
    for w1, w2, w3 in ws[:n_layers]:
      if fp8:
        a, b = fp8_act.dots(x, (w1, w2))
        x = x + fp8_act.dots(fp8_act.swiglu(a, b), (w3,))[0]
      else:
        x = x + (jax.nn.silu(x @ w1) * (x @ w2)) @ w3
    return jnp.sum(x.astype(jnp.float32) ** 2)
  return jax.grad(loss, argnums=(0, 1))


def test_compiled_backward_keeps_fewer_bytes_per_layer_on_the_h200_compiler():
  """The saving is in the compiled program: bytes kept per extra layer (the slope of the
  temporaries over depth) are smaller with FP8 on. XLA:CPU upcasts bf16 matmuls, so the check
  uses the H200 compiler (deviceless AOT)."""
  from tests import aot  # noqa: PLC0415 (only this test needs the target compilers)
  dev = aot.devices("h200")[0]
  t, d, m = 4096, 256, 1024
  x = jax.ShapeDtypeStruct((t, d), jnp.bfloat16)
  ws = [tuple(jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in ((d, m), (d, m), (m, d)))] * 4

  def temp(n_layers, fp8):
    step = jax.jit(_mlp_stack(n_layers, fp8))
    compiled = step.lower(*aot.on(dev, (x, ws[:n_layers]))).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  plain, fp8 = [(temp(4, f) - temp(2, f)) / 2 for f in (False, True)]
  # Kept per layer: plain bf16 x, x@w1, x@w2, h = 26 MiB; FP8 E4M3 + scales ~ 16 MiB; both
  # plus the layer's weight gradients.
  assert fp8 < 0.85 * plain, (plain, fp8)
