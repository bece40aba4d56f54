"""data/bucketing.py: lhotse's 1D bins bit for bit, NeMo-style 2D bins, the synchronized,
resumable batcher."""
import bisect
import json

import numpy as np
import pytest

from data import bucketing as bk


def lhotse_loop(durations, num_buckets):
  """Independent transcription of lhotse's estimate_duration_buckets (dynamic_bucketing.py,
  lhotse@a79cc86): sort, size_per_bucket = sum / num_buckets, scalar accumulate loop."""
  sizes = np.array([float(x) for x in durations])
  sizes.sort()
  size_per_bucket = sizes.sum() / num_buckets
  bins = []
  tot = 0.0
  for size in sizes:
    if tot > size_per_bucket:
      bins.append(size)
      tot = 0.0
    tot += size
  return bins


def long_tail(rng, n):
  """Log-normal durations (median ~4 s, tail to 30 s) and ~3 tokens/s with per-utterance noise."""
  d = np.clip(rng.lognormal(np.log(4.0), 0.7, n), 0.3, 30.0)
  t = np.maximum(0, np.round(d * rng.normal(3.0, 0.6, n))).astype(np.int64)
  return d, t


def test_ties_example():
  bins = bk.estimate_duration_bins([1] * 5 + [2] * 5, 2)
  assert bins == [2.0]
  assert bk.assign_buckets(bins, [1] * 5 + [2] * 5).tolist() == [0] * 10


@pytest.mark.parametrize("kind", ["continuous", "ties", "integers"])
def test_equals_lhotse_transcription(kind):
  for seed in range(40):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    if kind == "continuous":
      d = rng.lognormal(1.0, 0.8, n)
    elif kind == "ties":
      d = np.round(rng.lognormal(1.0, 0.8, n), 1)  # many equal durations
    else:
      d = rng.integers(1, 4, n).astype(float)  # a handful of values: boundaries tie a lot
    k = int(rng.integers(2, n + 1)) if seed % 2 else int(rng.integers(2, min(n, 30) + 1))
    ours, ref = bk.estimate_duration_bins(d, k), lhotse_loop(d, k)
    assert ours == [float(x) for x in ref], (seed, n, k)
    assert len(ours) <= k - 1
    assert bk.assign_buckets(ours, d).tolist() == [bisect.bisect_left(ref, x) for x in d]


def test_equals_lhotse_itself():
  """The installed lhotse's estimate_duration_buckets (on dummy cuts) and its bisect_left."""
  from lhotse import CutSet  # pylint: disable=import-outside-toplevel
  from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets  # pylint: disable=import-outside-toplevel
  from lhotse.testing.dummies import dummy_cut  # pylint: disable=import-outside-toplevel
  for seed in range(12):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    d = np.round(rng.lognormal(1.0, 0.8, n), 2) if seed % 2 else rng.integers(1, 4, n) * 1.0
    k = int(rng.integers(2, min(n, 30) + 1))
    cuts = CutSet.from_cuts(dummy_cut(i, duration=float(x)) for i, x in enumerate(d))
    ref = [float(x) for x in estimate_duration_buckets(cuts, k)]
    assert bk.estimate_duration_bins(d, k) == ref, (seed, n, k)
    assert bk.assign_buckets(ref, d).tolist() == [bisect.bisect_left(ref, x) for x in d]


def test_lhotse_sampler_padding_accounting():
  """benchmarks.bucketing_padding.lhotse_rows: every cut in exactly one batch, and lhotse's
  bucketing pads less than one batch padded to the longest cut."""
  from benchmarks import bucketing_padding  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  d, t = long_tail(rng, 500)
  d = np.round(d, 2)  # dummy cuts keep durations to the sample: round so sums are exact
  rows = bucketing_padding.lhotse_rows(d, t, max_duration=60.0, num_buckets=6)
  for r in rows:
    assert r["mean_batch_size"] * r["batches"] == pytest.approx(d.size)
    assert 0.0 < r["duration"] < 1.0 and 0.0 < r["tokens"] < 1.0
  lower = 1 - d.sum() / (d.size * d.max())  # one batch padded to the longest: the worst case
  assert rows[0]["duration"] < lower


def test_estimate_bad_input():
  with pytest.raises(ValueError, match="num_buckets"):
    bk.estimate_duration_bins([1.0, 2.0], 1)
  with pytest.raises(ValueError, match="num_buckets"):
    bk.estimate_duration_bins([1.0, 2.0], 3)
  with pytest.raises(ValueError, match=r"durations\[1\]"):
    bk.estimate_duration_bins([1.0, float("nan")], 2)
  with pytest.raises(ValueError, match="non-empty"):
    bk.estimate_duration_bins([], 2)


def _groups_and_outliers(d, t, num_buckets, z):
  """Reference: duration groups by strict assignment on lhotse bins + max; z-scores per group."""
  edges = sorted(set(lhotse_loop(d, num_buckets) + [float(d.max())]))
  g = np.array([bisect.bisect_left(edges, x) for x in d])
  outlier = np.zeros(d.size, dtype=bool)
  for gi in range(len(edges)):
    sel = g == gi
    tps = t[sel] / d[sel]
    if tps.std() > 0:
      outlier[sel] = (tps - tps.mean()) / tps.std() > z
  return edges, g, outlier


@pytest.mark.parametrize("seed", range(4))
def test_2d_bins_cover_every_non_outlier_once(seed):
  rng = np.random.default_rng(seed)
  d, t = long_tail(rng, 3000)
  hot = rng.choice(d.size, 15, replace=False)  # a few transcripts far too long for the audio
  t[hot] = np.round(d[hot] * 25).astype(np.int64) + 5
  grid = bk.estimate_2d_bins(d, t, num_buckets=8, num_subbuckets=3, tps_outlier_z=4.0)
  edges, g, outlier = _groups_and_outliers(d, t, 8, 4.0)
  assert outlier[hot].all()
  codes = grid.assign(d, t)
  assert ((codes == bk.TPS_OUTLIER) == outlier).all()
  assert (codes[~outlier] >= 0).all()
  rows = list(zip(grid.max_duration, grid.max_tokens))
  assert sorted(set(grid.max_duration)) == edges
  for i in np.flatnonzero(~outlier):
    covering = []
    for r, (dmax, tmax) in enumerate(rows):
      dlo = max([e for e in edges if e < dmax], default=-np.inf)
      tlo = max([tk for dk, tk in rows if dk == dmax and tk < tmax], default=-np.inf)
      if dlo < d[i] <= dmax and tlo < t[i] <= tmax:
        covering.append(r)
    assert covering == [codes[i]], i
  # sub-buckets per group: at most num_subbuckets x (lhotse buckets merged into the group)
  merged = lhotse_loop(d, 8) + [float(d.max())]
  for e in edges:
    assert 1 <= sum(1 for dk, _ in rows if dk == e) <= 3 * merged.count(e)


def test_2d_json_round_trip_and_equal_tps():
  d = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
  grid = bk.estimate_2d_bins(d, 3 * d, num_buckets=2, num_subbuckets=2)
  assert bk.BucketGrid.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
  assert (grid.assign(d, 3 * d) >= 0).all()  # constant TPS: std 0, no outliers


def _check_batches(batches, d, t, grid, sizes, codes, carry):
  for b in batches:
    k, idx = b["bucket"], b["indices"]
    assert idx.size == sizes[k] and (b["mask"] == (idx >= 0)).all()
    v = idx[idx >= 0]
    assert (d[v] <= grid.max_duration[k]).all() and (t[v] <= grid.max_tokens[k]).all()
    # a carried tail comes from a smaller bucket; otherwise every example is in its own
    assert ((codes[v] <= k) if carry else (codes[v] == k)).all()


@pytest.mark.parametrize("mode,remainder", [("fixed", "pad"), ("max_duration", "pad"),
                                            ("fixed", "carry"), ("max_duration", "carry")])
def test_batches_respect_bucket_limits(mode, remainder):
  rng = np.random.default_rng(0)
  d, t = long_tail(rng, 2000)
  grid = bk.estimate_2d_bins(d, t, 6, 2)
  kw = ({"batch_sizes": {str(k): 3 + k for k in range(grid.num_buckets)}} if mode == "fixed"
        else {"max_duration": 120.0, "quadratic_duration": 30.0})
  it = bk.BucketedBatches(d, t, grid, seed=3, remainder=remainder, num_epochs=1, **kw)
  batches = list(it)
  _check_batches(batches, d, t, grid, it.batch_sizes, grid.assign(d, t), remainder == "carry")
  pad_rows = sum(int((~b["mask"]).sum()) for b in batches)
  tok = grid.max_tokens
  stuck = [k for k in range(len(tok)) if all(tok[j] < tok[k] for j in range(k + 1, len(tok)))]
  if remainder == "carry":  # padding only where no later bucket's shape holds the tail
    assert all(b["mask"].all() for b in batches if b["bucket"] not in stuck)
  assert pad_rows < (len(stuck) if remainder == "carry" else grid.num_buckets) * max(it.batch_sizes)
  shapes = it.static_shapes(16_000)
  assert len(shapes) == grid.num_buckets
  for b in batches:  # every batch fits its bucket's one compiled shape
    s = shapes[b["bucket"]]
    v = b["indices"][b["mask"]]
    assert b["indices"].size == s["batch_size"] and t[v].max(initial=0) <= s["max_tokens"]
    assert np.ceil(d[v] * 16_000).max(initial=0) <= s["num_samples"]
  if mode == "max_duration":
    for b in batches:
      dmax = b["max_duration"]
      assert b["indices"].size * (dmax + dmax**2 / 30.0) <= 120.0
  seen = np.concatenate([b["indices"][b["mask"]] for b in batches])
  kept = np.flatnonzero(grid.assign(d, t) >= 0)
  assert sorted(seen.tolist()) == kept.tolist()  # one epoch: every kept example exactly once
  assert it.dropped["tps_outlier"] == d.size - kept.size


def test_synchronized_ranks_same_buckets_disjoint_examples():
  rng = np.random.default_rng(1)
  d, t = long_tail(rng, 3000)
  grid = bk.estimate_1d_grid(d, t, 10)
  sizes = [4] * grid.num_buckets
  ranks = [list(bk.BucketedBatches(d, t, grid, batch_sizes=sizes, seed=7, num_processes=4,
                                   process_index=r, num_epochs=2, remainder="pad"))
           for r in range(4)]
  seqs = [[(b["epoch"], b["bucket"]) for b in rank] for rank in ranks]
  assert all(s == seqs[0] for s in seqs) and len(set(b for _, b in seqs[0])) == grid.num_buckets
  for step in range(len(seqs[0])):
    idx = [r[step]["indices"] for r in ranks]
    real = np.concatenate([i[i >= 0] for i in idx])
    assert real.size == np.unique(real).size  # disjoint across ranks
  epoch0 = np.concatenate([r[s]["indices"] for r in ranks for s in range(len(r))
                           if r[s]["epoch"] == 0])
  assert sorted(epoch0[epoch0 >= 0].tolist()) == list(range(d.size))


def test_resume_is_exact_across_epochs():
  rng = np.random.default_rng(2)
  d, t = long_tail(rng, 600)
  grid = bk.estimate_2d_bins(d, t, 4, 2)

  def make():
    return bk.BucketedBatches(d, t, grid, max_duration=60.0, seed=11, num_processes=2,
                              process_index=1)
  full = make()
  ref = [next(full) for _ in range(400)]
  assert len({b["epoch"] for b in ref}) >= 2  # the cut below crosses an epoch boundary
  for cut in (0, 37, 150):
    it = make()
    for _ in range(cut):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = make()
    resumed.set_state(state)
    rest = [next(resumed) for _ in range(400 - cut)]
    for a, b in zip(ref[cut:], rest):
      assert (a["bucket"], a["epoch"], a["step"]) == (b["bucket"], b["epoch"], b["step"])
      assert (a["indices"] == b["indices"]).all()


def test_drop_remainder_leaves_tails_out():
  rng = np.random.default_rng(5)
  d, t = long_tail(rng, 1000)
  grid = bk.estimate_1d_grid(d, t, 5)
  it = bk.BucketedBatches(d, t, grid, batch_sizes=[7] * 5, remainder="drop", num_epochs=1)
  batches = list(it)
  assert all(b["mask"].all() for b in batches)
  counts = np.bincount(grid.assign(d, t), minlength=5)
  assert len(batches) == sum(counts // 7)


def test_batch_sizes_from_oomptimizer_json(tmp_path):
  d = np.array([1.0, 2.0, 3.0, 4.0])
  t = np.array([3, 6, 9, 12])
  grid = bk.BucketGrid((2.0, 4.0), (6, 12))
  path = tmp_path / "sizes.json"
  path.write_text(json.dumps({"bucket_batch_sizes": [2, 1]}))
  for spec in (str(path), path, "[2, 1]", {"1": 1, "0": 2}, [2, 1]):
    assert bk.BucketedBatches(d, t, grid, batch_sizes=spec).batch_sizes == [2, 1]


def test_too_long_drop_or_error_and_bad_args():
  d = np.array([1.0, 2.0, 3.0, 4.0, 50.0])
  t = np.array([3, 6, 9, 12, 150])
  grid = bk.BucketGrid((2.0, 4.0), (6, 12))
  it = bk.BucketedBatches(d, t, grid, batch_sizes=[1, 1])
  assert it.dropped == {"too_long": 1, "tps_outlier": 0}
  with pytest.raises(ValueError, match=r"example 4 \(50.000 s.*too_long='drop'"):
    bk.BucketedBatches(d, t, grid, batch_sizes=[1, 1], too_long="error")
  with pytest.raises(ValueError, match="exactly one of"):
    bk.BucketedBatches(d, t, grid)
  with pytest.raises(ValueError, match="every bucket"):
    bk.BucketedBatches(d, t, grid, batch_sizes={0: 2})
  with pytest.raises(ValueError, match="does not exist"):
    bk.BucketedBatches(d, t, grid, batch_sizes="/nonexistent/sizes.json")
  with pytest.raises(ValueError, match="not valid JSON"):
    bk.BucketedBatches(d, t, grid, batch_sizes="[1, 2")
  with pytest.raises(ValueError, match="cannot hold one example"):
    bk.batch_sizes_for_max_duration(grid, 3.0)
  with pytest.raises(ValueError, match="different setup"):
    bk.BucketedBatches(d, t, grid, batch_sizes=[1, 2]).set_state(it.get_state())
  with pytest.raises(ValueError, match="every example was dropped"):
    bk.BucketedBatches(d[4:], t[4:], grid, batch_sizes=[1, 1])
  with pytest.raises(ValueError, match="no bucket holds one full global batch"):
    bk.BucketedBatches(d, t, grid, batch_sizes=[3, 3], remainder="drop")
  with pytest.raises(ValueError, match="remainder must be"):
    bk.BucketedBatches(d, t, grid, batch_sizes=[1, 1], remainder="keep")
  with pytest.raises(ValueError, match="strictly increasing"):
    bk.BucketGrid((4.0, 2.0), (6, 12))


def test_bucketing_cuts_padding_on_long_tail():
  """Random batches (padded to the batch max) waste far more than static 1D buckets; 2D
  buckets waste fewer tokens than 1D at the same duration budget."""
  from benchmarks.bucketing_padding import run
  res = {r["method"]: r for r in run(num_examples=4000, max_duration=200.0, seed=0)}
  assert res["random"]["duration"] > res["1d_pad"]["duration"] + 0.2
  assert res["2d_pad"]["tokens"] < res["1d_pad"]["tokens"]
  # same duration groups, so full batches pad the audio alike; 2D's extra sub-buckets only add
  # partial tail batches, which carrying them up mostly fills with real examples
  assert res["2d_drop"]["duration"] <= res["1d_drop"]["duration"] + 0.02
  assert res["2d_carry"]["duration"] < res["2d_pad"]["duration"]


def test_readme_snippet_runs():
  import pathlib
  from tests.readme_snippets import python_blocks
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### Speech bucketing (`data/bucketing.py`)")
  assert blocks, "README lost its speech bucketing section"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
