"""models.dcgan + privacy.prior: block composition, training step, export round trip."""
import jax
import numpy as np
import pytest

from models import dcgan
from privacy import image_data, prior


def test_blocks_compose_to_the_generator_and_shapes_match():
  cfg = dcgan.Config()
  (gdef, gp), (ddef, dp) = dcgan.init(cfg, 0)
  z = jax.random.normal(jax.random.key(0), (3, cfg.z_dim))
  images = dcgan.sample(gdef, gp, z)
  assert images.shape == (3, 16, 16, 1)
  for k, shape in enumerate(dcgan.feature_shapes(cfg)):
    h = dcgan.encode_to(gdef, gp, z, k)
    assert h.shape[1:] == shape
    np.testing.assert_allclose(dcgan.decode_from(gdef, gp, h, k), images, atol=1e-6)
  assert dcgan.disc_logits(ddef, dp, images).shape == (3,)


def test_prior_trains_saves_and_loads(tmp_path):
  data = image_data.load("prior", classes=range(5))
  assert set(np.unique(data["labels"]).tolist()) == set(range(5))
  gdef, params, losses = prior.train(data["images"], steps=3, batch_size=16)
  assert all(np.isfinite(losses))
  path = prior.save(tmp_path / "prior", params, dcgan.Config())
  gdef2, loaded, cfg, _ = prior.load(path)
  z = jax.random.normal(jax.random.key(1), (2, cfg.z_dim))
  np.testing.assert_allclose(dcgan.sample(gdef2, loaded, z), dcgan.sample(gdef, params, z),
                             atol=1e-6)
  with pytest.raises(Exception, match="overwrite"):
    prior.save(path, params, dcgan.Config())


def test_bad_prior_inputs():
  with pytest.raises(ValueError, match=r"\[N, 16, 16, 1\]"):
    prior.train(np.zeros((10, 8, 8, 1)), steps=1)
  with pytest.raises(ValueError, match="16x16"):
    dcgan.Config(image_size=32)
  with pytest.raises(ValueError, match="unknown"):
    image_data.load("test")


def test_the_three_digit_parts_are_disjoint_and_classes_filter():
  parts = {p: image_data.load(p) for p in image_data.PARTS}
  rows = {p: {d["images"][i].tobytes() for i in range(len(d["images"]))}
          for p, d in parts.items()}
  assert not rows["prior"] & rows["victim"]
  assert not rows["prior"] & rows["private"]
  assert not rows["victim"] & rows["private"]
  assert all(d["images"].shape[1:] == (16, 16, 1) for d in parts.values())
  ood = image_data.load("private", classes=[5, 6, 7, 8, 9])
  assert set(np.unique(ood["labels"]).tolist()) == {5, 6, 7, 8, 9}
