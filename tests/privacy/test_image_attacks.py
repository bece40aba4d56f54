"""privacy.attacks.image: l1-ball projection, label inference, matching losses, attack runs."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import dcgan
from privacy import attacks, image_data, image_victim
from privacy.attacks import image as img


def _l1_projection_by_bisection(v, radius):
  """Reference: the projection is sign(v) max(|v| - t, 0) with sum = radius; find t by bisection."""
  a = np.abs(v)
  if a.sum() <= radius:
    return v
  lo, hi = 0.0, a.max()
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if np.maximum(a - mid, 0).sum() > radius else (lo, mid)
  return np.sign(v) * np.maximum(a - (lo + hi) / 2, 0)


def test_l1_projection_equals_bisection_and_is_the_nearest_point():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(6, 5)) * 3
  radii = np.array([0.5, 1.0, 2.0, 4.0, 100.0, 0.01])
  out = np.asarray(img.project_l1_ball(jnp.asarray(v), jnp.asarray(radii)))
  for row, r, got in zip(v, radii, out):
    np.testing.assert_allclose(got, _l1_projection_by_bisection(row, r), atol=1e-5)
    assert np.abs(got).sum() <= r + 1e-4
    # nearest among many points of the ball (vertices, scaled random points)
    candidates = [s * r * e for s in (-1, 1) for e in np.eye(5)]
    candidates += [r * w / np.abs(w).sum() * rng.uniform() for w in rng.normal(size=(500, 5))]
    assert all(np.linalg.norm(row - got) <= np.linalg.norm(row - c) + 1e-6 for c in candidates)
  np.testing.assert_array_equal(out[4], v[4].astype(np.float32))  # inside: unchanged


def test_l1_projection_is_idempotent_and_keeps_image_shapes():
  v = jax.random.normal(jax.random.key(0), (3, 4, 4, 2)) * 2
  once = img.project_l1_ball(v, 3.0)
  np.testing.assert_allclose(img.project_l1_ball(once, 3.0), once, atol=1e-6)
  assert once.shape == v.shape
  np.testing.assert_allclose(np.abs(np.asarray(once)).reshape(3, -1).sum(1), 3.0, rtol=1e-5)


@pytest.fixture(scope="module")
def victim_and_data():
  data = image_data.load("private")
  gdef, params, _ = image_victim.train(image_data.load("victim"), steps=20)
  return image_victim.victim(gdef, params), data


def test_label_inference_is_exact_at_batch_one(victim_and_data):
  victim, data = victim_and_data
  for i in range(5):
    batch = image_data.distinct_label_batch(data, 1, seed=i)
    shared = victim.share(batch, key=jax.random.key(0))
    assert int(img.infer_labels(shared, 1)[0]) == int(batch["labels"][0])


def test_matching_losses_are_zero_at_the_truth_and_positive_elsewhere(victim_and_data):
  victim, data = victim_and_data
  batch = image_data.distinct_label_batch(data, 2, seed=3)
  shared = victim.gradient(batch)
  aux = {"params": victim.params, "target": shared, "labels": jnp.asarray(batch["labels"])}
  other = jax.random.uniform(jax.random.key(1), batch["images"].shape)
  for match in ("cosine", "l2"):
    f = img._objective(victim.loss_fn, tuple(victim.paths), match, None, 0, 0.0, 0.0)
    assert abs(float(f(jnp.asarray(batch["images"]), aux))) < 1e-5
    assert float(f(other, aux)) > 1e-3


def test_every_image_attack_runs_and_gifd_stays_in_its_l1_balls(victim_and_data):
  victim, data = victim_and_data
  batch = image_data.distinct_label_batch(data, 1, seed=0)
  shared = victim.share(batch, key=jax.random.key(0))
  cfg = dcgan.Config()
  (gdef, gen), _ = dcgan.init(cfg, 0)
  meta = {"shape": batch["images"].shape, "prior": (gdef, gen, cfg), "steps": 3,
          "dlg_steps": 3, "stage_steps": 3, "restarts": 1, "radii": (0.01, 0.01)}
  for name in ("dlg", "ig", "latent", "gifd"):
    rec = np.asarray(attacks.get(name)(shared, victim, meta, jax.random.key(1)))
    assert rec.shape == batch["images"].shape and np.all((rec >= 0) & (rec <= 1)), name
  stages = img.gifd_search(shared, victim, meta, jax.random.key(1))
  assert [(r, k) for r, k, _, _ in stages] == list(itertools.product([0], range(3)))
  gifd = attacks.get("gifd")(shared, victim, meta, jax.random.key(1))
  best = min(stages, key=lambda t: t[2])
  np.testing.assert_allclose(gifd, best[3], atol=1e-6)


def test_attack_bad_inputs_are_clear_errors(victim_and_data):
  victim, data = victim_and_data
  batch = image_data.distinct_label_batch(data, 1, seed=0)
  shared = victim.share(batch, key=jax.random.key(0))
  with pytest.raises(ValueError, match="meta\\['prior'\\]"):
    attacks.get("gifd")(shared, victim, {"shape": (1, 16, 16, 1)}, jax.random.key(0))
  with pytest.raises(ValueError, match="more than the 10 classes"):
    img.infer_labels(shared, 11)
  with pytest.raises(ValueError, match="needs that many distinct labels"):
    image_data.distinct_label_batch(image_data.load("private", classes=[5, 6]), 3, seed=0)
