"""Input checks shared by ``split`` and ``batch``: every bad input fails here, by name."""
from __future__ import annotations

import fractions
import math
import numbers
import warnings

import numpy as np


class InfiniteSetWarning(UserWarning):
  """The calibration set is too small for the requested coverage: the set is the whole space."""


def alpha_fraction(alpha) -> fractions.Fraction:
  """``alpha`` as an exact fraction in (0, 1).

  A float is read as the shortest decimal that round-trips (``0.3`` is 3/10, not the binary
  0.29999999999999998890), so ``ceil((n + 1) (1 - alpha))`` is the textbook integer; the binary
  value would move some order statistics by one (that is MAPIE's discrepancy, see ``split``).
  """
  if isinstance(alpha, bool) or not isinstance(alpha, (numbers.Real, np.floating, np.integer)):
    raise TypeError(f"alpha={alpha!r} must be a real number in (0, 1).")
  if isinstance(alpha, fractions.Fraction):
    frac = alpha
  else:
    a = float(alpha)
    if math.isnan(a):
      raise ValueError("alpha is NaN; it must be a miscoverage level in (0, 1), e.g. 0.1.")
    frac = fractions.Fraction(repr(a))
  if not 0 < frac < 1:
    raise ValueError(f"alpha={float(frac)} must lie strictly between 0 and 1 (miscoverage level, "
                     "e.g. 0.1 for 90% coverage).")
  return frac


def check_m(m) -> int:
  if isinstance(m, bool) or not isinstance(m, (numbers.Integral, np.integer)):
    raise TypeError(f"m={m!r} must be an integer: the number of test points in the batch.")
  if m < 1:
    raise ValueError(f"m={m} must be >= 1: the number of test points in the batch.")
  return int(m)


def scores_1d(scores, name: str = "cal_scores") -> np.ndarray:
  """A non-empty 1-D float64 array without NaN or infinities."""
  s = np.asarray(scores, dtype=np.float64)
  if s.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one score per calibration point), got shape {s.shape}.")
  if s.size == 0:
    raise ValueError(f"{name} is empty: conformal prediction needs calibration scores.")
  if np.isnan(s).any():
    raise ValueError(f"{name} contains {int(np.isnan(s).sum())} NaN value(s) (first at index "
                     f"{int(np.flatnonzero(np.isnan(s))[0])}); drop or fix those points first.")
  if np.isinf(s).any():
    raise ValueError(f"{name} contains infinite values; scores must be finite.")
  return s


def same_length(**arrays) -> int:
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError("mismatched lengths: " + ", ".join(f"len({k})={v}" for k, v in lengths.items())
                     + "; they must describe the same points.")
  return next(iter(lengths.values()))


def finite_array(x, name: str) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if np.isnan(a).any():
    raise ValueError(f"{name} contains NaN values.")
  return a


def warn_infinite(message: str) -> None:
  warnings.warn(message, InfiniteSetWarning, stacklevel=3)
