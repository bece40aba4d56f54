"""train/oomptimizer: under an artificially small budget, each bucket's chosen batch compiles
within the budget and the next batch up does not; the JSON is what the ASR task reads."""
import json
from pathlib import Path

import pytest

from core import fit
from core import sharding as sharding_lib
from train import oomptimizer, tasks
from tests.train.test_asr import small_config

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "asr_tiny.py")
UNIT = 8  # the 8 test devices: data-parallel batches are multiples of 8


def _config():
  c = small_config()
  c.data.num_buckets, c.data.max_duration = 2, 8 * 2.0
  return c


def _bytes(config, bucket, batch):
  """Peak bytes per device of ``config``'s train step compiled for one bucket's batch."""
  compile_step = oomptimizer.step_compiler(config, sharding_lib.make_mesh(config.mesh))
  return fit.step_bytes(compile_step(bucket, batch))


def test_chosen_sizes_fit_and_the_next_size_does_not(tmp_path):
  config = _config()
  longest = tasks.build(config).grid.num_buckets - 1
  budget = _bytes(config, longest, UNIT)  # the longest bucket fits one row per device exactly
  res = oomptimizer.optimize(config, target="cpu", budget_bytes=budget, max_per_device=2,
                             show_progress=False)
  sizes = res["bucket_batch_sizes"]
  assert sizes[longest] == UNIT
  for k, b in enumerate(sizes):  # each size and the next one up (multiples of 8) were compiled
    trials = dict(res["per_bucket"][k]["trials"])
    assert b % UNIT == 0 and b >= sizes[longest]  # shorter buckets fit at least as many
    assert trials[b] <= budget
    if b < 2 * UNIT:  # below the search's upper bound: the next size up was tried and failed
      assert trials[b + UNIT] > budget
  # The search compiled the real step: its bytes for the longest bucket's batch of 8 are those
  # of the independent compile that set the budget.
  assert dict(res["per_bucket"][longest]["trials"])[UNIT] == budget
  # The JSON is what data.bucket_batch_sizes reads.
  out = tmp_path / "sizes.json"
  out.write_text(json.dumps(res))
  config.data.bucket_batch_sizes = str(out)
  assert tasks.build(config).bucket_batch_sizes() == sizes


def test_budget_below_the_smallest_batch_is_a_clear_error():
  with pytest.raises(ValueError, match="does not fit the budget"):
    oomptimizer.optimize(_config(), target="cpu", budget_bytes=1000, max_per_device=2,
                         show_progress=False)


def test_cli_refuses_to_overwrite_and_unknown_targets(tmp_path, capsys):
  out = tmp_path / "sizes.json"
  out.write_text("{}")
  assert oomptimizer.main(["--config", CONFIG, "--out", str(tmp_path / "y.json")]) == 2
  assert "--budget-bytes" in capsys.readouterr().err  # a CPU has no HBM to fill
  assert oomptimizer.main(["--config", CONFIG, "--budget-bytes", "1e9",
                           "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert oomptimizer.main(["--config", CONFIG, "--target", "tpu9000",
                           "--out", str(tmp_path / "x.json")]) == 2
  assert "unknown target" in capsys.readouterr().err
