import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import packing, qtensor


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(64, 5), (256, 24)])
def test_pack_unpack_round_trip(bits, shape):
  q = jax.random.randint(jax.random.key(bits), shape, 0, 2**bits, dtype=jnp.int32)
  packed = packing.pack(q, bits)
  assert packed.dtype == jnp.int32
  assert packed.shape == (shape[0] * bits // 32, shape[1])
  np.testing.assert_array_equal(packing.unpack(packed, bits), q)


def test_layout_is_lowest_bits_first_along_k():
  q = jnp.arange(8, dtype=jnp.int32)[:, None]  # K=8 codes in one 4-bit word
  word = int(np.asarray(packing.pack(q, 4)).view(np.uint32)[0, 0])
  assert word == sum(v << (4 * v) for v in range(8))


def test_three_bit_is_two_planes():
  q = jnp.full((32, 1), 7, jnp.int32)
  words = np.asarray(packing.pack(q, 3)).view(np.uint32)[:, 0]
  assert list(words) == [0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF]  # two 2-bit words, one 1-bit


@pytest.mark.parametrize("bits,k", [(4, 12), (3, 48), (2, 8)])
def test_unpackable_k_is_a_clear_error(bits, k):
  with pytest.raises(ValueError, match="multiple of"):
    packing.pack(jnp.zeros((k, 4), jnp.int32), bits)


def test_unsupported_bits():
  with pytest.raises(ValueError, match="not supported"):
    packing.pack(jnp.zeros((32, 4), jnp.int32), 5)


@pytest.mark.parametrize("dim", ["oc", "ic"])
def test_dequantize_closed_form_and_perm(dim):
  k, n, g, bits = 64, 32, 16, 4
  key = jax.random.key(0)
  q = jax.random.randint(key, (k, n), 0, 16, dtype=jnp.int32)
  gs = qtensor.group_shape((k, n), g, dim)
  s = jax.random.uniform(jax.random.key(1), gs, minval=0.1, maxval=1.0)
  z = jax.random.randint(jax.random.key(2), gs, 0, 16)
  qw = qtensor.from_codes(q, s, z, bits=bits, group_size=g, dim=dim, dtype=jnp.bfloat16)
  w = qtensor.dequantize(qw, jnp.float32)
  sf = np.repeat(np.asarray(s), g, axis=0 if dim == "oc" else 1)
  zf = np.repeat(np.asarray(z), g, axis=0 if dim == "oc" else 1)
  np.testing.assert_allclose(w, sf * (np.asarray(q) - zf), rtol=1e-6)
  assert qtensor.dequantize(qw).dtype == jnp.bfloat16
  # With perm, stored row i is original input channel perm[i].
  perm = jax.random.permutation(jax.random.key(3), k)
  qw_p = qtensor.from_codes(q, s, z, bits=bits, group_size=g, dim=dim, dtype=jnp.float32,
                            perm=perm)
  w_orig = np.zeros((k, n), np.float32)
  w_orig[np.asarray(perm)] = np.asarray(w)
  np.testing.assert_allclose(qtensor.dequantize(qw_p), w_orig, rtol=1e-6)


def test_bad_group_size_names_the_axis():
  with pytest.raises(ValueError, match="out_features"):
    qtensor.validate_layout((64, 100), bits=4, group_size=64, dim="ic")
  with pytest.raises(ValueError, match="dim="):
    qtensor.validate_layout((64, 128), bits=4, group_size=64, dim="xx")
