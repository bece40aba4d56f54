"""privacy.client: the shared gradient, layer subsets, defenses routed, bad-input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from privacy import client


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"hidden": {"kernel": jax.random.normal(k1, (6, 5))},
          "out": {"kernel": jax.random.normal(k2, (5, 3))},
          "unused": {"kernel": jnp.ones((2, 2))}}


def _features(params, batch):
  return jax.nn.relu(batch["x"] @ params["hidden"]["kernel"])


def _loss(params, batch):
  logits = _features(params, batch) @ params["out"]["kernel"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))


def _batch(n=4):
  x = jax.random.normal(jax.random.key(1), (n, 6))
  return {"x": x, "y": jnp.arange(n) % 3}


def test_shared_gradient_without_defense_is_the_plain_gradient():
  p, b = _params(), _batch()
  g = client.shared_gradient(_loss, p, b, key=jax.random.key(0), layers=["hidden", "out"])
  ref = jax.grad(_loss)(p, b)
  assert set(g) == {"hidden", "out"}
  np.testing.assert_allclose(g["hidden"]["kernel"], ref["hidden"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(g["out"]["kernel"], ref["out"]["kernel"], rtol=1e-6)


def test_dpsgd_without_noise_is_the_mean_of_clipped_per_example_gradients():
  p, b = _params(), _batch()
  g = client.shared_gradient(_loss, p, b, defense="dpsgd", key=jax.random.key(0),
                             layers=["out"], l2_norm_clip=0.1, noise_multiplier=0.0)
  per = [np.asarray(jax.grad(_loss)(p, jax.tree.map(lambda a: a[i:i + 1], b))["out"]["kernel"])
         for i in range(4)]
  ref = sum(x * min(1, 0.1 / np.linalg.norm(x)) for x in per) / 4
  np.testing.assert_allclose(g["out"]["kernel"], ref, rtol=1e-5, atol=1e-8)


def test_prune_uses_the_representation_from_features_fn():
  p, b = _params(), _batch(2)
  victim = client.Victim(_loss, p, layers=("out",), features_fn=_features)
  g = victim.share(b, defense="prune", key=jax.random.key(0), fraction=0.4)
  feats = np.abs(np.asarray(_features(p, b))).sum(0)
  zero_rows = set(np.flatnonzero(~np.asarray(g["out"]["kernel"]).any(axis=1)).tolist())
  assert set(np.argsort(feats)[:2].tolist()) <= zero_rows


def test_victim_gradient_is_differentiable_in_the_input():
  p, b = _params(), _batch(1)
  victim = client.Victim(_loss, p, layers=("out",))
  dx = jax.grad(lambda x: jnp.sum(client.flat(victim.gradient({**b, "x": x})) ** 2))(b["x"])
  assert dx.shape == b["x"].shape and np.any(np.asarray(dx) != 0)


def test_errors_for_layers_without_gradient_unknown_layers_and_oversized_batches():
  p, b = _params(), _batch()
  with pytest.raises(ValueError, match=r"no gradient reaches.*unused/kernel"):
    client.shared_gradient(_loss, p, b, key=jax.random.key(0), layers=["unused"])
  with pytest.raises(ValueError, match="'head' is not a parameter"):
    client.shared_gradient(_loss, p, b, key=jax.random.key(0), layers=["head"])
  with pytest.raises(ValueError, match="unknown defense"):
    client.shared_gradient(_loss, p, b, key=jax.random.key(0), defense="shuffle")
  with pytest.raises(ValueError, match="larger than the 4 examples"):
    client.sample_batch(b, 5, key=jax.random.key(0))
  picked = client.sample_batch(b, 3, key=jax.random.key(0))
  assert picked["x"].shape == (3, 6)
  assert len({tuple(r) for r in np.asarray(picked["x"])}) == 3  # distinct rows
