"""Every Pallas kernel variant through the real compilers: XLA:GPU + Triton for an H200 and
XLA:TPU + Mosaic for TPU v5e, deviceless (core/targets.py), with the shipped BLOCK_SIZES.

Lowering alone (test_*_lowers_for_accelerators) never runs Triton's shared-memory check or
Mosaic's VMEM allocation; compiling does, so a block table that does not fit the chip fails
here. The negative tests prove it: a deliberately oversized block is rejected by each compiler.
"""
import dataclasses

import jax
import jax.numpy as jnp
import pytest

from benchmarks.lowbit_matmul import random_weight
from kernels_pallas import lowbit_matmul as lm
from kernels_pallas import prefix_attention as pa
from tests import aot

# target name -> (kernel impl, the device the kernel compiles for)
TARGETS = {"h200": "pallas_gpu", "v5e-4": "pallas_tpu"}
K, N = 4096, 11008  # Llama-7B's MLP up-projection (benchmarks/lowbit_matmul.py LLAMA_SHAPES)
D = 128
ATTN = dict(b=64, p=8192, s=256, hq=32)  # benchmarks/prefix_attention.py TARGET shape


def _compile(fn, target, *args):
  device = aot.devices(target)[0]
  return jax.jit(fn).lower(*aot.on(device, args)).compile()


def _abstract_weight(bits, dim, k=K, n=N):
  return jax.eval_shape(lambda: random_weight(jax.random.PRNGKey(0), k, n, bits, dim, 128))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bits", (2, 3, 4, 8))
@pytest.mark.parametrize("dim", ("oc", "ic"))
def test_lowbit_matmul_compiles_for_target(target, bits, dim):
  impl = TARGETS[target]
  qw = _abstract_weight(bits, dim)
  for m in (1, 16, 256):  # decode table (M <= 16) and prefill table
    x = jax.ShapeDtypeStruct((m, K), jnp.bfloat16)
    compiled = _compile(lambda x, w: lm.lowbit_matmul(x, w, impl=impl), target, x, qw)
    assert f"lowbit_matmul_{impl[7:]}_int{bits}_{dim}" in compiled.as_text(), (m, "no kernel")
    out = compiled.out_info
    assert (out.shape, out.dtype) == ((m, N), jnp.bfloat16)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sq", (1, 16), ids=("decode", "prefill"))
@pytest.mark.parametrize("hkv", (32, 8), ids=("mha", "gqa4"))
def test_prefix_and_suffix_attention_compile_for_target(target, sq, hkv):
  impl = TARGETS[target]
  b, p, s, hq = ATTN["b"], ATTN["p"], ATTN["s"], ATTN["hq"]
  q = jax.ShapeDtypeStruct((b, sq, hq, D), jnp.bfloat16)
  pk = jax.ShapeDtypeStruct((p, hkv, D), jnp.bfloat16)
  sk = jax.ShapeDtypeStruct((b, s, hkv, D), jnp.bfloat16)
  lengths = jax.ShapeDtypeStruct((b,), jnp.int32)

  def hydragen(q, pk, pv, sk, sv, lengths):
    levels = [pa.PrefixLevel(pk[None], pv[None], (b,))]
    return pa.shared_prefix_attention(q, levels, sk, sv, lengths, impl=impl)

  compiled = _compile(hydragen, target, q, pk, pk, sk, sk, lengths)
  text = compiled.as_text()
  # Both parts run the Pallas kernel (prefix batched over the 64 sequences, and the suffix).
  assert text.count("custom_call_target=\"__gpu$xla.gpu.triton\"" if impl == "pallas_gpu"
                    else "custom_call_target=\"tpu_custom_call\"") >= 2
  out, lse = compiled.out_info
  assert out.shape == (b, sq, hq, D) and lse.shape == (b, sq, hq)


def test_oversized_block_is_rejected_by_triton_shared_memory():
  # 256 x 512 tiles, 256-row chunks, 4 stages: far beyond the H200's 227 KiB per block.
  blocks = dataclasses.replace(lm.BLOCK_SIZES[("pallas_gpu", "prefill")], bm=256, tn=512,
                               chunk=256, num_stages=4)
  qw = _abstract_weight(4, "oc")
  x = jax.ShapeDtypeStruct((256, K), jnp.bfloat16)
  fn = lambda x, w: lm.lowbit_matmul(x, w, impl="pallas_gpu", block_sizes=blocks)
  _compile(lambda x, w: lm.lowbit_matmul(x, w, impl="pallas_gpu"), "h200", x, qw)  # shipped: ok
  with pytest.raises(Exception, match="(?i)shared memory"):
    _compile(fn, "h200", x, qw)


def test_oversized_block_is_rejected_by_mosaic_vmem():
  # A 512 x 4096 tile: its f32 accumulator (8 MiB) plus the double-buffered bf16 output
  # (2 x 4 MiB) already exceed v5e's 16 MiB of scoped VMEM. (Tiles this large also make
  # Mosaic slow, ~20 s here; larger ones take minutes before failing.)
  blocks = lm.TpuBlocks(bm=512, tn=4096, tk=512, chunk=256)
  qw = _abstract_weight(4, "oc", k=4096, n=4096)
  x = jax.ShapeDtypeStruct((512, 4096), jnp.bfloat16)
  fn = lambda x, w: lm.lowbit_matmul(x, w, impl="pallas_tpu", block_sizes=blocks)
  _compile(lambda x, w: lm.lowbit_matmul(x, w, impl="pallas_tpu"), "v5e-4", x, qw)  # shipped
  with pytest.raises(Exception, match="(?i)vmem"):
    _compile(fn, "v5e-4", x, qw)


@pytest.mark.parametrize("dim", ("oc", "ic"))
def test_prepared_lowbit_weight_needs_no_per_call_work_outside_the_tpu_kernel(dim):
  """Stored weights: XLA converts the uint8 zeros (and, per-IC, transposes scales and zeros)
  in a fusion before every call. lm.prepare(qw, "tpu") does it at load time: the compiled
  step is the kernel and data movement only (bitcasts, copies into VMEM)."""
  import re  # noqa: PLC0415
  qw = _abstract_weight(4, dim)
  prepared = jax.eval_shape(lambda w: lm.prepare(w, "tpu"), qw)
  x = jax.ShapeDtypeStruct((16, K), jnp.bfloat16)
  fn = lambda x, w: lm.lowbit_matmul(x, w, impl="pallas_tpu")

  def entry_ops(w):
    text = _compile(fn, "v5e-4", x, w).as_text()
    assert f"lowbit_matmul_tpu_int4_{dim}" in text
    return set(re.findall(r"= \S+ ([a-z-]+)\(", text[text.index("ENTRY"):]))

  assert "fusion" in entry_ops(qw)
  assert entry_ops(prepared) <= {"parameter", "bitcast", "copy", "copy-start", "copy-done",
                                 "custom-call"}
