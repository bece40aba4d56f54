"""COAT FP8 activations: the E4M3 codecs, the custom VJPs against exact gradients with a
closed-form error bound, and the real model (same loss, gradients within a stated bound)."""
import re

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


def test_fp8_matmul_is_the_product_of_the_dequantized_operands():
  """The GPU forward (E4M3 x E4M3, f32 accumulation, scales on the output) equals the exact
  product of the dequantized operands; on the CPU it is reachable directly."""
  rng = np.random.default_rng(3)
  x = _arr(rng.standard_normal((2, 8, 64)) * 3)
  w = _arr(rng.standard_normal((64, 32)) * 0.05)
  q, s = fp8_act.quantize_tensor(x)
  got = jax.jit(fp8_act.fp8_matmul, static_argnums=3)(q, s, w, jnp.float32)
  qw, sw = fp8_act.quantize_tensor(w)
  want = (np.asarray(fp8_act.dequantize_tensor(q, s, jnp.float32), np.float64)
          @ np.asarray(fp8_act.dequantize_tensor(qw, sw, jnp.float32), np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(got, np.asarray(x) @ np.asarray(w), rtol=1e-4)  # it is quantized


def _e4m3_dots(hlo_text: str) -> int:
  """Dots of the compiled HLO whose two operands are both E4M3 (operand types are looked up in
  the dot's own computation: optimized HLO prints only the operands' names)."""
  count, types = 0, {}
  for line in hlo_text.splitlines():
    if line.endswith("{"):  # a new computation
      types = {}
    m = re.match(r"\s*(?:ROOT )?%(\S+) = (\w+)\[", line)
    if not m:
      continue
    types[m.group(1)] = m.group(2)
    dot = re.search(r" dot\(%([^,]+), %([^)]+)\)", line)
    if dot and all(types.get(name) == "f8e4m3fn" for name in dot.groups()):
      count += 1
  return count


def test_h200_train_step_runs_the_forward_linears_as_e4m3_dots():
  """Lowered for the H200 (deviceless AOT), the FP8 model's forward linear layers are dots of
  two E4M3 operands (XLA:GPU's FP8 GEMMs: q/k/v, o, gate/up, down); the plain model has none."""
  from tests import aot  # noqa: PLC0415 (only these tests need the target compilers)
  dev = aot.devices("h200")[0]

  def e4m3_dots(fp8):
    cfg = preset("tiny", n_layers=1, mlp_dim=256, dtype="bfloat16", fp8_activations=fp8)
    graphdef, params = transformer.abstract_params(cfg)
    tok = jax.ShapeDtypeStruct((2, 128), jnp.int32)

    def loss(p, tok):
      return jnp.mean(transformer.apply(graphdef, p, tok))

    return _e4m3_dots(jax.jit(jax.grad(loss)).lower(*aot.on(dev, (params, tok))).compile()
                      .as_text())

  assert e4m3_dots(True) >= 4 and e4m3_dots(False) == 0


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


def test_compiled_train_step_keeps_1_5x_fewer_bytes_per_layer_per_sequence_on_h200():
  """The saving is in the compiled program (issue 13's target, at small lm_1b-like shapes):
  the bytes a layer keeps for the backward pass, per sequence, are the mixed difference of the
  compiled train step's temporaries over (layers, batch), which cancels the weights, their
  gradients and the logits. Blockwise attention, as lm_1b's report probe. XLA:CPU upcasts
  bf16, so this uses the H200 compiler (deviceless AOT). Before the backward-pass barriers of
  models/fp8_act.py and the dout-dependent zeros of models/blockwise_attention.py, XLA kept
  wide copies and early accumulators, and the ratio was 1.19x on lm_1b (1.70x now)."""
  from configs import lm_tiny  # noqa: PLC0415
  from train import aot  # noqa: PLC0415 (only this test needs the target compilers)

  def per_layer_per_sequence(fp8):
    temp = {}
    for n_layers in (1, 2):
      for batch in (1, 2):
        c = lm_tiny.get_config()
        c.model.update(d_model=512, n_heads=8, n_kv_heads=4, head_dim=64, mlp_dim=2048,
                       dtype="bfloat16", remat=False, fp8_activations=fp8,
                       attention_block=256, n_layers=n_layers)
        c.data.seq_len = 1024
        c.train.global_batch_size = batch
        temp[n_layers, batch] = aot.plan(c, "h200")["temp_bytes"]
    return temp[2, 2] - temp[1, 2] - temp[2, 1] + temp[1, 1]

  plain, fp8 = per_layer_per_sequence(False), per_layer_per_sequence(True)
  # bf16 keeps ~21 KiB per token per layer here, FP8 ~9.5 KiB (E4M3 + 1x16 scales). At
  # d_model 256 the GPU's E4M3 forward GEMMs keep ~1.5 KiB per token more (1.44x; lm_1b 1.70x).
  assert plain >= 1.5 * fp8, (plain, fp8)
