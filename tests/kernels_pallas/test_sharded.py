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

from core import qtensor
from kernels_pallas import common
from kernels_pallas import lowbit_matmul as lm
from kernels_pallas import prefix_attention as pa
from kernels_pallas import sharded
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


# Each kernel in both regimes and for MHA and GQA (interpret mode is slow: four cases).
@pytest.mark.parametrize("impl,head_dim,hkv,sq", [
    ("pallas_gpu", 16, 4, 1), ("pallas_gpu", 16, 2, 2), ("pallas_tpu", 128, 2, 1),
    ("pallas_tpu", 128, 4, 2)], ids=("gpu-mha-decode", "gpu-gqa-prefill", "tpu-gqa-decode",
                                     "tpu-mha-prefill"))
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
