"""Split conformal prediction with the exact order statistic (Vovk et al. 2005; Lei et al. 2018).

Calibration scores ``S_1..S_n`` (sorted ``S_(1) <= ... <= S_(n)``) and a test score ``S_{n+1}``
are exchangeable, so the rank of ``S_{n+1}`` among all ``n + 1`` is uniform (ties only help) and

    q_hat = S_(k),   k = ceil((n + 1)(1 - alpha)),     P(S_{n+1} <= q_hat) >= 1 - alpha,

with ``q_hat = +inf`` when ``k > n``: then no finite set has the coverage, and the set is the
whole label space (returned as an infinite interval / every class, with an
``InfiniteSetWarning``). ``k`` is computed in exact rational arithmetic (``alpha`` read as the
decimal it prints as).

Scores:

* regression, absolute residual ``|y - mu(x)|``: interval ``mu(x) +- q_hat``;
* classification, LAC (Sadinle et al. 2019): ``1 - p_y(x)``; set ``{y : p_y(x) >= 1 - q_hat}``;
* classification, APS (Romano et al. 2020): sort classes by ``p(x)`` descending (stable, so ties
  go to the lower class index); ``s(x, y) = sum of p over the classes ranked before y + u p_y(x)``
  with ``u = 1`` (deterministic) or ``u ~ U(0, 1)`` (randomized); set ``{y : s(x, y) <= q_hat}``.

MAPIE 1.6 (``mapie.utils``) takes ``np.quantile(s, ceil((n + 1)(1 - alpha)) / n, method="lower")``:
the same order statistic on paper, but the ceil is of a float product, and the alpha it is
given is itself ``1 - confidence_level`` in float (``1 - 0.9 = 0.09999999999999998``). Where the
float product lands just above an integer, MAPIE takes one order statistic more (more
conservative). ``tests/conformal/test_split.py`` lists such cases.
"""
from __future__ import annotations

import math

import numpy as np

from conformal import _checks


def conformal_rank(n: int, alpha) -> int:
  """``k = ceil((n + 1)(1 - alpha))`` exactly; ``k = n + 1`` means the set is infinite."""
  a = _checks.alpha_fraction(alpha)
  if isinstance(n, bool) or int(n) != n or n < 1:
    raise ValueError(f"n={n} must be a positive integer (number of calibration scores).")
  return math.ceil((int(n) + 1) * (1 - a))


def split_quantile(cal_scores, alpha) -> float:
  """``S_(k)`` with ``k = ceil((n + 1)(1 - alpha))``; ``inf`` (and a warning) when ``k > n``."""
  s = _checks.scores_1d(cal_scores)
  n = s.size
  k = conformal_rank(n, alpha)
  if k > n:
    _checks.warn_infinite(
        f"n={n} calibration scores cannot give {float(1 - _checks.alpha_fraction(alpha)):.4g} "
        f"coverage: ceil((n+1)(1-alpha)) = {k} > n, so the prediction set is the whole space "
        f"(threshold +inf). Needs n >= {_min_n(alpha)}.")
    return math.inf
  return float(np.partition(s, k - 1)[k - 1])


def _min_n(alpha) -> int:
  # smallest n with ceil((n+1)(1-alpha)) <= n  <=>  (n+1) alpha >= 1
  a = _checks.alpha_fraction(alpha)
  return max(1, math.ceil(1 / a) - 1)


# --- regression ---------------------------------------------------------------------------------

def absolute_residual_scores(y, pred) -> np.ndarray:
  y = _checks.finite_array(y, "y")
  pred = _checks.finite_array(pred, "pred")
  if y.shape != pred.shape:
    raise ValueError(f"mismatched lengths: y has shape {y.shape}, pred {pred.shape}.")
  return np.abs(y - pred)


def regression_interval(cal_y, cal_pred, test_pred, *, alpha):
  """``(lower, upper)`` = ``test_pred -+ q_hat`` from absolute residuals; any shape of test_pred."""
  q = split_quantile(absolute_residual_scores(cal_y, cal_pred), alpha)
  t = _checks.finite_array(test_pred, "test_pred")
  return t - q, t + q


# --- classification -----------------------------------------------------------------------------

def _probs_labels(probs, labels):
  p = _checks.finite_array(probs, "probs")
  if p.ndim != 2:
    raise ValueError(f"probs must be (n_points, n_classes), got shape {p.shape}.")
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] != p.shape[0]:
    raise ValueError(f"mismatched lengths: labels has shape {y.shape}, probs {p.shape}.")
  if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
    raise ValueError(f"labels must be integers in [0, {p.shape[1]}) indexing the columns of probs.")
  return p, y


def lac_scores(probs, labels) -> np.ndarray:
  """``1 - p_y(x)``."""
  p, y = _probs_labels(probs, labels)
  return 1.0 - p[np.arange(len(y)), y]


def _aps_all(p: np.ndarray, u) -> np.ndarray:
  """APS score of every class, shape ``p.shape``."""
  order = np.argsort(-p, axis=1, kind="stable")
  sorted_p = np.take_along_axis(p, order, axis=1)
  before = np.cumsum(sorted_p, axis=1) - sorted_p        # mass of the classes ranked before
  u = np.ones((p.shape[0], 1)) if u is None else np.asarray(u, np.float64).reshape(-1, 1)
  s_sorted = before + u * sorted_p
  out = np.empty_like(p)
  np.put_along_axis(out, order, s_sorted, axis=1)
  return out


def aps_scores(probs, labels, *, u=None) -> np.ndarray:
  """APS score of the true label; ``u`` (one per point, in [0, 1]) randomizes, None means 1."""
  p, y = _probs_labels(probs, labels)
  return _aps_all(p, u)[np.arange(len(y)), y]


def classification_sets(cal_probs, cal_labels, test_probs, *, alpha, score: str = "lac",
                        cal_u=None, test_u=None) -> np.ndarray:
  """Boolean ``(n_test, n_classes)`` mask of each test point's prediction set."""
  tp = _checks.finite_array(test_probs, "test_probs")
  cp = _checks.finite_array(cal_probs, "cal_probs")
  if tp.ndim != 2 or cp.ndim != 2 or tp.shape[1] != cp.shape[1]:
    raise ValueError(f"cal_probs {cp.shape} and test_probs {tp.shape} must be 2-D with the same "
                     "number of classes.")
  if score == "lac":
    q = split_quantile(lac_scores(cp, cal_labels), alpha)
    return (1.0 - tp) <= q
  if score == "aps":
    q = split_quantile(aps_scores(cp, cal_labels, u=cal_u), alpha)
    return _aps_all(tp, test_u) <= q
  raise ValueError(f"score={score!r}; use 'lac' or 'aps'.")
