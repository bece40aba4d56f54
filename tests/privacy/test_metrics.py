"""privacy.metrics: PSNR closed form, SSIM window and identity, order matching."""
import numpy as np
import pytest

from privacy import metrics


def test_psnr_closed_form_and_ssim_identity():
  rng = np.random.default_rng(0)
  truth = rng.uniform(0.2, 0.8, (2, 16, 16, 1))
  recon = truth + 0.1  # MSE = 0.01 -> 20 dB
  np.testing.assert_allclose(metrics.psnr(recon, truth), 20.0, rtol=1e-9)
  np.testing.assert_allclose(metrics.ssim(truth, truth), 1.0)
  assert np.all(metrics.ssim(rng.uniform(size=truth.shape), truth) < 0.5)


def test_ssim_window_fits_small_images():
  assert metrics.ssim_window(16, 16) == 7
  assert metrics.ssim_window(8, 8) == 7
  assert metrics.ssim_window(6, 6) == 5
  with pytest.raises(ValueError, match="at least 3x3"):
    metrics.ssim_window(2, 8)


def test_match_order_undoes_a_permutation():
  truth = np.random.default_rng(1).uniform(size=(5, 8, 8, 1))
  perm = np.array([3, 0, 4, 1, 2])
  np.testing.assert_array_equal(metrics.match_order(truth[perm] * 0.99, truth), truth * 0.99)
  summary = metrics.summarize(truth[perm], truth, features_fn=lambda x: x.reshape(len(x), -1))
  assert summary["psnr"] == 100.0 and summary["ssim"] == 1.0
  assert summary["feature_distance"] == 0.0


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    metrics.psnr(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
