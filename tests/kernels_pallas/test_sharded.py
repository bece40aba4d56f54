"""kernels_pallas.sharded: the Pallas kernels per shard of a mesh.

On the 8 fake CPU devices the kernels run in interpret mode inside ``shard_map`` and must
equal the unsharded jnp reference; layouts the packing or the kernels cannot split give a
clear error (explicit impl) or the reference with a warning (``auto``). Compiled for 8xH200
and v5e-8 (deviceless), the sharded calls keep the kernel custom call and need no all-gather.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from core import qtensor, sharding
from kernels_pallas import common
from kernels_pallas import lowbit_matmul as lm
from kernels_pallas import prefix_attention as pa
from kernels_pallas import sharded
from models import transformer as T
from benchmarks.lowbit_matmul import random_weight
from tests import aot


def _mesh(data, tensor, devices=None):
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((data, 1, tensor), ("data", "fsdp", "tensor"), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _weight(seed, bits, dim, k, n, g, perm=False):
  rng = np.random.default_rng(seed)
  gshape = qtensor.group_shape((k, n), g, dim)
  return qtensor.from_codes(
      jnp.asarray(rng.integers(0, 2**bits, (k, n)), jnp.int32),
      jnp.asarray(rng.uniform(0.005, 0.05, gshape), jnp.float32),
      rng.integers(0, 2**bits, gshape), bits=bits, group_size=g, dim=dim, dtype=jnp.float32,
      perm=rng.permutation(k) if perm else None)


def _x(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --------------------------------------------------------------------------------------------
# Low-bit matmul on the CPU mesh (interpret mode).

# (impl, K, N, group size): the GPU kernel at small tiles, the TPU kernel at its 128-lane
# minimum per shard.
_LOWBIT_SHAPES = {"pallas_gpu": (128, 256, 32), "pallas_tpu": (512, 512, 128)}


# Each kernel sees both bit widths, both group dims and both parallel layouts.
@pytest.mark.parametrize("impl,parallel,bits,dim", [
    ("pallas_gpu", "column", 4, "oc"), ("pallas_gpu", "column", 2, "ic"),
    ("pallas_gpu", "row", 2, "oc"), ("pallas_gpu", "row", 4, "ic"),
    ("pallas_tpu", "column", 2, "oc"), ("pallas_tpu", "column", 4, "ic"),
    ("pallas_tpu", "row", 4, "oc"), ("pallas_tpu", "row", 2, "ic")])
def test_sharded_lowbit_matmul_equals_unsharded_reference(impl, parallel, bits, dim):
  k, n, g = _LOWBIT_SHAPES[impl]
  if parallel == "row" and impl == "pallas_tpu":
    k, n = 1024, 128  # a K shard of 256 rows still holds whole 128-row groups
  mesh = _mesh(2, 4)
  qw = _weight(bits * 10 + len(dim), bits, dim, k, n, g)
  if impl == "pallas_tpu":  # as the decoder holds it on a TPU: per-IC groups_t split too
    qw = lm.prepare(qw, "tpu")
  x = _x(1, (4, 3, k))  # rows 4 over data, a middle dim, K
  axes = (dict(n_axes="tensor") if parallel == "column" else dict(k_axes="tensor"))
  y = jax.jit(lambda x, w: sharded.lowbit_matmul(x, w, mesh=mesh, row_axes="data", impl=impl,
                                                 interpret=True, **axes))(x, qw)
  want = lm.reference(x, qw)
  assert y.shape == want.shape == (4, 3, n)
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=2e-5, atol=2e-5)
  want_spec = P("data", None, "tensor") if parallel == "column" else P("data", None, None)
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, want_spec), y.ndim)


def test_sharded_lowbit_matmul_column_parallel_with_perm_and_3_bits():
  mesh = _mesh(2, 4)
  qw = _weight(3, 3, "oc", 128, 128, 32, perm=True)  # act-order perm: replicated, K whole
  x = _x(2, (2, 128))
  y = sharded.lowbit_matmul(x, qw, mesh=mesh, row_axes="data", n_axes="tensor",
                            impl="pallas_gpu", interpret=True)
  np.testing.assert_allclose(np.asarray(y), np.asarray(lm.reference(x, qw)), rtol=2e-5,
                             atol=2e-5)


@pytest.mark.parametrize("case,match", [
    (dict(bits=4, dim="oc", g=64, k_axes="tensor"), "per-OC groups of 64 input rows would "
                                                     "straddle the 4 K shards of 32 rows"),
    (dict(bits=3, dim="oc", g=32, k_axes="tensor"), "two bit planes"),
    (dict(bits=4, dim="ic", g=64, n_axes="tensor"), "per-IC groups of 64 output columns "
                                                     "would straddle"),
    (dict(bits=4, dim="oc", g=32, n_axes="tensor", perm=True, k_axes="data"), "act-order"),
    (dict(bits=4, dim="oc", g=32, n_axes="tensor", rows=3), "leading dim \\(3\\) does not "
                                                            "split into 2 row shards"),
])
def test_sharded_lowbit_matmul_layout_errors(case, match):
  mesh = _mesh(2, 4)
  qw = _weight(0, case["bits"], case["dim"], 128, 128, case["g"], perm=case.get("perm", False))
  rows = case.get("rows", 2)
  x = _x(0, (rows, 128))
  axes = {a: case[a] for a in ("k_axes", "n_axes") if a in case}
  row_axes = None if "k_axes" in case and case["k_axes"] == "data" else "data"
  with pytest.raises(ValueError, match=match):
    sharded.lowbit_matmul(x, qw, mesh=mesh, row_axes=row_axes, impl="pallas_gpu",
                          interpret=True, **axes)
  # "auto" on a GPU target: the same reason as one warning, and the (exact) reference.
  with common.target_backend("gpu", interpret=True):
    y = sharded.lowbit_matmul(x, qw, mesh=mesh, row_axes=row_axes, **axes)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(lm.reference(x, qw)))
  assert any(kernel == "lowbit_matmul (sharded)" and re.search(match, reason)
             for kernel, reason in common._warned)


def test_sharded_lowbit_matmul_bad_axes_are_errors():
  mesh = _mesh(2, 4)
  qw = _weight(0, 4, "oc", 128, 128, 32)
  x = _x(0, (2, 128))
  with pytest.raises(ValueError, match="does not have"):
    sharded.lowbit_matmul(x, qw, mesh=mesh, n_axes="model")
  with pytest.raises(ValueError, match="'tensor' is in both"):
    sharded.lowbit_matmul(x, qw, mesh=mesh, k_axes="tensor", n_axes=("data", "tensor"))


# --------------------------------------------------------------------------------------------
# Hydragen attention on the CPU mesh (interpret mode).


def _levels(rng, b, hkv, d, dtype):
  """Three levels on a batch of 8 over 4 data shards of 2 sequences: one group spanning all
  shards (replicated), groups of 4 spanning two shards each (gathered per shard), groups of
  2 (one per shard), with valid lengths."""
  out = []
  for sizes, p in (((b,), 24), ((4, 4), 16), ((2, 2, 2, 2), 8)):
    kv = [jnp.asarray(rng.normal(size=(len(sizes), p, hkv, d)), dtype) for _ in range(2)]
    lengths = jnp.asarray(rng.integers(1, p + 1, len(sizes)), jnp.int32)
    out.append(pa.PrefixLevel(kv[0], kv[1], sizes, lengths))
  return out


# MHA and GQA, decode and prefill, each kernel (interpret mode is slow: three cases).
@pytest.mark.parametrize("impl,head_dim,hkv,sq", [
    ("pallas_gpu", 16, 4, 1), ("pallas_gpu", 16, 2, 2), ("pallas_tpu", 128, 2, 2)],
    ids=("gpu-mha-decode", "gpu-gqa-prefill", "tpu-gqa-prefill"))
def test_sharded_hydragen_equals_unsharded_reference(impl, head_dim, hkv, sq):
  b, hq, s = 8, 4, 16
  rng = np.random.default_rng(hkv * 10 + sq)
  mesh = _mesh(4, 2)  # batch over data=4, heads over tensor=2
  q = jnp.asarray(rng.normal(size=(b, sq, hq, head_dim)), jnp.float32)
  sk, sv = (jnp.asarray(rng.normal(size=(b, s, hkv, head_dim)), jnp.float32) for _ in "kv")
  lengths = jnp.asarray(rng.integers(sq, s + 1, b), jnp.int32)
  levels = _levels(rng, b, hkv, head_dim, jnp.float32)

  out, lse = jax.jit(lambda *a: sharded.shared_prefix_attention(
      *a, mesh=mesh, batch_axes="data", head_axes="tensor", impl=impl, interpret=True))(
          q, levels, sk, sv, lengths)
  want_out, want_lse = pa.shared_prefix_attention(q, levels, sk, sv, lengths, impl="reference")
  np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(lse), np.asarray(want_lse), rtol=1e-5, atol=1e-5)
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, "tensor")), 4)


def test_sharded_hydragen_layout_errors():
  mesh = _mesh(4, 2)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(8, 1, 4, 16)), jnp.float32)
  sk = jnp.asarray(rng.normal(size=(8, 4, 2, 16)), jnp.float32)
  lengths = jnp.full((8,), 4, jnp.int32)
  run = lambda q, levels, sk, **kw: sharded.shared_prefix_attention(
      q, levels, sk, sk, lengths[:q.shape[0]], mesh=mesh, impl="pallas_gpu", interpret=True,
      **kw)
  uneven = pa.PrefixLevel(sk[:2], sk[:2], (3, 5))  # shards of 2: patterns (2,), (1, 1), ...
  with pytest.raises(ValueError, match="different group patterns"):
    run(q, [uneven], sk, batch_axes="data", head_axes="tensor")
  mqa = sk[:, :, :1]  # one kv head cannot split over tensor=2
  with pytest.raises(ValueError, match="kv heads \\(1\\) must both split into 2"):
    run(q, [], mqa, batch_axes="data", head_axes="tensor")
  with pytest.raises(ValueError, match="batch B=6 does not split into 4"):
    run(q[:6], [], sk[:6], batch_axes="data")
  # "auto" on a GPU target: one warning and the reference, equal to the unsharded one.
  with common.target_backend("gpu", interpret=True):
    out, _ = sharded.shared_prefix_attention(q, [uneven], sk, sk, lengths, mesh=mesh,
                                             batch_axes="data", head_axes="tensor")
  want, _ = pa.shared_prefix_attention(q, [uneven], sk, sk, lengths, impl="reference")
  np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


# --------------------------------------------------------------------------------------------
# Compiled for 8 H200s and a v5e-8 (deviceless): the kernel per shard, no gathered operands.

# target -> (platform, kernel name prefix in the HLO)
TARGETS = {"8xh200": ("cuda", "gpu"), "v5e-8": ("tpu", "tpu")}


def _placed(tree, mesh, spec):
  sh = NamedSharding(mesh, spec)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), tree)


def _collectives(text):
  return sorted(set(re.findall(r"\b(all-gather|all-reduce|all-to-all|collective-permute|"
                               r"reduce-scatter)(?:-start)?\(", text)))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("parallel", ("column", "row"))
def test_sharded_lowbit_matmul_compiles_per_shard_for_target(target, parallel):
  platform, kind = TARGETS[target]
  mesh = _mesh(2, 4, aot.devices(target))
  k = n = 4096
  qw = jax.eval_shape(lambda: random_weight(jax.random.PRNGKey(0), k, n, 4, "oc", 128))
  column = parallel == "column"
  qw = _placed(qw, mesh, P(None, "tensor") if column else P("tensor", None))
  x = _placed(jax.ShapeDtypeStruct((16, k), jnp.bfloat16), mesh,
              P("data", None) if column else P("data", "tensor"))
  axes = dict(n_axes="tensor") if column else dict(k_axes="tensor")
  fn = lambda x, w: sharded.lowbit_matmul(x, w, mesh=mesh, row_axes="data", **axes)
  with common.target_backend(platform):
    compiled = jax.jit(fn).lower(x, qw).compile()
  text = compiled.as_text()
  assert f"lowbit_matmul_{kind}_int4_oc" in text
  # Column-parallel needs no collective; row-parallel only the psum of the [8, 4096] partial
  # products. Never a gather of the weight (or of x).
  assert _collectives(text) == ([] if column else ["all-reduce"]), _collectives(text)
  # The kernel sees the local weight: a quarter of the packed words.
  local_words = f"s32[{k * 4 // 32 // (1 if column else 4)},{n // (4 if column else 1)}]"
  assert local_words in text
  out = compiled.out_info
  assert out.shape == (16, n) and out.sharding.is_equivalent_to(
      NamedSharding(mesh, P("data", "tensor" if column else None)), 2)


@pytest.mark.parametrize("target", TARGETS)
def test_sharded_hydragen_compiles_per_shard_for_target(target):
  platform, kind = TARGETS[target]
  mesh = _mesh(2, 4, aot.devices(target))
  b, p, s, hq, hkv, d = 16, 1024, 128, 32, 8, 128
  sds = jax.ShapeDtypeStruct
  q = _placed(sds((b, 1, hq, d), jnp.bfloat16), mesh, P("data", None, "tensor"))
  pk = _placed(sds((1, p, hkv, d), jnp.bfloat16), mesh, P(None, None, "tensor"))
  sk = _placed(sds((b, s, hkv, d), jnp.bfloat16), mesh, P("data", None, "tensor"))
  lengths = _placed(sds((b,), jnp.int32), mesh, P("data"))

  def hydragen(q, pk, pv, sk, sv, lengths):
    levels = [pa.PrefixLevel(pk, pv, (b,))]  # one group over both data shards
    return sharded.shared_prefix_attention(q, levels, sk, sv, lengths, mesh=mesh,
                                           batch_axes="data", head_axes="tensor")

  with common.target_backend(platform):
    compiled = jax.jit(hydragen).lower(q, pk, pk, sk, sk, lengths).compile()
  text = compiled.as_text()
  assert text.count(f"prefix_attention_{kind}") >= 2  # prefix and suffix kernels
  assert _collectives(text) == [], _collectives(text)  # no gathered q, prefix or suffix KV
  out, lse = compiled.out_info
  assert out.shape == (b, 1, hq, d) and lse.shape == (b, 1, hq)
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, "tensor")), 4)


# --------------------------------------------------------------------------------------------
# The model's hook (models.layers.dot): a quantized decoder under axis rules on a mesh.


def test_quantized_model_on_a_mesh_runs_the_lowbit_kernel_per_shard():
  """data=2 x tensor=2: q/k/v and gate/up column-parallel, o/down row-parallel (psum), both
  group dims; equal to the unsharded reference forward."""
  cfg = T.preset("tiny", n_layers=1, vocab_size=128, d_model=64, n_heads=4, n_kv_heads=2,
                 head_dim=16, mlp_dim=128)
  graphdef, params = T.init(cfg, seed=0)
  for block, bits, dim in (("attn", 4, "oc"), ("mlp", 2, "ic")):
    for i, proj in enumerate(params["layers"][0][block].values()):
      k, n = proj["kernel"].shape
      proj["kernel"] = _weight(i, bits, dim, k, n, 16)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (4, 8)), jnp.int32)
  # No mesh, CPU: the jnp reference. (Its own jit: a trace is cached per function, and the
  # contexts below are not part of the cache key.)
  want = jax.jit(lambda p, t: T.apply(graphdef, p, t))(params, tokens)

  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  fwd = jax.jit(lambda p, t: T.apply(graphdef, p, t))
  with common.target_backend("gpu", interpret=True), sharding.axis_rules(
      sharding.DEFAULT_RULES, mesh):
    jaxpr = str(jax.make_jaxpr(fwd)(params, tokens))
    got = fwd(params, tokens)
  assert jaxpr.count("shard_map") >= 7 and jaxpr.count("pallas_call") == 7  # 7 linears
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
