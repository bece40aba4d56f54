"""train/oomptimizer: under an artificially small budget, each bucket's chosen batch compiles
within the budget and the next batch up does not; the JSON is what the ASR task reads."""
import json
from pathlib import Path

import jax
import pytest

from core import checkpoint as ckpt_lib
from core import fit
from core import sharding as sharding_lib
from train import loop, oomptimizer, tasks
from tests.train.test_asr import small_config

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "asr_tiny.py")
UNIT = 8  # the 8 test devices: data-parallel batches are multiples of 8


def _config():
  c = small_config()
  c.data.num_buckets, c.data.max_duration = 2, 8 * 2.0
  return c


def _bytes(config, bucket, batch):
  """Peak bytes per device of ``config``'s train step compiled for one bucket's batch."""
  task = tasks.build(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  parts = loop.build(config, mesh, task)
  state = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
  rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=sharding_lib.replicated(mesh))
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=parts["batch_sharding"])
          for k, v in task.bucket_spec(bucket, batch).items()}
  return fit.step_bytes(parts["train_step"].lower(state, spec, rng).compile())


def test_chosen_sizes_fit_and_the_next_size_does_not(tmp_path):
  config = _config()
  longest = tasks.build(config).grid.num_buckets - 1
  budget = _bytes(config, longest, 2 * UNIT)  # the longest bucket fits 16 rows exactly
  out = tmp_path / "sizes.json"
  assert oomptimizer.main(["--config", CONFIG, "--out", str(out)]) == 2  # cpu
  res = oomptimizer.optimize(config, target="cpu", budget_bytes=budget, max_per_device=4,
                             show_progress=False)
  sizes = res["bucket_batch_sizes"]
  assert sizes[longest] == 2 * UNIT
  for k, b in enumerate(sizes):
    assert b % UNIT == 0 and b >= sizes[longest]  # shorter buckets fit at least as many
    assert _bytes(config, k, b) <= budget
    if b < 4 * UNIT:  # hi = 4 per device: a size below it was bounded by a larger one
      assert _bytes(config, k, b + UNIT) > budget
  # The JSON is what data.bucket_batch_sizes reads.
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
  assert oomptimizer.main(["--config", CONFIG, "--budget-bytes", "1e9",
                           "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert oomptimizer.main(["--config", CONFIG, "--target", "tpu9000",
                           "--out", str(tmp_path / "x.json")]) == 2
  assert "unknown target" in capsys.readouterr().err
