"""Split conformal: the closed form, coverage, agreement with MAPIE, and bad input."""
import fractions
import math
import warnings

import numpy as np
import pytest

from conformal import InfiniteSetWarning, split

# MAPIE checks prefit models for sklearn's fitted attributes; our stand-ins have none.
pytestmark = pytest.mark.filterwarnings("ignore:Estimator does not appear fitted")

ALPHAS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.81, 0.9]


def test_rank_is_the_exact_closed_form():
  for n in range(1, 300):
    for a in ALPHAS:
      want = math.ceil((n + 1) * (1 - fractions.Fraction(str(a))))
      assert split.conformal_rank(n, a) == want


def test_quantile_is_that_order_statistic_or_infinite():
  rng = np.random.default_rng(0)
  for n in (1, 5, 9, 10, 19, 99, 250):
    s = rng.normal(size=n)
    for a in ALPHAS:
      k = split.conformal_rank(n, a)
      if k > n:
        with pytest.warns(InfiniteSetWarning, match="whole space"):
          assert split.split_quantile(s, a) == math.inf
      else:
        assert split.split_quantile(s, a) == np.sort(s)[k - 1]


def test_float_alpha_is_read_as_its_decimal():
  # (n+1)(1-alpha) = 7 exactly for alpha=0.3, n=9; the binary 0.3 would give ceil(7.000...1) = 8.
  assert split.conformal_rank(9, 0.3) == 7
  assert split.conformal_rank(9, fractions.Fraction(3, 10)) == 7


def test_coverage_over_exchangeable_draws():
  rng = np.random.default_rng(1)
  n, alpha, draws = 19, 0.1, 2000
  hits = 0
  for _ in range(draws):
    s = rng.exponential(size=n + 1)
    hits += s[-1] <= split.split_quantile(s[:-1], alpha)
  margin = 3 * math.sqrt(alpha * (1 - alpha) / draws)
  assert hits / draws >= 1 - alpha - margin


def test_regression_interval_and_classification_sets_use_the_quantile():
  rng = np.random.default_rng(2)
  y, pred = rng.normal(size=50), rng.normal(size=50)
  q = split.split_quantile(np.abs(y - pred), 0.1)
  lo, hi = split.regression_interval(y, pred, np.array([0.0, 1.0]), alpha=0.1)
  np.testing.assert_array_equal(hi - lo, [2 * q, 2 * q])
  probs = rng.dirichlet(np.ones(4), size=60)
  labels = rng.integers(0, 4, size=60)
  sets = split.classification_sets(probs[:50], labels[:50], probs[50:], alpha=0.1, score="lac")
  qlac = split.split_quantile(split.lac_scores(probs[:50], labels[:50]), 0.1)
  np.testing.assert_array_equal(sets, 1 - probs[50:] <= qlac)
  # APS: the true label's score is in the set iff it is <= q_hat; sets are prefixes of the
  # classes sorted by probability.
  aps = split.classification_sets(probs[:50], labels[:50], probs[50:], alpha=0.1, score="aps")
  order = np.argsort(-probs[50:], axis=1, kind="stable")
  in_order = np.take_along_axis(aps, order, axis=1)
  assert (np.diff(in_order.astype(int), axis=1) <= 0).all()


def test_aps_score_is_mass_before_plus_own():
  p = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]])
  np.testing.assert_allclose(split.aps_scores(p, np.array([2, 0])), [0.8, 1.0])
  np.testing.assert_allclose(split.aps_scores(p, np.array([2, 0]), u=[0.5, 0.0]), [0.65, 0.9])


# --- MAPIE ---------------------------------------------------------------------------------------

mapie = pytest.importorskip("mapie")


def _mapie_regression_halfwidth(y, confidence):
  from sklearn.base import BaseEstimator, RegressorMixin
  from mapie.regression import SplitConformalRegressor

  class Zero(RegressorMixin, BaseEstimator):
    def fit(self, x, y):
      return self

    def predict(self, x):
      return np.zeros(len(x))

  x = np.zeros((len(y), 1))
  reg = SplitConformalRegressor(Zero().fit(x, y), confidence_level=confidence, prefit=True)
  _, iv = reg.conformalize(x, y).predict_interval(np.zeros((1, 1)))
  return iv[0, 1, 0]


def test_mapie_regression_matches_except_float_ceil():
  rng = np.random.default_rng(3)
  for n in (10, 20, 50, 99, 150):
    y = rng.normal(size=n)
    for conf in (0.5, 0.8, 0.9, 0.95):
      k = split.conformal_rank(n, round(1 - conf, 12))
      if k > n or n < max(1 / (1 - conf), 1 / conf):
        continue                               # MAPIE refuses these n (see below)
      assert _mapie_regression_halfwidth(y, conf) == np.sort(np.abs(y))[k - 1]
  # n=299 at confidence 0.81: k = ceil(300 * 0.81) = 243, but MAPIE computes
  # ceil((1 - (1 - 0.81)) * 300) in floats = ceil(243.00000000000003) = 244: one order
  # statistic higher (more conservative), from the float product, not from a different rule.
  y = np.arange(1.0, 300.0)
  assert split.conformal_rank(299, 0.19) == 243
  assert split.split_quantile(y, 0.19) == 243.0
  assert _mapie_regression_halfwidth(y, 0.81) == 244.0


def test_mapie_refuses_small_n_where_a_finite_set_exists():
  # n=9, alpha=0.1: k = ceil(10 * 0.9) = 9 <= n, so S_(9) is a valid finite threshold; MAPIE
  # requires n >= 1/alpha and raises instead.
  y = np.arange(1.0, 10.0)
  assert split.split_quantile(y, 0.1) == 9.0
  with pytest.raises(ValueError, match="too low"):
    _mapie_regression_halfwidth(y, 0.9)


def test_mapie_classification_quantile_counts_the_float_cases():
  from mapie.utils import _compute_classification_quantile
  differ = []
  for n in range(20, 320, 7):
    s = np.arange(1.0, n + 1.0)
    for pct in range(50, 100):
      conf = pct / 100
      k = split.conformal_rank(n, round(1 - conf, 12))
      if k > n:
        continue
      got = int(_compute_classification_quantile(s, np.array([1 - conf]))[0])
      float_k = math.ceil((n + 1) * (1 - (1 - conf)))
      assert got == float_k                    # MAPIE = the float ceil, always
      assert got in (k, k + 1)                 # never less conservative than the exact rank
      if got != k:
        differ.append((n, conf))
  assert differ and all(math.ceil((n + 1) * (1 - (1 - c))) > (n + 1) * fractions.Fraction(
      str(c)) for n, c in differ)


def test_mapie_lac_sets_match():
  from sklearn.base import BaseEstimator, ClassifierMixin
  from mapie.classification import SplitConformalClassifier
  rng = np.random.default_rng(4)
  probs = rng.dirichlet(np.ones(3), size=130)
  labels = np.array([rng.choice(3, p=p) for p in probs])

  class Lookup(ClassifierMixin, BaseEstimator):
    def fit(self, x, y):
      self.classes_ = np.arange(3)
      return self

    def predict_proba(self, x):
      return probs[np.asarray(x)[:, 0].astype(int)]

    def predict(self, x):
      return self.predict_proba(x).argmax(1)

  x = np.arange(130)[:, None]
  clf = SplitConformalClassifier(Lookup().fit(x, labels), confidence_level=0.9, prefit=True,
                                 conformity_score="lac")
  _, sets = clf.conformalize(x[:100], labels[:100]).predict_set(x[100:])
  ours = split.classification_sets(probs[:100], labels[:100], probs[100:], alpha=0.1)
  np.testing.assert_array_equal(sets[:, :, 0], ours)


def test_mapie_aps_quantile_on_our_scores():
  from mapie.utils import _compute_classification_quantile
  rng = np.random.default_rng(5)
  probs = rng.dirichlet(np.ones(5), size=200)
  labels = rng.integers(0, 5, size=200)
  s = split.aps_scores(probs, labels)
  for a in (0.05, 0.1, 0.2):
    assert _compute_classification_quantile(s, np.array([a]))[0] == split.split_quantile(s, a)


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval(alpha):
  with pytest.raises(ValueError, match="alpha"):
    split.split_quantile([1.0, 2.0, 3.0], alpha)


def test_nan_scores_and_mismatched_lengths():
  with pytest.raises(ValueError, match="NaN"):
    split.split_quantile([1.0, float("nan")], 0.1)
  with pytest.raises(ValueError, match="mismatched lengths"):
    split.regression_interval([1.0, 2.0], [1.0], [0.0], alpha=0.1)
  with pytest.raises(ValueError, match="empty"):
    split.split_quantile([], 0.1)


def test_too_small_n_is_an_explicit_infinite_interval():
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    lo, hi = split.regression_interval([1.0, 2.0], [0.0, 0.0], np.zeros(3), alpha=0.1)
  assert np.all(lo == -np.inf) and np.all(hi == np.inf)
  assert any(issubclass(x.category, InfiniteSetWarning) and "n >= 9" in str(x.message) for x in w)
