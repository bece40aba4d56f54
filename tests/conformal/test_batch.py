"""Batch PI: dynamic program = enumeration, coverage, width against Bonferroni, bad input."""
import fractions
import itertools
import math
import warnings

import numpy as np
import pytest

import conformal
from conformal import InfiniteSetWarning, batch, split

STATS = ["mean", "sum", "max", "median", ("order", 1)]


def _scores(rng, n, ties):
  return rng.integers(0, 4, size=n).astype(float) if ties else rng.normal(size=n)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_dp_equals_enumeration(m):
  """Every n <= 12, several alpha, ties or not, with and without a score bound."""
  rng = np.random.default_rng(m)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", InfiniteSetWarning)
    for n in range(1, 13):
      for alpha in (0.05, 0.1, 0.2, 0.3, 0.5):
        for ties in (False, True):
          s = _scores(rng, n, ties)
          for stat in STATS:
            for bound in (math.inf, float(s.max()) + 1.5):
              kw = dict(statistic=stat, score_bound=bound)
              dp = batch.batch_quantile(s, m, alpha, method="dp", **kw)
              en = batch.batch_quantile(s, m, alpha, method="enumerate", **kw)
              assert dp == pytest.approx(en, rel=1e-12, abs=1e-12), (n, m, alpha, ties, stat, bound)


def test_rank_sum_counts_are_the_multiset_counts():
  for k_max in range(1, 7):
    for m in range(1, 5):
      want = np.zeros(m * (k_max - 1) + 1, dtype=int)
      for r in itertools.combinations_with_replacement(range(k_max), m):
        want[sum(r)] += 1
      assert list(batch._sum_counts(k_max, m)) == list(want)
      half = m * (k_max - 1) // 2
      assert list(batch._sum_counts(k_max, m, upto=half)) == list(want[: half + 1])


def test_order_counts_sum_to_all_interleavings():
  for n in range(1, 15):
    for m in range(1, 6):
      for z in range(1, m + 1):
        assert sum(batch._order_counts(n, m, z)) == math.comb(n + m, m)


def test_rank_quantile_coverage_is_exact_and_minimal():
  n, m, a = 30, 4, fractions.Fraction(1, 10)
  rq = batch.rank_quantile(n, m, a, statistic="mean", bounded=True)
  configs = list(itertools.combinations_with_replacement(range(1, n + 2), m))
  # lexicographic: ranks at n+1 first, then the sum of the other ranks
  keys = [(r.count(n + 1), sum(x for x in r if x <= n)) for r in configs]
  inside = lambda q: sum(k <= (rq.tops, q) for k in keys)
  assert rq.coverage == fractions.Fraction(inside(rq.q), len(configs))
  assert rq.coverage >= 1 - a > fractions.Fraction(inside(rq.q - 1), len(configs))


def test_one_test_point_is_split_conformal():
  rng = np.random.default_rng(7)
  for n in (5, 9, 20, 57):
    s = rng.normal(size=n)
    for a in (0.05, 0.1, 0.3):
      for stat in ("mean", "max", "median"):
        with warnings.catch_warnings():
          warnings.simplefilter("ignore", InfiniteSetWarning)
          assert batch.batch_quantile(s, 1, a, statistic=stat) == split.split_quantile(s, a)


def test_invariants():
  rng = np.random.default_rng(8)
  s = rng.normal(size=40)
  b = [batch.batch_quantile(s, 3, a, statistic="mean", score_bound=10.0) for a in (0.05, 0.1, 0.3)]
  assert b[0] >= b[1] >= b[2]                  # more coverage, larger bound
  b1 = batch.batch_quantile(s, 3, 0.1, statistic="mean", score_bound=10.0)
  assert batch.batch_quantile(2 * s + 1, 3, 0.1, statistic="mean",
                              score_bound=21.0) == pytest.approx(2 * b1 + 1)
  assert batch.batch_quantile(s[::-1], 3, 0.1, score_bound=10.0) == b1   # order-free
  # the relaxed (concave-envelope) bound is valid: never below the exact one
  assert batch.batch_quantile(s, 3, 0.1, score_bound=10.0, method="relaxed") >= b1


def test_max_sum_against_brute_force():
  rng = np.random.default_rng(9)
  for _ in range(300):
    k, m = int(rng.integers(1, 10)), int(rng.integers(1, 5))
    v = np.sort(rng.integers(0, 5, size=k).astype(float) if rng.random() < 0.5
                else rng.exponential(size=k))
    budget = int(rng.integers(0, m * (k - 1) + 2))
    best = max((math.fsum(v[list(c)]) for c in itertools.combinations_with_replacement(range(k), m)
                if sum(c) <= budget), default=-math.inf)
    got, a = batch.max_sum(v, m, budget)
    assert got == best and a.sum() <= budget and len(a) == m


def _beta_response(rng, size):
  x = rng.uniform(size=(size, 3))
  mean = 0.2 + 0.6 * x[:, 0]
  y = rng.beta(4 * mean, 4 * (1 - mean))
  pred = 0.25 + 0.5 * x[:, 0]                   # a fixed, slightly wrong model
  return y, pred


@pytest.mark.parametrize("method", ["batch", "bonferroni", "partition"])
def test_mean_interval_coverage(method):
  rng = np.random.default_rng(10)
  n, m, alpha, draws = 30, 3, 0.1, 2000
  hits = 0
  for _ in range(draws):
    y, pred = _beta_response(rng, n + m)
    lo, hi = conformal.mean_response_interval(y[:n], pred[:n], pred[n:], alpha=alpha,
                                              method=method, y_range=(0.0, 1.0))
    hits += lo <= y[n:].mean() <= hi
  assert hits / draws >= 1 - alpha - 3 * math.sqrt(alpha * (1 - alpha) / draws)


def test_simultaneous_and_selection_coverage():
  rng = np.random.default_rng(11)
  n, m, alpha, draws = 40, 5, 0.1, 2000
  sim_hits = sel_ok = 0
  for _ in range(draws):
    y, pred = _beta_response(rng, n + m)
    t = conformal.simultaneous_threshold(np.abs(y[:n] - pred[:n]), m, alpha, score_bound=1.0)
    sim_hits += np.all(np.abs(y[n:] - pred[n:]) <= t)
    chosen = conformal.select_with_false_claims(y[:n], pred[:n], pred[n:], cutoff=0.4,
                                                alpha=alpha, max_false=1)
    sel_ok += np.sum(chosen & (y[n:] <= 0.4)) <= 1
  margin = 3 * math.sqrt(alpha * (1 - alpha) / draws)
  assert sim_hits / draws >= 1 - alpha - margin
  assert sel_ok / draws >= 1 - alpha - margin


def test_batch_no_wider_than_bonferroni_at_small_n():
  rng = np.random.default_rng(12)
  for n in (20, 30, 50):
    for m in (2, 5, 10):
      widths = {"batch": [], "bonferroni": []}
      for _ in range(200):
        y, pred = _beta_response(rng, n + m)
        for method in widths:
          lo, hi = conformal.mean_response_interval(y[:n], pred[:n], pred[n:], alpha=0.1,
                                                    method=method, y_range=(0.0, 1.0))
          widths[method].append(hi - lo)
      assert np.mean(widths["batch"]) <= np.mean(widths["bonferroni"]), (n, m)


def test_vectorized_over_batches_and_any_model():
  import jax.numpy as jnp
  from sklearn.linear_model import LinearRegression
  rng = np.random.default_rng(13)
  x = rng.normal(size=(300, 2))
  y = x @ np.array([1.0, -2.0]) + rng.normal(size=300)
  model = LinearRegression().fit(x[:100], y[:100])
  cal_pred, test_pred = model.predict(x[100:250]), model.predict(x[250:]).reshape(10, 5)
  lo, hi = conformal.mean_response_interval(y[100:250], cal_pred, test_pred, alpha=0.2)
  assert lo.shape == hi.shape == (10,)
  for i in range(10):
    l1, h1 = conformal.mean_response_interval(y[100:250], cal_pred, test_pred[i], alpha=0.2)
    assert (l1, h1) == (lo[i], hi[i])
  w = jnp.array([1.0, -2.0])                   # a JAX "model": its predictions are jax arrays
  jl, jh = conformal.mean_response_interval(jnp.asarray(y[100:250]), jnp.asarray(x[100:250]) @ w,
                                            (jnp.asarray(x[250:]) @ w).reshape(10, 5), alpha=0.2)
  assert np.all(np.isfinite(jl)) and np.all(jh > jl)


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 2.0, float("nan")])
def test_alpha_outside_unit_interval(alpha):
  with pytest.raises(ValueError, match="alpha"):
    batch.batch_quantile([1.0, 2.0, 3.0], 2, alpha)


@pytest.mark.parametrize("m", [0, -3])
def test_m_below_one(m):
  with pytest.raises(ValueError, match="m="):
    batch.batch_quantile([1.0, 2.0, 3.0], m, 0.1)


def test_nan_scores_mismatch_bad_bound_bad_statistic():
  with pytest.raises(ValueError, match="NaN"):
    batch.batch_quantile([1.0, float("nan"), 2.0], 2, 0.1)
  with pytest.raises(ValueError, match="mismatched lengths"):
    conformal.mean_response_interval([1.0, 2.0, 3.0], [1.0, 2.0], [[0.0, 1.0]], alpha=0.1)
  with pytest.raises(ValueError, match="score_bound"):
    batch.batch_quantile([1.0, 5.0], 2, 0.1, score_bound=2.0)
  with pytest.raises(ValueError, match="statistic"):
    batch.batch_quantile([1.0, 5.0], 2, 0.1, statistic="mode")


def test_callable_statistic_enumerates_or_says_why_not():
  s = np.linspace(0.0, 1.0, 12)
  f = lambda x: np.mean(x, axis=-1)
  # no bound: both order the configurations with an infinite mean last, then by rank sum
  assert batch.batch_quantile(s, 3, 0.2, statistic=f) == pytest.approx(
      batch.batch_quantile(s, 3, 0.2, statistic="mean"))
  assert math.isfinite(batch.batch_quantile(s, 3, 0.2, statistic=f))
  with pytest.raises(ValueError, match="no dynamic program"):
    batch.batch_quantile(np.linspace(0, 1, 500), 10, 0.2, statistic=f)


def test_too_small_n_is_an_explicit_infinite_set():
  with pytest.warns(InfiniteSetWarning, match="whole space"):
    assert batch.batch_quantile(np.arange(5.0), 3, 0.1) == math.inf
  with pytest.warns(InfiniteSetWarning):
    lo, hi = conformal.mean_response_interval(np.zeros(5), np.zeros(5), np.zeros((2, 3)), alpha=0.1)
  assert np.all(lo == -np.inf) and np.all(hi == np.inf)
  # with a score bound the same n gives a finite set, never wider than the bound
  assert batch.batch_quantile(np.arange(5.0), 3, 0.1, score_bound=9.0) <= 9.0
