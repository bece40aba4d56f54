"""Batch predictive inference (Lee, Tchetgen Tchetgen & Dobriban, arXiv:2409.13990).

Prediction sets for a *function* of m unseen test points: the mean or median of their
responses, all of them at once (simultaneous), or which of them to claim large with at most k
false claims. Distribution-free under exchangeability of the n calibration and m test points.

Ranks. Calibration scores ``S_1..S_n`` sorted ``S_(1) <= ... <= S_(n)``, and ``S_(n+1) = b``, a
known upper bound of the score (``score_bound``; ``+inf`` when there is none). Test scores
``T_j = s(X_{n+j}, Y_{n+j})`` have ranks

    R_j = 1 + #{i : S_i < T_j}  in {1, ..., n+1},        so  T_j <= S_(R_j).

An interleaving of the n calibration and m test points is the multiset ``{R_1..R_m}`` (test j
sits in gap ``R_j``), and under exchangeability each of the ``C(n+m, m)`` interleavings is
equally likely: ``P(sorted R = r) = 1 / C(n+m, m)`` for every m-multiset r of {1..n+1}
(ties among scores only lower ``R``, which the monotone rules below tolerate).

Batch PI. Fix a rank ordering function ``rho`` of ranks alone (never of the data) and its
(1 - alpha) quantile over the C(n+m, m) equally likely rank configurations,

    q = min{ t : #{r : rho(r) <= t} >= (1 - alpha) C(n+m, m) },   so  P(rho(R) <= q) >= 1 - alpha.

For a batch score g nondecreasing in each argument, on that event
``g(T) <= g(S_(R_1), ..., S_(R_m))``, hence

    P( g(T_1..T_m) <= B ) >= 1 - alpha,       B = max_{r : rho(r) <= q} g(S_(r_1), ..., S_(r_m)).

``{y : rho(R(y)) <= q}`` is the batch prediction set and ``B`` the end of its image under g.
The rank orderings used here (``rho`` = g applied to the ranks):

* ``"sum"``/``"mean"``: ``rho = (#{j : r_j = n+1}, r_1 + ... + r_m)`` in lexicographic order
  (the paper's rank sum, with configurations that use the bound ``S_(n+1)`` ordered last).
  The counts of c-multisets of {1..n} by rank sum are the coefficients of the Gaussian
  binomial ``[n-1+c choose c]_x`` (exact Python integers), and ``B = max sum_j S_(r_j)`` s.t.
  ``sum_j r_j <= q`` is a knapsack with m identical item types; it is solved exactly
  by a dynamic program over (items, rank sum), pruned with the concave-envelope bound and run
  to m/2 items only (meet in the middle: the items are identical; below).
* ``"max"``: ``rho = max_j r_j``; ``#{max <= k} = C(k+m-1, m)``, ``B = S_(q)``. Simultaneous sets.
* ``"median"`` and ``("order", z)``: ``rho = r_(z)`` (the z-th smallest rank; the median uses
  ``z = floor(m/2) + 1``), ``#{r_(z) = k} = C(k+z-2, z-1) C(n+m-k-z+1, m-z)``, ``B = S_(q)``.
* a callable ``g`` (vectorized over the last axis, nondecreasing in each argument):
  ``rho = g(ranks)``, and both q and B by enumerating all C(n+m, m) multisets.

Why the bound goes last: without a finite ``score_bound`` a configuration with ``r_j = n+1``
has an infinite bound, and with plain rank-sum ordering one is always in the level set for
``m >= 2, alpha < 1/2`` (``(1, ..., 1, n+1)`` has rank sum ``n+m``, below the median), so the set
would always be infinite. Ordering them last is a fixed, data-free refinement of rho, so still
valid; the set is finite iff the others reach 1 - alpha (for the mean: ``alpha >= m/(n+m)``).
With a finite bound far above the scores the same order keeps the bound out while it can
(plain rank-sum ordering was wider than Bonferroni at n=20, m=2 for a response range of 1).
For a callable statistic without a bound, configurations where g is infinite go last.

Exact max-sum. ``a_j = r_j - 1``, ``v[a] = S_(a+1)``. Let ``v~`` be the upper concave envelope of
``v``. Then ``c v~(R / c)`` bounds the best value of c items with rank budget R, so a partial
solution ``(j items, sum s, value F)`` can be dropped when ``F + (m-j) v~((Q-s)/(m-j)) < LB``
for a feasible value ``LB``, and an item ``a`` when ``v[a] + (m-1) v~((Q-a)/(m-1)) < LB``. Among
ranks with equal score only the smallest is kept. What survives is searched exhaustively, so
the result is the exact maximum (tests compare it with enumeration); the pruning only makes it
fast on typical scores.

Provenance: the paper's Sections 2-3 were not retrievable as text here; what is above was
derived from the abstract and checked against the authors' public simulation code (R), which
computes the order-statistic level ``#{r_(z) = k}`` exactly and, for the mean, maximizes the
sum of calibration order statistics subject to a rank-sum budget by dynamic programming. (That
code takes the rank-sum quantile by Monte Carlo over i.i.d. uniform ranks, not over the
C(n+m, m) equally likely configurations; here it is exact.) The coverage statement is proved
above from exchangeability alone, and tests check every rule against enumeration.

Baselines (``mean_response_interval``): Bonferroni, the split-conformal threshold at level
``alpha/m`` for every test point; partitioning, calibration split into m groups of
``floor(n/m)``, test point j calibrated on group j alone at the Sidak level ``(1-alpha)^(1/m)``
(independent groups: needs i.i.d. data, not just exchangeability).

Selection (``select_with_false_claims``): with ``s = mu(x) - y`` and ``t`` the batch bound of the
(m-k)-th smallest test score, at most k test scores exceed t with probability >= 1 - alpha; so
claiming ``Y_j > c`` for every j with ``mu(X_j) - t > c`` makes at most k false claims.
"""
from __future__ import annotations

import fractions
import functools
import itertools
import math
from typing import Callable, NamedTuple, Union

import numpy as np

from conformal import _checks
from conformal.split import absolute_residual_scores

Statistic = Union[str, tuple, Callable]
MAX_ENUMERATE = 2_000_000


class RankQuantile(NamedTuple):
  """``q``: the rank quantile (None: only sets containing an infinite bound reach 1 - alpha);
  ``coverage``: exact ``P(rho(R) <= q)``, or the most a finite set can reach when q is None;
  ``tops`` (sum/mean): the level set is every configuration with fewer than ``tops`` ranks at
  n+1, plus those with exactly ``tops`` whose other ranks sum to at most q."""
  q: int | None
  coverage: fractions.Fraction
  tops: int = 0


# --- the statistics -----------------------------------------------------------------------------

def _order_index(statistic, m: int) -> int | None:
  """z (1-based) for order-statistic orderings, None otherwise."""
  if isinstance(statistic, str):
    if statistic == "max":
      return m
    if statistic == "median":
      return m // 2 + 1
    return None
  if isinstance(statistic, tuple):
    if len(statistic) != 2 or statistic[0] != "order":
      raise ValueError(f"statistic={statistic!r}; a tuple must be ('order', z) with 1 <= z <= m.")
    z = statistic[1]
    if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 1 <= z <= m:
      raise ValueError(f"statistic=('order', {z!r}) needs an integer 1 <= z <= m={m}.")
    return int(z)
  return None


def _g_rho_flag(statistic, m: int):
  """(g on scores, rho on ranks, flag on ranks) as functions of arrays (..., m)."""
  z = _order_index(statistic, m)
  if z is not None:
    g_ord = (lambda x: np.median(x, axis=-1)) if statistic == "median" else \
        (lambda x: np.sort(x, axis=-1)[..., z - 1])
    return g_ord, lambda r: np.sort(r, axis=-1)[..., z - 1], None
  if statistic in ("sum", "mean"):
    g = (lambda x: np.sum(x, axis=-1)) if statistic == "sum" else (lambda x: np.mean(x, axis=-1))
    return g, lambda r: np.sum(r, axis=-1), None
  if callable(statistic):
    def g(x):
      out = np.asarray(statistic(x), dtype=np.float64)
      if out.shape != x.shape[:-1]:
        raise ValueError(f"statistic maps an array of shape {x.shape} to shape {out.shape}; it "
                         f"must reduce the last axis (shape {x.shape[:-1]}), e.g. "
                         "lambda x: np.mean(x, axis=-1).")
      return out
    return g, g, None
  raise ValueError(f"statistic={statistic!r}; use 'mean', 'sum', 'max', 'median', ('order', z) "
                   "or a callable reducing the last axis.")


# --- exact counting of rank configurations ------------------------------------------------------

def _need(total: int, a: fractions.Fraction) -> int:
  """Smallest count c with c >= (1 - alpha) * total."""
  return math.ceil((1 - a) * total)


def _sum_counts(k_max: int, m: int, upto: int | None = None) -> np.ndarray:
  """Python-int counts of m-multisets of {1..k_max} by ``sum_j (r_j - 1)``, index 0..upto.

  These are the coefficients of the Gaussian binomial ``[k_max-1+m choose m]_x`` =
  ``prod_{i=1..m} (1 - x^(k_max-1+i)) / (1 - x^i)``, computed as power series truncated at
  degree ``upto`` (default: all, ``m (k_max-1)``); truncation keeps every kept coefficient exact.
  """
  top = k_max - 1
  limit = m * top if upto is None else min(int(upto), m * top)
  p = np.zeros(limit + 1, dtype=object)
  p[0] = 1
  deg = 0
  for i in range(1, m + 1):
    shift = top + i
    hi = min(deg + shift, limit)               # degree after the multiplication (truncated)
    if shift <= hi:
      p[shift: hi + 1] -= p[: hi - shift + 1].copy()
    seg = p[: hi + 1]
    pad = (-len(seg)) % i                      # division by (1 - x^i): strided prefix sums
    block = np.concatenate([seg, np.zeros(pad, dtype=object)]).reshape(-1, i)
    p[: hi + 1] = np.cumsum(block, axis=0).reshape(-1)[: hi + 1]
    deg = i * top
  return p


def _order_counts(n: int, m: int, z: int) -> list[int]:
  """``#{multisets : r_(z) = k}`` for k = 1..n+1 (z-th test point has k-1 calibration points
  and z-1 test points below it, n-k+1 and m-z above)."""
  return [math.comb(k + z - 2, z - 1) * math.comb(n + m - k - z + 1, m - z)
          for k in range(1, n + 2)]


def rank_quantile(n: int, m: int, alpha, *, statistic: Statistic = "mean",
                  bounded: bool = False) -> RankQuantile:
  """The (1 - alpha) quantile q of the rank ordering function, in exact integer arithmetic.

  For ``sum``/``mean`` q is a rank sum; for ``max``/``median``/``('order', z)`` a rank in
  1..n+1 (``n+1`` meaning ``B = score_bound``). ``bounded=False`` orders configurations with an
  infinite bound last; q is None when those are needed to reach 1 - alpha. Cached: it depends
  on (n, m, alpha, statistic) only, never on the data.
  """
  a = _checks.alpha_fraction(alpha)
  m = _checks.check_m(m)
  if isinstance(n, bool) or int(n) != n or n < 1:
    raise ValueError(f"n={n} must be a positive integer (number of calibration scores).")
  if not isinstance(statistic, (str, tuple)):
    raise ValueError("rank_quantile takes a named statistic; a callable goes through enumeration.")
  return _rank_quantile(int(n), m, a, statistic, bool(bounded))


@functools.lru_cache(maxsize=256)
def _rank_quantile(n: int, m: int, a: fractions.Fraction, statistic, bounded: bool
                   ) -> RankQuantile:
  total = math.comb(n + m, m)
  need = _need(total, a)
  z = _order_index(statistic, m)
  if z is not None:
    cum = 0
    for k, c in enumerate(_order_counts(n, m, z), start=1):
      cum += c
      if cum >= need:
        if k == n + 1 and not bounded:
          return RankQuantile(None, fractions.Fraction(cum - c, total))
        return RankQuantile(k, fractions.Fraction(cum, total))
    raise AssertionError("order-statistic counts do not sum to C(n+m, m)")
  if statistic not in ("sum", "mean"):
    raise ValueError(f"rank_quantile has closed forms for 'sum', 'mean', 'max', 'median' and "
                     f"('order', z), not {statistic!r} (a callable goes through enumeration).")
  # Lexicographic order: number of ranks at n+1 first, then the sum of the others. Only when
  # the configurations avoiding the bound cannot reach 1 - alpha does the set take the bound.
  before = 0
  for tops in range(m + 1):
    c = m - tops
    mass = math.comb(n - 1 + c, c)             # c-multisets of {1..n}
    if before + mass >= need:
      break
    before += mass
  if tops > 0 and not bounded:
    return RankQuantile(None, fractions.Fraction(math.comb(n - 1 + m, m), total), tops)
  if c == 0:
    return RankQuantile(0, fractions.Fraction(before + 1, total), tops)
  q, count = _sum_quantile(n, c, need - before)
  return RankQuantile(q, fractions.Fraction(before + count, total), tops)


def _sum_quantile(k_max: int, c: int, need: int):
  """Smallest rank sum t (ranks in 1..k_max, c of them) with ``#{sum <= t} >= need``."""
  top = c * (k_max - 1)                        # largest sum_j (r_j - 1)
  full = math.comb(k_max - 1 + c, c)
  # The counts are symmetric (r -> k_max + 1 - r), so the lower half gives every cumulative
  # count: #{sum <= t} for t <= top/2 directly, and #{sum <= t} = full - #{sum <= top-t-1}.
  half = top // 2
  cum = [int(x) for x in np.cumsum(_sum_counts(k_max, c, upto=half))]

  def cdf(t):
    if t < 0:
      return 0
    if t <= half:
      return cum[t]
    return full - (cum[top - t - 1] if top - t - 1 >= 0 else 0)

  lo, hi = 0, top                              # cdf(top) = full >= need
  while lo < hi:
    mid = (lo + hi) // 2
    if cdf(mid) >= need:
      hi = mid
    else:
      lo = mid + 1
  return lo + c, cdf(lo)


# --- exact maximum of sum_j v[a_j] subject to sum_j a_j <= budget -------------------------------

def _upper_hull(v: np.ndarray):
  xs, ys = [], []
  for i, y in enumerate(v):
    while len(xs) >= 2 and (ys[-1] - ys[-2]) * (i - xs[-2]) <= (y - ys[-2]) * (xs[-1] - xs[-2]):
      xs.pop()
      ys.pop()
    xs.append(i)
    ys.append(float(y))
  return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def relaxed_max_sum(v, m: int, budget: int) -> float:
  """``m v~(budget / m)``: the concave-envelope (linear-programming) bound on ``max_sum``.

  O(K); never below the exact maximum, so a bound built on it is valid, only wider.
  """
  v = np.asarray(v, np.float64)
  if budget < 0:
    return -math.inf
  hx, hy = _upper_hull(v)
  return float(m * np.interp(min(budget / m, len(v) - 1), hx, hy))


def max_sum(v, m: int, budget: int):
  """Exact ``max sum_{j<=m} v[a_j]`` over multisets of {0..K-1} with ``sum_j a_j <= budget``.

  ``v`` must be nondecreasing. Returns ``(value, a)`` with ``a`` the maximizing multiset
  (sorted) and ``value = math.fsum(v[a])``; ``(-inf, None)`` when the budget is negative.
  """
  v = np.asarray(v, np.float64)
  k = len(v)
  if budget < 0:
    return -math.inf, None
  if budget >= m * (k - 1):
    a = np.full(m, k - 1)
    return math.fsum(v[a]), a
  hx, hy = _upper_hull(v)
  tol = 1e-9 * m * (float(np.max(np.abs(v))) + 1.0)

  def ub(c, rem):
    rem = np.asarray(rem, np.float64)
    if c == 0:
      return np.where(rem >= 0, 0.0, -np.inf)
    return np.where(rem >= 0, c * np.interp(np.minimum(rem / c, k - 1), hx, hy), -np.inf)

  # A feasible solution for the lower bound: the two envelope vertices around budget/m, the
  # leftover given to one item; and the balanced split.
  cands = []
  base, extra = divmod(budget, m)
  cands.append(np.array([base] * (m - extra) + [base + 1] * extra))
  if len(hx) > 1:
    i = min(max(int(np.searchsorted(hx, budget / m, side="right")) - 1, 0), len(hx) - 2)
    lo, hi = int(hx[i]), int(hx[i + 1])
    t = min((budget - m * lo) // (hi - lo), m)
    left = budget - t * hi - (m - t) * lo
    a = [hi] * t + [lo] * (m - t)
    if t < m:
      a[-1] = min(lo + left, k - 1)
    cands.append(np.array(a))
  lb = max(math.fsum(v[c]) for c in cands)

  idx = np.arange(k)
  first_of_tie = np.ones(k, bool)
  first_of_tie[1:] = v[1:] > v[:-1]          # a higher rank with the same score never helps
  keep = first_of_tie & (v + ub(m - 1, budget - idx) >= lb - tol)
  items = idx[keep]
  vals = v[items]

  # Layers j = 1..h with h = ceil(m/2); the items are identical, so the best m-item value is
  # the best split of the budget between layer h and layer m-h (meet in the middle).
  h = (m + 1) // 2
  layers = [(0, np.zeros(1))]                  # layers[j] = (smallest sum, best value by sum)
  prev, plo = layers[0][1], 0
  for j in range(1, h + 1):
    nlo = plo + int(items[0])
    nhi = min(plo + len(prev) - 1 + int(items[-1]), budget)
    out = np.full(nhi - nlo + 1, -np.inf)
    alive = np.flatnonzero(prev > -np.inf)
    if len(alive) <= len(items):
      for s in alive:                          # few states: scatter each over the items
        pos = plo + int(s) + items - nlo
        ok = pos < len(out)
        np.maximum.at(out, pos[ok], prev[s] + vals[ok])
    else:
      tmp = np.empty(len(prev))
      for it, val in zip(items, vals):         # few items: shift the whole layer
        st = plo + int(it) - nlo
        en = min(st + len(prev), len(out))
        if en > st:
          np.add(prev[: en - st], val, out=tmp[: en - st])
          np.maximum(out[st:en], tmp[: en - st], out=out[st:en])
    sums = np.arange(nlo, nhi + 1)
    out[out + ub(m - j, budget - sums) < lb - tol] = -np.inf
    nz = np.flatnonzero(out > -np.inf)
    if len(nz) == 0:                           # nothing beats the heuristic: it is optimal
      best = max(cands, key=lambda c: math.fsum(v[c]))
      return math.fsum(v[best]), np.sort(best)
    prev, plo = out[nz[0]: nz[-1] + 1], nlo + int(nz[0])
    layers.append((plo, prev))

  a_lo, a_arr = layers[h]
  b_lo, b_arr = layers[m - h]
  pref = np.maximum.accumulate(b_arr)          # best (m-h)-item value with sum <= t
  arg = np.zeros(len(b_arr), np.int64)         # ... and the sum that attains it
  better = np.flatnonzero(np.r_[True, b_arr[1:] > pref[:-1]])
  arg[better] = better
  arg = np.maximum.accumulate(arg)
  rest = budget - (a_lo + np.arange(len(a_arr))) - b_lo
  ok = rest >= 0
  total = np.full(len(a_arr), -np.inf)
  total[ok] = a_arr[ok] + pref[np.minimum(rest[ok], len(b_arr) - 1)]
  i = int(np.argmax(total))
  s_a = a_lo + i
  s_b = b_lo + int(arg[min(rest[i], len(b_arr) - 1)])

  def backtrack(j, s):
    chosen = []
    while j > 0:
      cur_lo, cur = layers[j]
      prev_lo, prev_arr = layers[j - 1]
      target = cur[s - cur_lo]
      for it, val in zip(items, vals):
        p = s - int(it) - prev_lo
        if 0 <= p < len(prev_arr) and prev_arr[p] + val == target:
          chosen.append(int(it))
          s -= int(it)
          break
      else:
        raise AssertionError("max_sum backtracking failed")
      j -= 1
    return chosen

  a = np.sort(np.array(backtrack(h, s_a) + backtrack(m - h, s_b)))
  best = max([a] + cands, key=lambda c: math.fsum(v[c]))
  return math.fsum(v[best]), np.sort(best)


# --- enumeration (any statistic; also the oracle the tests use) ---------------------------------

def _multisets(n_plus_1: int, m: int) -> np.ndarray:
  combos = itertools.combinations_with_replacement(range(1, n_plus_1 + 1), m)
  return np.fromiter(itertools.chain.from_iterable(combos), dtype=np.int64).reshape(-1, m)


def _enumerate_bound(s_ext: np.ndarray, m: int, a: fractions.Fraction, statistic,
                     bounded: bool) -> float:
  n = len(s_ext) - 1
  g, rho, _ = _g_rho_flag(statistic, m)
  r = _multisets(n + 1, m)
  key = rho(r.astype(np.float64))
  flag = np.zeros(len(r), np.int64)
  if statistic in ("sum", "mean"):
    flag = np.sum(r == n + 1, axis=-1)         # ranks at the bound first, as in rank_quantile
  elif not bounded:
    flag = (~np.isfinite(g(np.where(r == n + 1, np.inf, 0.0)))).astype(np.int64)
  order = np.lexsort((key, flag))              # flag first, then rho
  need = _need(len(r), a)
  cut = order[need - 1]
  level = (flag < flag[cut]) | ((flag == flag[cut]) & (key <= key[cut]))
  return float(np.max(g(s_ext[r[level] - 1])))


# --- public API ---------------------------------------------------------------------------------

def batch_quantile(cal_scores, m: int, alpha, *, statistic: Statistic = "mean",
                   score_bound: float = math.inf, method: str = "auto",
                   max_enumerate: int = MAX_ENUMERATE) -> float:
  """``B`` with ``P(g(T_1..T_m) <= B) >= 1 - alpha`` for the batch statistic g (module doc).

  ``method``: ``"auto"`` (closed form / dynamic program for the named statistics, enumeration
  for a callable), ``"dp"``, ``"enumerate"`` (all C(n+m, m) rank multisets; at most
  ``max_enumerate``) or ``"relaxed"`` (sum/mean only: the exact rank quantile, then the O(n)
  concave-envelope bound instead of the exact knapsack maximum; valid, slightly wider). Returns
  ``inf`` (with an ``InfiniteSetWarning``) when no finite set reaches the coverage.
  """
  s = np.sort(_checks.scores_1d(cal_scores))
  m = _checks.check_m(m)
  a = _checks.alpha_fraction(alpha)
  n = s.size
  bound = float(score_bound)
  if math.isnan(bound) or bound < s[-1]:
    raise ValueError(f"score_bound={score_bound} must be >= every calibration score "
                     f"(max {s[-1]}); it is an a-priori upper bound of the score (inf: none).")
  bounded = math.isfinite(bound)
  s_ext = np.append(s, bound)
  _g_rho_flag(statistic, m)                    # validates statistic
  named = isinstance(statistic, (str, tuple))
  if method == "auto":
    method = "dp" if named else "enumerate"
  if method not in ("dp", "enumerate", "relaxed"):
    raise ValueError(f"method={method!r}; use 'auto', 'dp', 'enumerate' or 'relaxed'.")
  if method == "relaxed" and statistic not in ("sum", "mean"):
    raise ValueError("method='relaxed' is for statistic 'sum' or 'mean' (the others are exact "
                     "in closed form).")
  if method in ("dp", "relaxed") and not named:
    raise ValueError("a callable statistic has no dynamic program; use method='enumerate' "
                     "(feasible while C(n+m, m) is small) or a named statistic.")
  if method == "enumerate":
    size = math.comb(n + m, m)
    if size > max_enumerate:
      raise ValueError(f"enumeration needs C(n+m, m) = C({n + m}, {m}) = {size:.3g} rank "
                       f"configurations > max_enumerate={max_enumerate}; "
                       + ("use method='dp'." if named else
                          "a callable statistic has no dynamic program: use 'mean', 'sum', 'max', "
                          "'median' or ('order', z), or raise max_enumerate."))
    out = _enumerate_bound(s_ext, m, a, statistic, bounded)
  else:
    rq = rank_quantile(n, m, a, statistic=statistic, bounded=bounded)
    if rq.q is None:
      out = math.inf
    elif _order_index(statistic, m) is not None:
      out = float(s_ext[rq.q - 1])
    else:
      c = m - rq.tops                          # ranks below n+1 in the extreme configuration
      at_bound = rq.tops * bound if rq.tops else 0.0
      if c == 0:
        total = at_bound
      elif method == "relaxed":
        total = at_bound + relaxed_max_sum(s, c, rq.q - c)
      else:
        total = at_bound + max_sum(s, c, rq.q - c)[0]
      if rq.tops > 0:                          # every configuration with one top rank fewer
        total = max(total, (rq.tops - 1) * bound + (c + 1) * float(s[-1]))
      out = total / m if statistic == "mean" else total
  if math.isinf(out):
    rq_msg = ""
    if named:
      rq = rank_quantile(n, m, a, statistic=statistic, bounded=False)
      rq_msg = (f" Without a score bound the most a finite set can cover here is "
                f"{float(rq.coverage):.4f}.")
    _checks.warn_infinite(
        f"batch PI with n={n} calibration scores, m={m}, statistic={statistic!r}: no finite "
        f"set reaches {float(1 - a):.4g} coverage, so the prediction set is the whole space "
        f"(bound = +inf).{rq_msg} Use more calibration data, a larger alpha, or a finite "
        "score_bound.")
  return out


def _batch_view(test_pred):
  t = _checks.finite_array(test_pred, "test_pred")
  if t.ndim == 0:
    raise ValueError("test_pred must have a last axis of length m (the batch).")
  return t


def mean_response_interval(cal_y, cal_pred, test_pred, *, alpha, method: str = "batch",
                           y_range=None):
  """(1 - alpha) interval ``(lower, upper)`` for the mean of the m unseen test responses.

  ``test_pred`` has shape ``(..., m)``: the last axis is the batch, leading axes are independent
  batches (vectorized). Scores are absolute residuals of any model's predictions. ``y_range =
  (lo, hi)`` is an a-priori range of the response: the score bound becomes the largest
  ``max(hi - pred, pred - lo)`` over all predictions, and the interval is clipped to the range.
  ``method``: ``"batch"``, ``"bonferroni"`` or ``"partition"``.
  """
  scores = absolute_residual_scores(cal_y, cal_pred)
  _checks.same_length(cal_y=np.atleast_1d(cal_y), cal_pred=np.atleast_1d(cal_pred))
  t = _batch_view(test_pred)
  m = t.shape[-1]
  bound = math.inf
  if y_range is not None:
    lo, hi = (float(x) for x in y_range)
    if not lo < hi:
      raise ValueError(f"y_range={y_range} must be (lo, hi) with lo < hi.")
    # Every score |y - pred| with y in [lo, hi] is at most max(hi - pred, pred - lo): a bound on
    # all n + m scores (predictions outside the range included) is all the argument needs.
    preds = np.concatenate([np.ravel(cal_pred), np.ravel(t)]).astype(np.float64)
    bound = max(float(np.max(np.maximum(hi - preds, preds - lo))), float(scores.max()))
  a = _checks.alpha_fraction(alpha)
  if method == "batch":
    half = batch_quantile(scores, m, a, statistic="mean", score_bound=bound)
  elif method == "bonferroni":
    half = _bonferroni_threshold(scores, m, a, 0, bound)
  elif method == "partition":
    half = _partition_half_width(scores, m, a, bound)
  else:
    raise ValueError(f"method={method!r}; use 'batch', 'bonferroni' or 'partition'.")
  center = t.mean(axis=-1)
  lower, upper = center - half, center + half
  if y_range is not None:
    lower, upper = np.maximum(lower, lo), np.minimum(upper, hi)
  return lower, upper


def _bonferroni_threshold(scores, m, a, k_errors, bound) -> float:
  """Split-conformal threshold at level ``alpha (k+1) / m`` per point (Bonferroni for k = 0,
  its Lehmann-Romano generalization for at most k exceedances)."""
  s = np.sort(scores)
  n = s.size
  beta = a * (k_errors + 1) / m
  if beta >= 1:
    return float(-math.inf)
  k = math.ceil((n + 1) * (1 - beta))
  if k > n:
    if not math.isfinite(bound):
      _checks.warn_infinite(f"Bonferroni with n={n}, m={m}: ceil((n+1)(1-alpha/m)) = {k} > n, "
                            "the set is the whole space (threshold +inf).")
    return bound
  return float(s[k - 1])


def _partition_half_width(scores, m, a, bound) -> float:
  n = scores.size
  size = n // m
  if size < 1:
    raise ValueError(f"partitioning needs at least one calibration point per test point: "
                     f"n={n} < m={m}.")
  # Smallest k with (k / (size+1))^m >= 1 - alpha: Sidak across m independent groups.
  k = 1
  while k ** m < (size + 1) ** m * (1 - a):
    k += 1
  groups = np.sort(scores[: size * m].reshape(m, size), axis=1)
  if k > size:
    if not math.isfinite(bound):
      _checks.warn_infinite(f"partitioning with groups of {size}: the Sidak rank {k} exceeds the "
                            "group size, the set is the whole space (threshold +inf).")
    return bound
  return float(groups[:, k - 1].mean())


def simultaneous_threshold(cal_scores, m: int, alpha, *, k_errors: int = 0,
                           method: str = "batch", score_bound: float = math.inf) -> float:
  """t with ``P(at most k_errors of the m test scores exceed t) >= 1 - alpha``.

  ``k_errors = 0`` gives simultaneous sets ``{y : s(X_j, y) <= t}`` covering all m test points at
  once. ``method="batch"``: the order-statistic batch bound; ``"bonferroni"``: the per-point
  threshold at level ``alpha (k+1)/m``.
  """
  m = _checks.check_m(m)
  if isinstance(k_errors, bool) or int(k_errors) != k_errors or not 0 <= k_errors < m:
    raise ValueError(f"k_errors={k_errors} must be an integer in [0, m) with m={m}.")
  s = _checks.scores_1d(cal_scores)
  a = _checks.alpha_fraction(alpha)
  if method == "batch":
    return batch_quantile(s, m, a, statistic=("order", m - int(k_errors)), score_bound=score_bound)
  if method == "bonferroni":
    return _bonferroni_threshold(s, m, a, int(k_errors), float(score_bound))
  raise ValueError(f"method={method!r}; use 'batch' or 'bonferroni'.")


def select_with_false_claims(cal_y, cal_pred, test_pred, *, cutoff: float, alpha,
                             max_false: int = 0, method: str = "batch") -> np.ndarray:
  """Boolean mask (shape of ``test_pred``) of test points claimed to have ``Y_j > cutoff``.

  With probability >= 1 - alpha at most ``max_false`` of the claims are false. Scores are
  ``pred - y`` (how far a response falls below its prediction); the last axis of ``test_pred``
  is the batch.
  """
  y = _checks.finite_array(cal_y, "cal_y")
  p = _checks.finite_array(cal_pred, "cal_pred")
  _checks.same_length(cal_y=np.atleast_1d(y), cal_pred=np.atleast_1d(p))
  t = _batch_view(test_pred)
  thr = simultaneous_threshold(p - y, t.shape[-1], alpha, k_errors=max_false, method=method)
  return t - thr > cutoff
