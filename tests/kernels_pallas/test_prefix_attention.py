"""Hydragen shared-prefix attention: kernels vs a plain-softmax oracle over the full KV.

Pallas kernels run in interpret mode on CPU; lowering for "cuda" and "tpu" is checked with
jax.export. Every input is fresh random data.
"""
import functools
import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import common
from kernels_pallas import prefix_attention as pa
from models import attention

KERNELS = ("pallas_gpu", "pallas_tpu")
# Small blocks so that tiny test shapes still walk several KV blocks, KV splits and row tiles.
SMALL_BLOCKS = {
    "reference": None,
    "pallas_gpu": pa.GpuBlocks(block_m=16, block_k=16, num_warps=4, num_stages=2,
                               min_programs=64),
    "pallas_tpu": pa.TpuBlocks(block_m=8, block_k=16),
}
TOL = {jnp.float32: dict(atol=2e-5, rtol=2e-5), jnp.bfloat16: dict(atol=2e-2, rtol=2e-2)}
_seed = iter(())


@pytest.fixture(autouse=True)
def _seed_per_test(request):
  """Random inputs depend on the test's name only, never on which tests ran before."""
  global _seed
  _seed = itertools.count(zlib.crc32(request.node.name.encode()) % 100_000 * 100)


def oracle(q, k_full, v_full, lengths, *, q_positions=None):
  """Plain softmax attention of each sequence over its own full KV (models.attention, the
  one dense jnp attention): ``(out f32, lse f32)``. Query s sits at ``q_positions[b, s]``
  (default ``lengths - Sq + s``) and sees keys ``<=`` it and ``< lengths``."""
  b, sq = q.shape[:2]
  lengths = jnp.asarray(lengths, jnp.int32)
  if q_positions is None:
    q_positions = lengths[:, None] - sq + jnp.arange(sq, dtype=jnp.int32)
  key = jnp.arange(k_full.shape[1])
  mask = (key[None, None, :] < lengths[:, None, None]) & (
      key[None, None, :] <= jnp.asarray(q_positions)[:, :, None])
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return attention.dot_product_attention(f32(q), f32(k_full), f32(v_full), mask,
                                         return_lse=True)


def _rand(shape, dtype=jnp.float32):
  rng = np.random.default_rng(next(_seed))
  return jnp.asarray(rng.standard_normal(shape), dtype)


def _close(actual, expected, dtype):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert not np.isnan(actual).any()
  np.testing.assert_allclose(actual, expected, **TOL[dtype])


def _numpy_attention(q, k, v, visible):
  """Closed form for one row set: q [M, D], k/v [T, D], visible bool [M, T]."""
  s = np.where(visible, q @ k.T / np.sqrt(q.shape[-1]), -np.inf)
  with np.errstate(divide="ignore", invalid="ignore"):
    m = s.max(-1, keepdims=True)
    p = np.where(visible, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
    l = p.sum(-1, keepdims=True)
    lse = np.where(l[:, 0] > 0, np.log(np.where(l > 0, l, 1))[:, 0] + m[:, 0], -np.inf)
  return (p / np.where(l > 0, l, 1)) @ v, lse


# ---------------------------------------------------------------------------------------
# Oracle and merge against closed forms.


def test_oracle_matches_closed_form_with_gqa_and_causal_positions():
  b, sq, hkv, g, d, t = 2, 3, 2, 2, 16, 9
  q, k, v = _rand((b, sq, hkv * g, d)), _rand((b, t, hkv, d)), _rand((b, t, hkv, d))
  lengths = np.array([9, 4])
  out, lse = oracle(q, k, v, jnp.asarray(lengths))
  q, k, v = map(np.asarray, (q, k, v))
  for bi in range(b):
    for hq in range(hkv * g):
      pos = lengths[bi] - sq + np.arange(sq)
      visible = (np.arange(t)[None] <= pos[:, None]) & (np.arange(t)[None] < lengths[bi])
      o, l = _numpy_attention(q[bi, :, hq], k[bi, :, hq // g], v[bi, :, hq // g], visible)
      np.testing.assert_allclose(out[bi, :, hq], o, atol=1e-5)
      np.testing.assert_allclose(lse[bi, :, hq], l, atol=1e-5)


def test_merge_is_exact_and_handles_empty_parts():
  m, d, t = 5, 8, 12
  q, k, v = (np.asarray(_rand(s)) for s in ((m, d), (t, d), (t, d)))
  split = np.zeros((m, t), bool)
  split[:, :5] = True  # A = keys 0..4, B = keys 5..11
  everything = np.ones((m, t), bool)
  o_all, lse_all = _numpy_attention(q, k, v, everything)
  o_a, lse_a = _numpy_attention(q, k, v, split)
  o_b, lse_b = _numpy_attention(q, k, v, ~split)
  out, lse = pa.merge_attention([o_a, o_b], [lse_a, lse_b])
  np.testing.assert_allclose(out, o_all, atol=1e-5)
  np.testing.assert_allclose(lse, lse_all, atol=1e-5)
  # An empty part (lse=-inf, out=0, even garbage out) drops out; all-empty stays empty.
  empty_lse = np.full((m,), -np.inf, np.float32)
  out, lse = pa.merge_attention([o_all, np.full((m, d), np.nan)], [lse_all, empty_lse])
  np.testing.assert_allclose(out, o_all, atol=1e-6)
  np.testing.assert_allclose(lse, lse_all, atol=1e-6)
  out, lse = pa.merge_attention([np.zeros((m, d))] * 3, [empty_lse] * 3)
  assert np.all(out == 0) and np.all(lse == -np.inf)
  # Large LSEs (natural log, max-subtracted) must not overflow.
  out, lse = pa.merge_attention([o_a, o_b], [lse_a + 500.0, lse_b + 500.0])
  np.testing.assert_allclose(out, o_all, atol=1e-5)
  np.testing.assert_allclose(lse, lse_all + 500.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Prefix and suffix attention, every impl.


def _matrix(default, full):
  """Default cases, plus the rest of the full matrix marked slow (interpret mode is slow)."""
  return list(default) + [pytest.param(*c, marks=pytest.mark.slow) for c in full
                          if c not in default]


@pytest.mark.parametrize("impl, g", _matrix(
    [("reference", 1), ("reference", 4), ("pallas_gpu", 2), ("pallas_tpu", 4)],
    [(i, g) for i in ("reference",) + KERNELS for g in (1, 2, 4)]))
def test_prefix_attention_matches_oracle(impl, g):
  b, sq, hkv, d, p, valid = 3, 2, 2, 128, 45, 37  # odd lengths, Sq != P, padded buffer
  q, pk, pv = _rand((b, sq, hkv * g, d)), _rand((p, hkv, d)), _rand((p, hkv, d))
  out, lse = pa.prefix_attention(q, pk, pv, prefix_len=valid, impl=impl, interpret=True,
                                 block_sizes=SMALL_BLOCKS[impl])
  assert out.dtype == jnp.float32 and lse.dtype == jnp.float32
  k_full = jnp.broadcast_to(pk, (b, p, hkv, d))
  v_full = jnp.broadcast_to(pv, (b, p, hkv, d))
  no_causal = jnp.full((b, sq), p, jnp.int32)  # queries come after the whole prefix
  ref_out, ref_lse = oracle(q, k_full, v_full, jnp.full((b,), valid),
                                            q_positions=no_causal)
  _close(out, ref_out, jnp.float32)
  _close(lse, ref_lse, jnp.float32)


@pytest.mark.parametrize("impl, sq", _matrix(
    [("reference", 3), ("pallas_gpu", 1), ("pallas_tpu", 3)],
    [(i, sq) for i in ("reference",) + KERNELS for sq in (1, 3)]))
def test_suffix_attention_matches_oracle_with_empty_and_ragged_lengths(impl, sq):
  b, hkv, g, d, s = 4, 2, 2, 128, 37
  q, k, v = _rand((b, sq, hkv * g, d)), _rand((b, s, hkv, d)), _rand((b, s, hkv, d))
  lengths = jnp.array([37, 0, 2, 20])  # full, empty, shorter than Sq, partial
  out, lse = pa.suffix_attention(q, k, v, lengths, impl=impl, interpret=True,
                                 block_sizes=SMALL_BLOCKS[impl])
  ref_out, ref_lse = oracle(q, k, v, lengths)
  _close(out, ref_out, jnp.float32)
  np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))
  assert np.all(np.asarray(lse[1]) == -np.inf) and np.all(np.asarray(out[1]) == 0)
  finite = np.isfinite(np.asarray(ref_lse))
  np.testing.assert_allclose(np.asarray(lse)[finite], np.asarray(ref_lse)[finite], atol=2e-5)


def test_suffix_attention_explicit_positions_and_non_causal():
  b, sq, hkv, d, s = 2, 2, 1, 16, 10
  q, k, v = _rand((b, sq, hkv, d)), _rand((b, s, hkv, d)), _rand((b, s, hkv, d))
  lengths, positions = jnp.array([10, 6]), jnp.array([[3, 7], [0, 5]])
  out, lse = pa.suffix_attention(q, k, v, lengths, q_positions=positions, impl="pallas_gpu",
                                 interpret=True)
  ref_out, ref_lse = oracle(q, k, v, lengths, q_positions=positions)
  _close(out, ref_out, jnp.float32)
  _close(lse, ref_lse, jnp.float32)
  out, lse = pa.suffix_attention(q, k, v, lengths, causal=False, impl="pallas_gpu",
                                 interpret=True)
  ref_out, ref_lse = oracle(q, k, v, lengths,
                                            q_positions=jnp.full((b, sq), s))
  _close(out, ref_out, jnp.float32)
  _close(lse, ref_lse, jnp.float32)


# ---------------------------------------------------------------------------------------
# Tree sharing.


def _random_tree(b, sq, hkv, g, d, level_specs, suffix_max, dtype):
  """level_specs: [(group_sizes, P)]; returns q, levels, suffix k/v/lengths, oracle."""
  rng = np.random.default_rng(next(_seed))
  q = _rand((b, sq, hkv * g, d), dtype)
  levels, parts_k, parts_v = [], [[] for _ in range(b)], [[] for _ in range(b)]
  for sizes, p in level_specs:
    k, v = _rand((len(sizes), p, hkv, d), dtype), _rand((len(sizes), p, hkv, d), dtype)
    lengths = rng.integers(1, p + 1, len(sizes))
    levels.append(pa.PrefixLevel(k, v, tuple(sizes), jnp.asarray(lengths, jnp.int32)))
    group = np.repeat(np.arange(len(sizes)), sizes)
    k_np, v_np = np.asarray(k, np.float32), np.asarray(v, np.float32)
    for bi in range(b):
      parts_k[bi].append(k_np[group[bi], :lengths[group[bi]]])
      parts_v[bi].append(v_np[group[bi], :lengths[group[bi]]])
  sk, sv = _rand((b, suffix_max, hkv, d), dtype), _rand((b, suffix_max, hkv, d), dtype)
  sk_np, sv_np = np.asarray(sk, np.float32), np.asarray(sv, np.float32)
  s_len = rng.integers(0, suffix_max + 1, b)
  s_len[0] = 0  # always one empty suffix
  full_k = [np.concatenate(parts_k[bi] + [sk_np[bi, :s_len[bi]]]) for bi in range(b)]
  full_v = [np.concatenate(parts_v[bi] + [sv_np[bi, :s_len[bi]]]) for bi in range(b)]
  t = max(len(x) for x in full_k)
  pad = lambda x: np.pad(x, ((0, t - len(x)), (0, 0), (0, 0)))
  lengths = np.array([len(x) for x in full_k])
  # Queries are the last Sq suffix tokens: causal among themselves, after every prefix. A
  # query with a negative suffix position (suffix shorter than Sq) still sees the prefixes.
  prefix_total = lengths - s_len
  positions = prefix_total[:, None] + s_len[:, None] - sq + np.arange(sq)
  positions = np.maximum(positions, prefix_total[:, None] - 1)
  want = oracle(q, jnp.asarray(np.stack([pad(x) for x in full_k])),
                jnp.asarray(np.stack([pad(x) for x in full_v])), jnp.asarray(lengths),
                q_positions=jnp.asarray(positions))
  return q, levels, sk, sv, jnp.asarray(s_len, jnp.int32), want


@pytest.mark.parametrize("impl, dtype", _matrix(
    [("reference", jnp.float32), ("pallas_gpu", jnp.bfloat16), ("pallas_tpu", jnp.float32)],
    [(i, t) for i in ("reference",) + KERNELS for t in (jnp.float32, jnp.bfloat16)]))
def test_shared_prefix_tree_matches_full_attention(impl, dtype):
  # system prompt -> two few-shot groups (2, 3) -> three question groups (1, 2, 2).
  b, sq, hkv, g, d = 5, 1, 2, 2, 128
  q, levels, sk, sv, s_len, (ref_out, ref_lse) = _random_tree(
      b, sq, hkv, g, d, [((5,), 29), ((2, 3), 18), ((1, 2, 2), 11)], 13, dtype)
  out, lse = pa.shared_prefix_attention(q, levels, sk, sv, s_len, impl=impl, interpret=True)
  assert out.dtype == dtype and lse.dtype == jnp.float32
  _close(out, ref_out, dtype)
  _close(lse, ref_lse, dtype)


@pytest.mark.slow
def test_tree_with_prefill_queries_and_mha():
  b, sq, hkv, g, d = 4, 3, 2, 1, 128
  q, levels, sk, sv, s_len, (ref_out, ref_lse) = _random_tree(
      b, sq, hkv, g, d, [((4,), 20), ((3, 1), 9)], 7, jnp.float32)
  for impl in KERNELS:
    out, lse = pa.shared_prefix_attention(q, levels, sk, sv, s_len, impl=impl,
                                          interpret=True)
    _close(out, ref_out, jnp.float32)
    _close(lse, ref_lse, jnp.float32)


# ---------------------------------------------------------------------------------------
# Dispatch, errors, lowering.


def test_auto_dispatch_is_reference_on_cpu_and_kernels_by_backend(monkeypatch):
  """One policy (kernels_pallas.common): auto -> the backend's kernel when it can tile the
  shapes, else the reference (with a warning); an explicit impl that cannot -> an error."""
  q, k = _rand((2, 1, 4, 96)), _rand((8, 2, 96))
  resolve = lambda impl, d: common.resolve_impl(
      impl, kernel="prefix_attention", why_not=lambda i: pa._why_not(i, d, 2, None))
  assert resolve("auto", 128) == "reference"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert resolve("auto", 128) == "pallas_gpu"
  assert resolve("auto", 96) == "reference"  # Triton needs a power of two
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert resolve("auto", 128) == "pallas_tpu"
  assert resolve("auto", 64) == "reference"  # Mosaic tiles 128 lanes
  with pytest.raises(ValueError, match="impl='cuda' is not one of"):
    resolve("cuda", 128)
  with pytest.raises(ValueError, match="impl='pallas_gpu' cannot run these shapes: .*"
                     "power-of-two head_dim"):
    pa.prefix_attention(q, k, k, impl="pallas_gpu", interpret=True)
  with pytest.raises(ValueError, match="block_sizes must be a GpuBlocks"):
    pa.prefix_attention(q[..., :64], k[..., :64], k[..., :64], impl="pallas_gpu",
                        interpret=True, block_sizes=dict(block_m=16))
  with pytest.raises(ValueError, match=r"GpuBlocks.block_k=24 must be a power of two"):
    pa.GpuBlocks(block_m=16, block_k=24, num_warps=4, num_stages=2, min_programs=1)
  with pytest.raises(ValueError, match=r"TpuBlocks.block_k=100 must be a positive multiple of "
                     r"8"):
    pa.TpuBlocks(block_m=8, block_k=100)


def test_bad_inputs_raise_clear_errors():
  q, k = _rand((4, 1, 8, 32)), _rand((16, 2, 32))
  with pytest.raises(ValueError, match="head_dim"):
    pa.prefix_attention(q, _rand((16, 2, 16)), _rand((16, 2, 16)))
  with pytest.raises(ValueError, match="multiple"):
    pa.prefix_attention(q, _rand((16, 3, 32)), _rand((16, 3, 32)))
  with pytest.raises(ValueError, match="same shape"):
    pa.prefix_attention(q, k, _rand((15, 2, 32)))
  with pytest.raises(ValueError, match="group_sizes"):
    pa.prefix_attention(q, _rand((2, 16, 2, 32)), _rand((2, 16, 2, 32)), group_sizes=(1, 2))
  with pytest.raises(ValueError, match="group_sizes"):
    pa.prefix_attention(q, _rand((2, 16, 2, 32)), _rand((2, 16, 2, 32)))
  with pytest.raises(ValueError, match="kv_lengths"):
    pa.suffix_attention(q, _rand((4, 8, 2, 32)), _rand((4, 8, 2, 32)), jnp.zeros((3,)))
  with pytest.raises(ValueError, match="PrefixLevel"):
    pa.shared_prefix_attention(q, [(k, k)], _rand((4, 8, 2, 32)), _rand((4, 8, 2, 32)),
                               jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="power-of-two"):
    pa.prefix_attention(_rand((2, 1, 2, 24)), _rand((8, 2, 24)), _rand((8, 2, 24)),
                        impl="pallas_gpu")
  with pytest.raises(ValueError, match="merge_attention"):
    pa.merge_attention([jnp.zeros((2, 4))], [jnp.zeros((3,))])


_TARGETS = {"cuda": ("pallas_gpu", "__gpu$xla.gpu.triton"),
            "tpu": ("pallas_tpu", "tpu_custom_call")}


@pytest.mark.parametrize("platform", ("cuda", "tpu"))
@pytest.mark.parametrize("kernel", ("prefix", "suffix", "tree"))
@pytest.mark.parametrize("sq", (1, 16))
def test_lowers_for_accelerators(platform, kernel, sq):
  impl, target = _TARGETS[platform]
  b, hq, hkv, d = 8, 8, 2, 128
  sds = jax.ShapeDtypeStruct
  q = sds((b, sq, hq, d), jnp.bfloat16)
  suffix = (sds((b, 300, hkv, d), jnp.bfloat16),) * 2 + (sds((b,), jnp.int32),)
  if kernel == "prefix":
    fn = functools.partial(pa.prefix_attention, impl=impl)
    args = (q, sds((1000, hkv, d), jnp.bfloat16), sds((1000, hkv, d), jnp.bfloat16))
  elif kernel == "suffix":
    fn, args = functools.partial(pa.suffix_attention, impl=impl), (q,) + suffix
  else:
    def fn(q, k0, v0, k1, v1, lengths, sk, sv, s_len):
      levels = [pa.PrefixLevel(k0, v0, (8,)), pa.PrefixLevel(k1, v1, (3, 5), lengths)]
      return pa.shared_prefix_attention(q, levels, sk, sv, s_len, impl=impl)
    args = (q, sds((1, 1000, hkv, d), jnp.bfloat16), sds((1, 1000, hkv, d), jnp.bfloat16),
            sds((2, 200, hkv, d), jnp.bfloat16), sds((2, 200, hkv, d), jnp.bfloat16),
            sds((2,), jnp.int32)) + suffix
  exported = jax.export.export(
      jax.jit(fn), platforms=[platform],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)])(*args)
  assert target in exported.mlir_module()
  assert exported.out_avals[0].shape == (b, sq, hq, d)
