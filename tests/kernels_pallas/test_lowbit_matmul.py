"""lowbit_matmul: Pallas kernels (interpret mode on CPU) vs reference vs a numpy oracle,
lowering for cuda and tpu via jax.export, and clear errors on bad input."""
import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import lowbit_matmul as lm
from core import qtensor

BITS = (2, 3, 4, 8)
DIMS = ("oc", "ic")
PALLAS = ("pallas_gpu", "pallas_tpu")


def _random_weight(rng, bits, dim, k, n, g, *, perm=False, scale_dtype=jnp.float32):
  """Random codes/scales/zeros; returns (QuantizedWeight, numpy pieces for the oracle)."""
  q = rng.integers(0, 2**bits, (k, n))
  gshape = qtensor.group_shape((k, n), g, dim)
  s = rng.uniform(0.005, 0.05, gshape).astype(np.float32)
  z = rng.integers(0, 2**bits, gshape)
  p = rng.permutation(k) if perm else None
  qw = qtensor.from_codes(jnp.asarray(q), jnp.asarray(s, scale_dtype), z, bits=bits,
                          group_size=g, dim=dim, dtype=jnp.float32, perm=p)
  s = np.asarray(jnp.asarray(s, scale_dtype).astype(jnp.float32))
  return qw, (q, s, z, p)


def _numpy_matmul(x, q, s, z, p, g, dim):
  """Oracle: dequantize in packed-row order with numpy, gather x by perm, matmul in f64."""
  axis = 0 if dim == "oc" else 1
  w = np.repeat(s, g, axis=axis).astype(np.float64) * (q - np.repeat(z, g, axis=axis))
  x = np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)
  if p is not None:
    x = x[..., p]
  return x @ w


def _rel_err(y, ref):
  y = np.asarray(jnp.asarray(y).astype(jnp.float32), np.float64)
  ref = np.asarray(jnp.asarray(ref).astype(jnp.float32), np.float64)
  return np.max(np.abs(y - ref)) / np.max(np.abs(ref))


# Fast matrix: every (bits, dim) once, the kernel alternating so each kernel sees every bit
# width; the activation shape cycles through odd M, batch dims and dtypes, covering decode
# (M <= 16, split-K) and prefill (M = 17). The complementary cases are marked slow.
_LEADS = [(1,), (3,), (17,), (2, 3)]
_CASES = [pytest.param(bits, dim, impl, _LEADS[(i // 2) % 4],
                       jnp.bfloat16 if (i // 2 + i // 8) % 2 else jnp.float32,
                       marks=[pytest.mark.slow] if (i + i // 4) % 2 else [])
          for i, (bits, dim, impl) in enumerate(
              (b, d, m) for b in BITS for d in DIMS for m in PALLAS)]


@pytest.mark.parametrize("bits,dim,impl,lead,dtype", _CASES)
def test_pallas_matches_reference(bits, dim, impl, lead, dtype):
  rng = np.random.default_rng(zlib.crc32(repr((bits, dim, impl)).encode()))
  qw, _ = _random_weight(rng, bits, dim, 256, 256, 128, perm=True)
  x = jnp.asarray(rng.normal(size=(*lead, 256)), dtype)
  y = lm.lowbit_matmul(x, qw, impl=impl, interpret=True)
  ref = lm.lowbit_matmul(x, qw, impl="reference")
  assert y.shape == (*lead, 256) and y.dtype == dtype
  assert _rel_err(y, ref) < (1e-5 if dtype == jnp.float32 else 1e-2)


@pytest.mark.parametrize("impl", PALLAS)
@pytest.mark.parametrize("dim,g,blocks", [
    ("oc", 256, None),  # group == chunk: one group per unpacked chunk
    ("oc", 512, dict(tk=256, chunk=128)),  # groups span several K tiles / chunks
    ("ic", 256, None),  # per-IC: N tiles of a whole 256-column group
])
def test_pallas_group_layouts(impl, dim, g, blocks):
  rng = np.random.default_rng(7)
  qw, _ = _random_weight(rng, 4, dim, 512, 256, g, scale_dtype=jnp.bfloat16)
  x = jnp.asarray(rng.normal(size=(5, 512)), jnp.float32)
  if blocks:  # override entries of the decode regime's table (M = 5 <= 16)
    keep = ("chunk",) if impl == "pallas_gpu" else ("tk", "chunk")
    blocks = dataclasses.replace(lm.BLOCK_SIZES[(impl, "decode")],
                                 **{k: blocks[k] for k in keep})
  y = lm.lowbit_matmul(x, qw, impl=impl, block_sizes=blocks, interpret=True)
  assert _rel_err(y, lm.reference(x, qw)) < 1e-5


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dim", DIMS)
def test_reference_matches_numpy(bits, dim):
  rng = np.random.default_rng(bits * 10 + len(dim))
  qw, (q, s, z, p) = _random_weight(rng, bits, dim, 128, 64, 32, perm=True)
  x = jnp.asarray(rng.normal(size=(2, 3, 128)), jnp.float32)
  y = lm.lowbit_matmul(x, qw, impl="reference")
  assert y.shape == (2, 3, 64)
  assert _rel_err(y, _numpy_matmul(x, q, s, z, p, 32, dim)) < 1e-5


def test_kernel_matches_numpy_with_bf16_scales():
  rng = np.random.default_rng(3)
  qw, (q, s, z, p) = _random_weight(rng, 3, "ic", 256, 256, 128, perm=True,
                                    scale_dtype=jnp.bfloat16)
  x = jnp.asarray(rng.normal(size=(4, 256)), jnp.float32)
  y = lm.lowbit_matmul(x, qw, impl="pallas_gpu", interpret=True)
  assert _rel_err(y, _numpy_matmul(x, q, s, z, p, 128, "ic")) < 1e-5


def test_auto_is_reference_on_cpu_and_falls_back_for_shapes_a_kernel_cannot_tile(monkeypatch):
  rng = np.random.default_rng(0)
  qw, _ = _random_weight(rng, 4, "oc", 128, 128, 64)
  x = jnp.asarray(rng.normal(size=(3, 128)), jnp.float32)
  assert jax.default_backend() == "cpu"
  np.testing.assert_array_equal(lm.lowbit_matmul(x, qw), lm.reference(x, qw))
  # On a TPU backend, group 64 is not lane-aligned: auto falls back to the reference (the
  # shared policy of kernels_pallas.common), while impl="pallas_tpu" says why it cannot.
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  np.testing.assert_array_equal(lm.lowbit_matmul(x, qw), lm.reference(x, qw))
  with pytest.raises(ValueError, match="impl='pallas_tpu' cannot run these shapes: .*"
                     "group_size % 128"):
    lm.lowbit_matmul(x, qw, impl="pallas_tpu", interpret=True)


def test_jit_and_empty_batch():
  rng = np.random.default_rng(1)
  qw, _ = _random_weight(rng, 4, "ic", 128, 128, 128)
  f = jax.jit(lambda x, w: lm.lowbit_matmul(x, w, impl="pallas_tpu", interpret=True))
  x = jnp.asarray(rng.normal(size=(2, 128)), jnp.float32)
  assert _rel_err(f(x, qw), lm.reference(x, qw)) < 1e-5
  assert f(jnp.zeros((0, 128)), qw).shape == (0, 128)


# --- lowering for the real targets (Triton / Mosaic IR generation runs on CPU) ---


def _export(impl, platform, qw, m):
  f = jax.jit(lambda x, w: lm.lowbit_matmul(x, w, impl=impl))
  # Triton custom calls carry no serialization-compatibility guarantee; we only lower.
  checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  exp = jax.export.export(f, platforms=[platform], disabled_checks=checks)(
      jax.ShapeDtypeStruct((m, qw.in_features), jnp.bfloat16), qw)
  return exp.mlir_module()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("impl,platform,target", [
    ("pallas_gpu", "cuda", "__gpu$xla.gpu.triton"), ("pallas_tpu", "tpu", "tpu_custom_call")])
def test_lowers_for_accelerators(bits, dim, impl, platform, target):
  qw = qtensor.from_codes(jnp.zeros((1024, 512), jnp.int32), *_zero_groups(dim, 1024, 512),
                          bits=bits, group_size=128, dim=dim, dtype=jnp.bfloat16)
  for m in (1, 64):  # decode and prefill block tables
    assert target in _export(impl, platform, qw, m)


def _zero_groups(dim, k, n):
  shape = qtensor.group_shape((k, n), 128, dim)
  return jnp.ones(shape, jnp.bfloat16), jnp.zeros(shape, jnp.uint8)


# --- bad input ---


def _qw(bits=4, dim="oc", k=256, n=256, g=128):
  return _random_weight(np.random.default_rng(0), bits, dim, k, n, g)[0]


@pytest.mark.parametrize("impl", ("reference",) + PALLAS)
def test_rejects_wrong_contraction_dim(impl):
  with pytest.raises(ValueError, match="in_features K=256"):
    lm.lowbit_matmul(jnp.ones((2, 255)), _qw(), impl=impl, interpret=True)


@pytest.mark.parametrize("impl", ("reference",) + PALLAS)
def test_rejects_inconsistent_bits_metadata(impl):
  qw = dataclasses.replace(_qw(bits=3), bits=4)  # 3-bit words labelled as 4-bit
  with pytest.raises(ValueError, match="packed has shape"):
    lm.lowbit_matmul(jnp.ones((2, 256)), qw, impl=impl, interpret=True)
  with pytest.raises(ValueError, match="bits=5 is not supported"):
    lm.lowbit_matmul(jnp.ones((2, 256)), dataclasses.replace(qw, bits=5), impl=impl)


def test_rejects_groups_that_do_not_fit_tiles():
  x = jnp.ones((1, 96))
  ic24 = _qw(bits=4, dim="ic", k=96, n=96, g=24)  # an N tile cannot sit in one group
  with pytest.raises(ValueError, match="group_size=24"):
    lm.lowbit_matmul(x, ic24, impl="pallas_gpu", interpret=True)
  with pytest.raises(ValueError, match="group_size % 128"):
    lm.lowbit_matmul(x, ic24, impl="pallas_tpu", interpret=True)
  oc48 = _qw(bits=3, dim="oc", k=96, n=96, g=48)  # 3-bit chunks need 32 | group
  with pytest.raises(ValueError, match="group_size=48"):
    lm.lowbit_matmul(x, oc48, impl="pallas_gpu", interpret=True)


def test_rejects_bad_options():
  x, qw = jnp.ones((1, 256)), _qw()
  with pytest.raises(ValueError, match="impl='triton'"):
    lm.lowbit_matmul(x, qw, impl="triton")
  gpu, tpu = lm.BLOCK_SIZES[("pallas_gpu", "decode")], lm.BLOCK_SIZES[("pallas_tpu", "decode")]
  with pytest.raises(ValueError, match=r"GpuBlocks.tn=96 must be a power of two >= 16"):
    dataclasses.replace(gpu, tn=96)
  with pytest.raises(ValueError, match=r"TpuBlocks.tk=200 must be a positive multiple of 128"):
    dataclasses.replace(tpu, tk=200)
  with pytest.raises(ValueError, match="block_sizes must be a GpuBlocks"):
    lm.lowbit_matmul(x, qw, impl="pallas_gpu", block_sizes=tpu, interpret=True)
  with pytest.raises(ValueError, match="block_sizes must be a TpuBlocks"):
    lm.lowbit_matmul(x, qw, impl="pallas_tpu", block_sizes=dict(tk=256), interpret=True)
  with pytest.raises(ValueError, match="float"):
    lm.lowbit_matmul(jnp.ones((1, 256), jnp.int32), qw, impl="reference")


# --- broader matrix (slow) ---


@pytest.mark.slow
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("impl", PALLAS)
@pytest.mark.parametrize("dtype", (jnp.float32, jnp.bfloat16))
def test_pallas_matches_numpy_broad(bits, dim, impl, dtype):
  rng = np.random.default_rng(zlib.crc32(repr((bits, dim, impl, str(dtype))).encode()))
  qw, (q, s, z, p) = _random_weight(rng, bits, dim, 768, 384, 128, perm=True)
  for lead in ((1,), (3,), (17,), (2, 9)):
    x = jnp.asarray(rng.normal(size=(*lead, 768)), dtype)
    y = lm.lowbit_matmul(x, qw, impl=impl, interpret=True)
    assert _rel_err(y, _numpy_matmul(x, q, s, z, p, 128, dim)) < (
        1e-5 if dtype == jnp.float32 else 1e-2)


@pytest.mark.parametrize("bits,dim", [(4, "oc"), (8, "oc"), (2, "ic"), (4, "ic")])
def test_prepared_tpu_weight_gives_the_same_results(bits, dim):
  """lm.prepare(qw, "tpu"): zeros in the scales' dtype (+ per-IC groups transposed) once at
  load time; every impl reads it exactly like the stored weight."""
  rng = np.random.default_rng(bits * 10 + len(dim))
  qw, _ = _random_weight(rng, bits, dim, 512, 256, 128, scale_dtype=jnp.bfloat16)
  prepared = lm.prepare(qw, "tpu")
  assert prepared.zeros.dtype == jnp.bfloat16
  assert (prepared.groups_t is not None) == (dim == "ic")
  if dim == "ic":
    assert prepared.groups_t.shape == (2, 2, 1, 512)
  assert lm.prepare(qw, "cuda") is qw  # the GPU kernel reads uint8 zeros itself
  x = jnp.asarray(rng.normal(size=(5, 512)), jnp.float32)
  for impl in ("reference", "pallas_tpu", "pallas_gpu"):
    want = lm.lowbit_matmul(x, qw, impl=impl, interpret=True)
    np.testing.assert_array_equal(lm.lowbit_matmul(x, prepared, impl=impl, interpret=True),
                                  want, err_msg=impl)
  bad = (qw.replace(groups_t=jnp.zeros((2, 2, 1, 512))) if dim == "oc"
         else prepared.replace(groups_t=prepared.groups_t[:, :1]))
  with pytest.raises(ValueError, match="only per-IC weights carry it"):
    bad.validate()
