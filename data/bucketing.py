"""Duration bucketing for speech batches: lhotse's 1D bins, NeMo-style 2D bins, and a batcher
whose bucket choice is synchronized across data-parallel processes (NumPy only).

Canary's efficiency paper (Zelasko et al., arXiv:2503.05931) reports that careless batching
spends over half of the compute on padding; bucketing by duration (1D) or by duration x output
tokens (2D) removes most of it. Facts used here: ../shared/research/speech_privacy_conformal.md
section A (lhotse ``estimate_duration_buckets``, NeMo ``estimate_duration_bins_2d.py``).

1D bins (lhotse). Sort the durations d_(1) <= ... <= d_(n); s = sum(d) / num_buckets. Walk the
sorted list with a running total T (starting at 0): before adding d_(j), if T > s (strict),
d_(j) becomes a boundary and T resets to 0; then T += d_(j). At most ``num_buckets - 1``
boundaries (duplicates possible). Assignment is ``bisect_left``: bucket k holds
``bins[k-1] < d <= bins[k]``, so a duration equal to a boundary goes to the LOWER bucket (the
tie rule lhotse's code applies, whatever its docstring says).

2D bins (NeMo). Duration groups come from the 1D bins plus the largest duration (equal
boundaries merged; a group merged from m of lhotse's buckets gets m x ``num_subbuckets``
token sub-buckets). Inside each group, examples whose tokens-per-second z-score exceeds
``tps_outlier_z`` are dropped (upper tail only), the group's ``max_tps`` is the largest
remaining TPS, and the same accumulate loop over the sorted token counts gives the token
boundaries, closed by the group's largest token count. Unlike NeMo's script, groups are formed
by the assignment rule (by value, not by sorted index) and boundaries are not rounded to
3 decimals, so every non-outlier example of the estimation set is covered by exactly one bin.

Batcher. Every bucket has a static padded shape (its max duration and max tokens) and a fixed
batch size per process, so each bucket compiles once. Batch sizes come from the OOMptimizer
(a list/dict/JSON) or from a max-duration budget: B_k = floor(D / e(dmax_k)), with lhotse's
optional quadratic penalty e(d) = d + d^2 / q. All processes hold the same (duration, tokens)
metadata; global step t of epoch e picks bucket k with probability proportional to its
remaining global batches, from an RNG seeded by (seed, epoch, t), so every rank picks the same
bucket; each rank takes its own slice of that bucket's global batch. A bucket's last partial
batch is carried into the next bucket whose shape holds it (default), padded, or dropped. The
state is ``{epoch, step, taken}``: JSON, restored exactly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

TOO_LONG = -1  # assignment code: longer (or more tokens) than the largest bucket allows
TPS_OUTLIER = -2  # assignment code: tokens/second above its duration group's max_tps


def _vector(x, name: str, *, positive: bool) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if a.ndim != 1 or a.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {a.shape}")
  bad = ~np.isfinite(a) | ((a <= 0) if positive else (a < 0))
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{name}[{i}] = {a[i]} is not a finite {'positive' if positive else 'non-negative'}"
                     f" number; remove or fix that example")
  return a


def _accumulate_boundaries(sorted_sizes: np.ndarray, per_bucket: float) -> list[float]:
  """lhotse's accumulate loop on already sorted sizes, vectorized per window.

  After a reset at index i the running total before adding sizes[j] is
  sizes[i] + ... + sizes[j-1], which ``np.cumsum`` forms with the same left-to-right float
  additions as the scalar loop (``add.accumulate`` is sequential; a window continues from the
  previous window's last total, never adds partial sums), so the boundaries are bit-identical
  to the loop's. Windows double from the mean segment length: O(n) work for any bucket count.
  """
  bins, start, n = [], 0, sorted_sizes.size
  total = float(sorted_sizes.sum())
  first_window = max(16, int(n * per_bucket / total) + 1) if total > 0 else n
  while start < n - 1:
    pos, window, carried = start, first_window, None
    while True:  # totals checked before indices pos+1 .. end
      end = min(n - 1, pos + window)
      seg = sorted_sizes[pos:end]
      running = (np.cumsum(seg) if carried is None
                 else np.cumsum(np.concatenate(([carried], seg)))[1:])
      over = np.flatnonzero(running > per_bucket)
      if over.size or end == n - 1:
        break
      pos, window, carried = end, window * 2, running[-1]
    if over.size == 0:
      return bins
    start = pos + int(over[0]) + 1
    bins.append(float(sorted_sizes[start]))
  return bins


def estimate_duration_bins(durations: Sequence[float], num_buckets: int) -> list[float]:
  """lhotse's ``estimate_duration_buckets``: at most ``num_buckets - 1`` duration boundaries.

  Equal-duration buckets: each holds about sum(d) / num_buckets seconds of audio. Assign with
  :func:`assign_buckets` (``bisect_left``: a duration equal to a boundary is in the lower
  bucket). ``[1]*5 + [2]*5`` with 2 buckets gives ``[2.0]`` and all ten in bucket 0.
  """
  d = np.sort(_vector(durations, "durations", positive=False))
  if isinstance(num_buckets, bool) or not isinstance(num_buckets, (int, np.integer)) \
      or not 2 <= num_buckets <= d.size:
    raise ValueError(f"num_buckets must be an integer in [2, {d.size}] (the number of "
                     f"durations), got {num_buckets!r}")
  return _accumulate_boundaries(d, d.sum() / num_buckets)


def assign_buckets(bins: Sequence[float], durations) -> np.ndarray:
  """Strict 1D assignment (lhotse ``select_bucket``): ``bisect_left(bins, d)`` per duration,
  in ``[0, len(bins)]``; bucket k holds ``bins[k-1] < d <= bins[k]``, the last is unbounded."""
  return np.searchsorted(np.asarray(bins, dtype=np.float64),
                         np.asarray(durations, dtype=np.float64), side="left")


@dataclasses.dataclass(frozen=True)
class BucketGrid:
  """Buckets as rows of (max_duration, max_tokens), sorted; ``max_tps`` per row or None.

  Strict assignment (NeMo ``find_smallest_bucket``): the duration group is the first
  ``max_duration`` value >= d (``bisect_left``); an example whose tokens/second exceeds that
  group's ``max_tps`` is a :data:`TPS_OUTLIER`; inside the group the row is the first
  ``max_tokens`` >= t. Nothing falls through to a longer group, so an example with too many
  tokens for its group is :data:`TOO_LONG`, like one longer than the last group.
  """
  max_duration: tuple[float, ...]
  max_tokens: tuple[int, ...]
  max_tps: tuple[float, ...] | None = None

  def __post_init__(self):
    k = len(self.max_duration)
    if k == 0 or len(self.max_tokens) != k or (self.max_tps is not None and len(self.max_tps) != k):
      raise ValueError("BucketGrid needs equally long, non-empty max_duration / max_tokens "
                       "(/ max_tps) lists")
    rows = list(zip(self.max_duration, self.max_tokens))
    if any(b <= a for a, b in zip(rows, rows[1:])):
      raise ValueError("BucketGrid rows must be strictly increasing in (max_duration, "
                       f"max_tokens); got {rows}")

  @property
  def num_buckets(self) -> int:
    return len(self.max_duration)

  def assign(self, durations, num_tokens) -> np.ndarray:
    """Bucket index per example, or :data:`TOO_LONG` / :data:`TPS_OUTLIER`."""
    d = np.asarray(durations, dtype=np.float64)
    t = np.asarray(num_tokens, dtype=np.float64)
    dur = np.asarray(self.max_duration)
    groups = np.unique(dur)
    out = np.full(d.shape, TOO_LONG, dtype=np.int64)
    g = np.searchsorted(groups, d, side="left")
    for gi, gdur in enumerate(groups):
      rows = np.flatnonzero(dur == gdur)
      sel = np.flatnonzero(g == gi)
      if self.max_tps is not None:
        outlier = t[sel] / d[sel] > self.max_tps[rows[0]]
        out[sel[outlier]] = TPS_OUTLIER
        sel = sel[~outlier]
      r = np.searchsorted(np.asarray(self.max_tokens)[rows], t[sel], side="left")
      fits = r < rows.size
      out[sel[fits]] = rows[r[fits]]
    return out

  def to_dict(self) -> dict[str, Any]:
    return {"max_duration": list(self.max_duration), "max_tokens": list(self.max_tokens),
            "max_tps": None if self.max_tps is None else list(self.max_tps)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "BucketGrid":
    tps = d.get("max_tps")
    return cls(tuple(float(x) for x in d["max_duration"]), tuple(int(x) for x in d["max_tokens"]),
               None if tps is None else tuple(float(x) for x in tps))


def _group_edges(d: np.ndarray, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
  """Unique duration group edges (lhotse's bins + the max) and how many lhotse buckets each
  merges (equal boundaries, or a last boundary equal to the max, collapse into one)."""
  edges = estimate_duration_bins(d, num_buckets) + [float(d.max())]
  return np.unique(np.asarray(edges), return_counts=True)


def estimate_1d_grid(durations, num_tokens, num_buckets: int) -> BucketGrid:
  """lhotse's duration buckets as a grid: each bucket padded to its largest duration (the last
  to the largest in the data) and to the most tokens any of its examples has."""
  d = _vector(durations, "durations", positive=True)
  t = _tokens(num_tokens, d.size)
  edges, _ = _group_edges(d, num_buckets)
  k = np.searchsorted(edges, d, side="left")
  max_tok = [int(t[k == i].max()) for i in range(edges.size)]
  return BucketGrid(tuple(float(e) for e in edges), tuple(max_tok))


def _tokens(num_tokens, n: int) -> np.ndarray:
  t = _vector(num_tokens, "num_tokens", positive=False)
  if t.size != n or (t != np.round(t)).any():
    raise ValueError(f"num_tokens must be {n} non-negative integers, one per duration")
  return t


def estimate_2d_bins(durations, num_tokens, num_buckets: int, num_subbuckets: int,
                     tps_outlier_z: float = 4.0) -> BucketGrid:
  """NeMo-style 2D bins: duration groups, then output-token sub-bins per group (see module
  docstring), after dropping tokens-per-second outliers with z-score > ``tps_outlier_z``
  inside each group. A group whose TPS all agree (std 0) has no outliers."""
  d = _vector(durations, "durations", positive=True)
  t = _tokens(num_tokens, d.size)
  if not isinstance(num_subbuckets, (int, np.integer)) or num_subbuckets < 1:
    raise ValueError(f"num_subbuckets must be a positive integer, got {num_subbuckets!r}")
  if not tps_outlier_z > 0:
    raise ValueError(f"tps_outlier_z must be > 0 (a z-score threshold), got {tps_outlier_z}")
  edges, merged = _group_edges(d, num_buckets)
  g = np.searchsorted(edges, d, side="left")
  dur, tok, tps_max = [], [], []
  for gi, edge in enumerate(edges):
    gd, gt = d[g == gi], t[g == gi]
    keep = ~tps_outliers(gt / gd, tps_outlier_z)
    gt_sorted = np.sort(gt[keep])
    sub = int(num_subbuckets * merged[gi])
    bounds = _accumulate_boundaries(gt_sorted, gt_sorted.sum() / sub) + [float(gt_sorted[-1])]
    for b in np.unique(bounds):
      dur.append(float(edge))
      tok.append(int(b))
      tps_max.append(float((gt[keep] / gd[keep]).max()))
  return BucketGrid(tuple(dur), tuple(tok), tuple(tps_max))


def tps_outliers(tps: np.ndarray, z: float) -> np.ndarray:
  """Upper-tail outliers: (tps - mean) / std > z (population std); none when std is 0."""
  std = tps.std()
  if std == 0:
    return np.zeros(tps.shape, dtype=bool)
  return (tps - tps.mean()) / std > z


def batch_sizes_for_max_duration(grid: BucketGrid, max_duration: float,
                                 quadratic_duration: float | None = None) -> list[int]:
  """Per-bucket batch size B_k = floor(D / e(dmax_k)), e(d) = d (+ d^2 / q with lhotse's
  ``quadratic_duration`` q), so a padded batch never exceeds D effective seconds."""
  if not max_duration > 0:
    raise ValueError(f"max_duration must be > 0 seconds, got {max_duration}")
  if quadratic_duration is not None and not quadratic_duration > 0:
    raise ValueError(f"quadratic_duration must be > 0 seconds or None, got {quadratic_duration}")
  sizes = []
  for dmax in grid.max_duration:
    eff = dmax + (dmax * dmax / quadratic_duration if quadratic_duration else 0.0)
    b = int(max_duration // eff)
    while (b + 1) * eff <= max_duration:  # guard floor against float division rounding
      b += 1
    while b > 0 and b * eff > max_duration:
      b -= 1
    if b == 0:
      raise ValueError(f"max_duration={max_duration} s cannot hold one example of the "
                       f"{dmax:.3f} s bucket (effective {eff:.3f} s); raise max_duration")
    sizes.append(b)
  return sizes


def _batch_sizes(spec, k: int) -> list[int]:
  if isinstance(spec, (str, os.PathLike)):
    text = str(spec).strip()
    if not text.startswith(("{", "[")):  # a path to the OOMptimizer's JSON file
      if not os.path.isfile(text):
        raise ValueError(f"batch_sizes file {text} does not exist; pass a list, a dict, JSON "
                         "text or the path of the OOMptimizer's bucket_batch_sizes JSON")
      with open(text, encoding="utf-8") as f:
        text = f.read()
    try:
      spec = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"batch_sizes is not valid JSON ({e}); expected a list of {k} "
                       "positive integers or {\"bucket_batch_sizes\": [...]}") from None
  if isinstance(spec, Mapping):
    if "bucket_batch_sizes" in spec:
      return _batch_sizes(spec["bucket_batch_sizes"], k)
    try:
      spec = [spec[i] if i in spec else spec[str(i)] for i in range(k)]
    except KeyError:
      raise ValueError(f"batch_sizes has no entry for every bucket 0..{k - 1}: keys "
                       f"{sorted(spec)}") from None
  sizes = list(spec)
  if len(sizes) != k or any(isinstance(b, bool) or int(b) != b or b < 1 for b in sizes):
    raise ValueError(f"batch_sizes must be {k} positive integers (one per bucket), got {sizes}")
  return [int(b) for b in sizes]


class BucketedBatches:
  """This process's batches of example indices, synchronized across processes, resumable.

  ``batch_sizes``: per bucket, as a list, a ``{bucket: size}`` dict, JSON text, or the path of
  a JSON file (a list, such a dict, or ``{"bucket_batch_sizes": [...]}``).

  Each batch is a dict: ``bucket``, ``indices`` (int64, length = the bucket's batch size;
  -1 marks padding rows of a final partial batch), ``mask`` (indices >= 0), ``max_duration``
  and ``max_tokens`` (the static padded shape), ``epoch`` and ``step``. ``dropped`` counts
  the examples outside every bucket (``too_long="drop"``; ``"error"`` raises instead) and the
  TPS outliers. ``remainder`` (``carry``/``pad``/``drop``) decides each bucket's last partial
  batch (see ``_epoch_layout``). ``num_epochs=None`` iterates forever.
  """

  def __init__(self, durations, num_tokens, grid: BucketGrid, *, batch_sizes=None,
               max_duration: float | None = None, quadratic_duration: float | None = None,
               seed: int = 0, shuffle: bool = True, num_processes: int = 1,
               process_index: int = 0, too_long: str = "drop", remainder: str = "carry",
               num_epochs: int | None = None):
    d = _vector(durations, "durations", positive=True)
    t = _tokens(num_tokens, d.size)
    if (batch_sizes is None) == (max_duration is None):
      raise ValueError("pass exactly one of batch_sizes (per bucket, e.g. the OOMptimizer's "
                       "JSON) or max_duration (seconds per batch)")
    if too_long not in ("drop", "error"):
      raise ValueError(f"too_long must be 'drop' or 'error', got {too_long!r}")
    if remainder not in ("carry", "pad", "drop"):
      raise ValueError(f"remainder must be 'carry', 'pad' or 'drop', got {remainder!r}")
    if not (isinstance(num_processes, (int, np.integer)) and num_processes >= 1
            and isinstance(process_index, (int, np.integer))
            and 0 <= process_index < num_processes):
      raise ValueError(f"need num_processes >= 1 and 0 <= process_index < num_processes, got "
                       f"{num_processes}, {process_index}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    self.grid = grid
    self.batch_sizes = (_batch_sizes(batch_sizes, grid.num_buckets) if batch_sizes is not None
                        else batch_sizes_for_max_duration(grid, max_duration, quadratic_duration))
    codes = grid.assign(d, t)
    if too_long == "error" and (codes == TOO_LONG).any():
      i = int(np.flatnonzero(codes == TOO_LONG)[0])
      raise ValueError(f"example {i} ({d[i]:.3f} s, {int(t[i])} tokens) fits no bucket (largest "
                       f"{max(grid.max_duration):.3f} s / {max(grid.max_tokens)} tokens); pass "
                       f"too_long='drop' to drop and count such examples")
    self.dropped = {"too_long": int((codes == TOO_LONG).sum()),
                    "tps_outlier": int((codes == TPS_OUTLIER).sum())}
    if (codes < 0).all():
      raise ValueError(f"every example was dropped ({self.dropped}); the grid does not fit "
                       "this data: estimate it from these durations and tokens")
    self._members = [np.flatnonzero(codes == k) for k in range(grid.num_buckets)]
    self._global = [b * num_processes for b in self.batch_sizes]
    # Rows are sorted by (duration, tokens), so a later row with at least as many tokens holds
    # every example of row k: the first such row takes row k's tail.
    tok = grid.max_tokens
    self._carry_to = [next((j for j in range(k + 1, len(tok)) if tok[j] >= tok[k]), None)
                      for k in range(len(tok))]
    self._seed, self._shuffle, self._num_epochs = int(seed), shuffle, num_epochs
    self._remainder = remainder
    self._layout_epoch, self._layout = None, None
    # batch counts per bucket depend on the bucket sizes only, not on the epoch's shuffle
    self._available = self._epoch_layout(0)[1]
    if self._available.sum() == 0:
      raise ValueError("no bucket holds one full global batch (batch size x num_processes); "
                       "lower the batch sizes or pass remainder='carry' or 'pad'")
    self._rank, self._n = int(process_index), d.size
    self._epoch, self._step = 0, 0
    self._taken = np.zeros(grid.num_buckets, dtype=np.int64)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def _epoch_layout(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Each bucket's example order and batch count in ``epoch``: a pure function of the seed
    and the epoch, so a restored state needs no example lists.

    A bucket's last partial global batch (its tail) is, by ``remainder``: ``carry``: appended
    to the first later bucket whose shape holds it (rows ascending, so a tail can move on
    again); a tail that no later bucket's shape holds is padded; ``pad``: emitted with -1
    rows (a static shape costs their compute); ``drop``: left out of this epoch (a reshuffle
    picks other examples next epoch).
    """
    if self._layout_epoch != epoch:
      pools = [np.random.default_rng([self._seed, epoch, k]).permutation(m) if self._shuffle
               else m for k, m in enumerate(self._members)]
      available = np.zeros(len(pools), dtype=np.int64)
      for k, g in enumerate(self._global):
        full = pools[k].size // g
        tail = pools[k][full * g:]
        if tail.size and self._remainder == "carry" and self._carry_to[k] is not None:
          j = self._carry_to[k]
          pools[j] = np.concatenate([pools[j], tail])
          pools[k], tail = pools[k][:full * g], tail[:0]
        available[k] = full + (1 if tail.size and self._remainder != "drop" else 0)
      self._layout_epoch, self._layout = epoch, (pools, available)
    return self._layout

  def __next__(self) -> dict[str, Any]:
    remaining = self._available - self._taken
    if remaining.sum() == 0:
      self._epoch, self._step, self._taken[:] = self._epoch + 1, 0, 0
      remaining = self._available.copy()
    if self._num_epochs is not None and self._epoch >= self._num_epochs:
      raise StopIteration
    # Integer draw so every process, whatever its float quirks, picks the same bucket.
    u = np.random.default_rng([self._seed, self._epoch, self._step, 1]).integers(remaining.sum())
    k = int(np.searchsorted(np.cumsum(remaining), u, side="right"))
    g, b = self._global[k], self.batch_sizes[k]
    chunk = self._epoch_layout(self._epoch)[0][k][self._taken[k] * g:(self._taken[k] + 1) * g]
    chunk = np.concatenate([chunk, np.full(g - chunk.size, -1, dtype=np.int64)])
    local = chunk[self._rank * b:(self._rank + 1) * b].astype(np.int64)
    batch = {"bucket": k, "indices": local, "mask": local >= 0,
             "max_duration": self.grid.max_duration[k], "max_tokens": self.grid.max_tokens[k],
             "epoch": self._epoch, "step": self._step}
    self._taken[k] += 1
    self._step += 1
    return batch

  def static_shapes(self, sample_rate: int = 16_000) -> list[dict[str, int]]:
    """One padded shape per bucket (what compiles): this process's batch size, audio samples
    ceil(max_duration x sample_rate) and output tokens; the OOMptimizer's search space."""
    if not isinstance(sample_rate, int) or sample_rate <= 0:
      raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return [{"bucket": k, "batch_size": b,
             # round first: 4.0 s x 16 kHz must give 64000 samples, not 64001 from float noise
             "num_samples": math.ceil(round(dmax * sample_rate, 6)), "max_tokens": tmax}
            for k, (b, dmax, tmax) in enumerate(zip(self.batch_sizes, self.grid.max_duration,
                                                    self.grid.max_tokens))]

  def get_state(self) -> dict[str, Any]:
    """JSON-safe; save it with the checkpoint."""
    return {"epoch": self._epoch, "step": self._step, "taken": self._taken.tolist(),
            "num_examples": self._n, "batch_sizes": list(self.batch_sizes)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continue exactly where ``get_state`` was taken (same data, grid, sizes and seed)."""
    if (state.get("num_examples") != self._n
        or list(state.get("batch_sizes", [])) != list(self.batch_sizes)
        or len(state.get("taken", [])) != self.grid.num_buckets):
      raise ValueError("iterator state is from a different setup (example count, buckets or "
                       "batch sizes differ); rebuild the batcher with the original arguments")
    taken = np.asarray(state["taken"], dtype=np.int64)
    if (taken < 0).any() or (taken > self._available).any():
      raise ValueError(f"iterator state has impossible batch counts {taken.tolist()}")
    self._epoch, self._step, self._taken = int(state["epoch"]), int(state["step"]), taken


def padding_fractions(batches, durations, num_tokens) -> dict[str, float]:
  """1 - real / padded, for audio seconds and tokens, over batches with ``indices`` (-1 =
  padding row), ``max_duration`` and ``max_tokens`` (each row is padded to those)."""
  d = np.asarray(durations, dtype=np.float64)
  t = np.asarray(num_tokens, dtype=np.float64)
  real_d = real_t = pad_d = pad_t = 0.0
  n_batches = n_examples = 0
  for b in batches:
    idx = np.asarray(b["indices"])
    valid = idx[idx >= 0]
    real_d += d[valid].sum()
    real_t += t[valid].sum()
    pad_d += idx.size * b["max_duration"]
    pad_t += idx.size * b["max_tokens"]
    n_batches += 1
    n_examples += valid.size
  if n_batches == 0:
    raise ValueError("padding_fractions got no batches")
  return {"duration": 1.0 - real_d / pad_d, "tokens": 1.0 - real_t / pad_t if pad_t else 0.0,
          "batches": n_batches, "mean_batch_size": n_examples / n_batches}


__all__ = ["TOO_LONG", "TPS_OUTLIER", "BucketGrid", "BucketedBatches", "assign_buckets",
           "batch_sizes_for_max_duration", "estimate_1d_grid", "estimate_2d_bins",
           "estimate_duration_bins", "padding_fractions", "tps_outliers"]
