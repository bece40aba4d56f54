"""Reconstruction quality: PSNR, SSIM, a victim-feature distance (not LPIPS), order matching.

Images are ``[B, H, W, C]`` floats in ``[0, 1]`` (``data_range=1``), as GIFD measures PSNR on
denormalised images. SSIM is scikit-image's uniform-window SSIM with the window
fitted to the image: the largest odd size <= min(7, H, W) (an 11x11 window does not fit 8x8 or
16x16 digits). LPIPS is *not* computed: its backbones are downloaded weights
(``lpips/pretrained_networks.py`` builds torchvision ``pretrained=True`` nets). In its place
:func:`feature_distance` is a clearly different, offline quantity: the relative L2 distance of
the victim model's own representation.

A batch reconstruction comes back in an arbitrary order; :func:`match_order` pairs each true
image with one reconstruction (Hungarian assignment maximising total PSNR), as breaching does
before scoring.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import optimize
from skimage import metrics as skmetrics


def _check(recon, truth):
  recon, truth = np.asarray(recon, np.float64), np.asarray(truth, np.float64)
  if recon.shape != truth.shape or recon.ndim != 4:
    raise ValueError(f"reconstruction and truth must both be [B, H, W, C], got "
                     f"{recon.shape} and {truth.shape}.")
  return recon, truth


def psnr(recon, truth) -> np.ndarray:
  """Per-image ``10 log10(1 / MSE)`` on ``[0, 1]`` images (``recon`` clipped to the range);
  identical images give ``inf``."""
  recon, truth = _check(recon, truth)
  mse = ((np.clip(recon, 0, 1) - truth) ** 2).mean(axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    return 10 * np.log10(1.0 / mse)


def ssim_window(height: int, width: int) -> int:
  """The SSIM window: the largest odd size <= min(7, height, width)."""
  side = min(7, height, width)
  if side < 3:
    raise ValueError(f"SSIM needs images of at least 3x3, got {height}x{width}.")
  return side if side % 2 else side - 1


def ssim(recon, truth) -> np.ndarray:
  """Per-image SSIM (Wang et al. 2004) with :func:`ssim_window`; 1 means identical."""
  recon, truth = _check(recon, truth)
  win = ssim_window(*truth.shape[1:3])
  return np.array([skmetrics.structural_similarity(
      np.clip(r, 0, 1), t, data_range=1.0, win_size=win, channel_axis=-1)
      for r, t in zip(recon, truth)])


def feature_distance(recon, truth, features_fn: Callable[[np.ndarray], np.ndarray]):
  """Per-image ``||f(recon) - f(truth)|| / ||f(truth)||`` for a feature map ``f`` (the victim's
  representation in the report). Lower is closer. Not LPIPS (see the module docstring)."""
  recon, truth = _check(recon, truth)
  fr = np.asarray(features_fn(np.clip(recon, 0, 1).astype(np.float32)), np.float64)
  ft = np.asarray(features_fn(truth.astype(np.float32)), np.float64)
  fr, ft = fr.reshape(len(fr), -1), ft.reshape(len(ft), -1)
  return np.linalg.norm(fr - ft, axis=1) / np.maximum(np.linalg.norm(ft, axis=1), 1e-12)


def match_order(recon, truth) -> np.ndarray:
  """``recon`` reordered so that ``recon[i]`` is the reconstruction paired with ``truth[i]``
  (the assignment maximising total PSNR)."""
  recon, truth = _check(recon, truth)
  mse = ((np.clip(recon, 0, 1)[None] - truth[:, None]) ** 2).mean(axis=(2, 3, 4))
  score = -10 * np.log10(np.maximum(mse, 1e-12))  # [truth, recon]
  rows, cols = optimize.linear_sum_assignment(-score)
  return recon[cols[np.argsort(rows)]]


def summarize(recon, truth, features_fn=None) -> dict:
  """Mean PSNR / SSIM (/ feature distance) after :func:`match_order`, as floats."""
  recon = match_order(recon, truth)
  out = {"psnr": float(np.mean(np.minimum(psnr(recon, truth), 100.0))),
         "ssim": float(np.mean(ssim(recon, truth)))}
  if features_fn is not None:
    out["feature_distance"] = float(np.mean(feature_distance(recon, truth, features_fn)))
  return out
