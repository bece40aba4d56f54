"""privacy.defenses: each defense changes the gradient as specified."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from privacy import defenses


def _grads(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {"conv": {"kernel": jax.random.normal(k1, (3, 3, 1, 8))},
          "out": {"kernel": jax.random.normal(k2, (20, 10)), "bias": jax.random.normal(k3, (10,))}}


def test_none_is_identity():
  g = _grads()
  for name in (None, "none"):
    out = defenses.apply(g, name, key=jax.random.key(1))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(g)))


def test_noise_has_the_requested_std():
  g = {"w": jnp.zeros((400, 500))}
  out = defenses.apply(g, "noise", key=jax.random.key(0), std=0.05)
  assert abs(float(jnp.std(out["w"])) - 0.05) < 0.05 * 0.01  # 200k samples: ~0.2% error
  assert abs(float(jnp.mean(out["w"]))) < 1e-3
  default = defenses.apply(g, "noise", key=jax.random.key(0))
  assert abs(float(jnp.std(default["w"])) - 0.01) < 1e-4


def test_clip_bounds_the_global_norm_and_keeps_small_gradients():
  g = _grads()
  assert float(optax.tree.norm(g)) > 4
  out = defenses.apply(g, "clip", key=jax.random.key(0))
  np.testing.assert_allclose(float(optax.tree.norm(out)), 4.0, rtol=1e-5)
  direction = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  np.testing.assert_allclose(direction(out) / 4.0, direction(g) / np.linalg.norm(direction(g)),
                             rtol=1e-4, atol=1e-7)
  small = jax.tree.map(lambda x: x * 1e-3, g)
  kept = defenses.apply(small, "clip", key=jax.random.key(0))
  assert all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(small)))


def test_topk_keeps_the_largest_fraction_per_leaf():
  g = _grads()
  out = defenses.apply(g, "topk", key=jax.random.key(0), keep=0.25)
  for before, after in zip(jax.tree.leaves(g), jax.tree.leaves(out)):
    before, after = np.asarray(before).ravel(), np.asarray(after).ravel()
    k = defenses.keep_count(before.size, 0.25)
    assert np.count_nonzero(after) == k
    expected = np.zeros_like(before)
    top = np.argsort(-np.abs(before))[:k]
    expected[top] = before[top]
    np.testing.assert_array_equal(after, expected)


def test_prune_zeroes_rows_of_smallest_features():
  g = _grads()
  features = jnp.asarray(np.random.default_rng(0).permutation(20)[None].astype(np.float32))
  out = defenses.apply(g, "prune", key=jax.random.key(0), fraction=0.25, features=features)
  w, w0 = np.asarray(out["out"]["kernel"]), np.asarray(g["out"]["kernel"])
  pruned = np.argsort(np.asarray(features[0]))[:5]
  assert set(np.flatnonzero(~w.any(axis=1))) == set(pruned.tolist())
  kept = np.setdiff1d(np.arange(20), pruned)
  np.testing.assert_array_equal(w[kept], w0[kept])
  np.testing.assert_array_equal(out["conv"]["kernel"], g["conv"]["kernel"])


def test_prune_without_features_ranks_rows_by_norm():
  g = _grads()
  out = defenses.apply(g, "prune", key=jax.random.key(0))  # 10% of 20 rows
  w0 = np.asarray(g["out"]["kernel"])
  zero_rows = np.flatnonzero(~np.asarray(out["out"]["kernel"]).any(axis=1))
  np.testing.assert_array_equal(np.sort(zero_rows),
                                np.sort(np.argsort(np.linalg.norm(w0, axis=1))[:2]))


def test_dpsgd_matches_per_example_clip_sum_and_noise():
  per_ex = {"w": jax.random.normal(jax.random.key(3), (4, 6)) * 5}
  clip, mult, key = 1.0, 0.5, jax.random.key(7)
  out = defenses.apply(per_ex, "dpsgd", key=key, l2_norm_clip=clip, noise_multiplier=mult)
  noiseless = defenses.apply(per_ex, "dpsgd", key=key, l2_norm_clip=clip, noise_multiplier=0.0)
  x = np.asarray(per_ex["w"])
  clipped = x * np.minimum(1, clip / np.linalg.norm(x, axis=1, keepdims=True))
  np.testing.assert_allclose(noiseless["w"], clipped.sum(0) / 4, rtol=1e-5)
  assert not np.allclose(out["w"], noiseless["w"])


def test_bad_names_and_settings_are_clear_errors():
  with pytest.raises(ValueError, match="unknown defense 'blur'.*noise, clip, topk"):
    defenses.apply(_grads(), "blur", key=jax.random.key(0))
  with pytest.raises(ValueError, match="takes settings.*std"):
    defenses.apply(_grads(), "noise", key=jax.random.key(0), sigma=1.0)
  with pytest.raises(ValueError, match="0 < keep <= 1"):
    defenses.apply(_grads(), "topk", key=jax.random.key(0), keep=0.0)
  with pytest.raises(ValueError, match="no parameter 'head/kernel'"):
    defenses.apply(_grads(), "prune", key=jax.random.key(0), layer="head/kernel")
  with pytest.raises(ValueError, match="per-example"):
    defenses.apply({"w": jnp.ones(())}, "dpsgd", key=jax.random.key(0))
