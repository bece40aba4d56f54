"""train/main.py as a user meets it: one clean `error:` line and exit 2 for every user error,
--list_configs, --config_help (every key documented), --eval_only."""
import subprocess
import sys
from pathlib import Path

import pytest

from configs import common
from train import cli, loop
from tests.train.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]
MAIN = [sys.executable, str(ROOT / "train" / "main.py")]


def _run(*args, cwd=ROOT):
  return subprocess.run(MAIN + list(args), capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, first_line", [
    (["--config", "configs/lm_tiny.py", "--config.optim.lrr=1", "--workdir", "W"],
     "error: --config.optim.lrr is not a key of this config; did you mean --config.optim.lr?"),
    (["--config", "configs/lm_tiny.py", "--config.train.num_steps=5", "--workdir", "W"],
     "error: --config.train.num_steps is not a key of this config; did you mean "
     "--config.train.steps"),
    (["--config", "configs/nope.py", "--workdir", "W"],
     "error: --config configs/nope.py does not exist. Configs in"),
    (["--config", "configs/lm_tiny.py", "--config.optim.lr=abc", "--workdir", "W"],
     "error: flag --config.optim.lr=abc: could not convert string to float"),
    (["--config", "configs/lm_tiny.py"], "error: --workdir is required to train"),
    (["--workdir", "W"], "error: flag --config=None: Flag --config must have a value"),
    (["--config", "configs/lm_tiny.py", "--workdir", "W", "--config.train.steps=30"],
     "error: optim.warmup_steps=60 must be smaller than the 30 optimizer steps"),
    (["--config", "configs/lm_tiny.py", "--workdir", "W", "--config.optim.name=adamm"],
     "error: unknown optimizer 'adamm'; available: "),
    (["--config", "configs/lm_tiny.py", "--workdir", "W", "--cpu_devices=3"],
     "error: a (micro)batch of 16 examples (train.global_batch_size=16 / "
     "train.microbatches=1) does not split over the mesh's data x fsdp = 3 devices"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, first_line):
  res = _run(*[a.replace("W", str(tmp_path / "w")) if a == "W" else a for a in args])
  lines = res.stderr.strip().splitlines()
  assert res.returncode == 2, res.stderr[-3000:]
  assert lines and lines[-1].startswith(first_line), lines[-3:]
  assert "Traceback" not in res.stderr
  assert not (tmp_path / "w").exists()  # nothing written


def test_verbose_shows_the_traceback(tmp_path):
  res = _run("--config", "configs/lm_tiny.py", "--workdir", str(tmp_path / "w"),
             "--config.optim.name=adamm", "--verbose")
  assert res.returncode != 0 and "Traceback" in res.stderr and "unknown optimizer" in res.stderr


def test_list_configs_and_config_help():
  res = _run("--list_configs")
  assert res.returncode == 0
  for p in cli.config_files():
    assert p.name in res.stdout
  res = _run("--config", "configs/digits_cnn.py", "--config_help")
  assert res.returncode == 0
  assert "model.num_classes" in res.stdout and "classifier outputs" in res.stdout


def test_every_key_of_every_config_is_documented():
  for path in cli.config_files():
    keys = cli.flatten(cli.load_config(path))
    missing = sorted(set(keys) - set(common.KEY_DOCS))
    assert not missing, f"{path.name}: add these keys to configs.common.KEY_DOCS: {missing}"


def test_eval_only_evaluates_the_newest_checkpoint_and_writes_nothing(data_dir, tmp_path):
  from tests import snapshot  # pylint: disable=g-import-not-at-top
  config = small_config(data_dir, steps=3, eval_every=3, async_checkpoint=False)
  trained = loop.train_and_evaluate(config, tmp_path)
  before = snapshot.digest(tmp_path)
  out = loop.evaluate_checkpoint(config, tmp_path, say=lambda m: None)
  assert out["step"] == 3 and out["eval_loss"] == trained["eval_loss"]
  assert snapshot.digest(tmp_path) == before
  with pytest.raises(ValueError, match="has no checkpoints/ to evaluate"):
    loop.evaluate_checkpoint(config, tmp_path / "empty")


def test_memory_plan_is_in_gb_and_says_whether_it_fits():
  out = {"num_params": 1_000_000, "mesh": {"data": 1, "fsdp": 8, "tensor": 1}, "devices": 8,
         "global_batch_size": 8, "compile_s": 1.0, "argument_size_in_bytes": 2_000_000_000,
         "temp_size_in_bytes": 30_000_000_000, "per_device_total_bytes": 33_000_000_000}
  text = loop.format_memory_plan(out, hbm_bytes=141_000_000_000)
  assert "train state (params + optimizer) 2.00 GB, temporaries 30.00 GB, total 33.00 GB" in text
  assert "fits in 141.0 GB per device" in text
  assert "does not fit in 16.0 GB" in loop.format_memory_plan(out, hbm_bytes=16_000_000_000)
  assert "fits: unknown" in loop.format_memory_plan(out)
