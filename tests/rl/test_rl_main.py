"""rl/main.py end to end: resume after SIGKILL continues exactly; usage errors are one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

from rl import trainer
from tests import sigkill
from tests.rl.small_rl import FLAGS, small_config

ROOT = Path(__file__).resolve().parents[2]
COMPARED = ("version", "reward", "loss", "grad_norm", "kl_behav_prox", "staleness",
            "completion_tokens", "decode_steps", "ticks", "eval_accuracy",
            "eval_sampled_accuracy")


def _args(workdir, *extra):
  return [sys.executable, str(ROOT / "rl" / "main.py"), "--config",
          str(ROOT / "configs" / "rl_arith.py"), "--workdir", str(workdir), "--cpu_devices=8",
          *FLAGS, "--config.rl.versions=4", "--config.rl.eta=1", *extra]


def _env(cache_dir=None):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  if cache_dir is not None:  # the resumed process reuses the killed one's compilations
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _metrics(workdir):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [{k: m.get(k) for k in COMPARED} for m in map(json.loads, lines)]


def test_resume_after_sigkill_continues_exactly(tmp_path):
  ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
  # The reference runs in this process (same 8 CPU devices, same arith reward).
  trainer.run(small_config(versions=4, eta=1), ref_dir, say=lambda m: None)
  env = _env(tmp_path / "jax_cache")
  sigkill.kill_after_checkpoint(_args(run_dir), env, run_dir / "checkpoints" / "2")
  res = subprocess.run(_args(run_dir), env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "resumed from checkpoint" in res.stdout
  assert _metrics(run_dir) == _metrics(ref_dir)


def test_usage_errors_are_one_line(tmp_path):
  res = subprocess.run(_args(tmp_path, "--config.rl.etaa=1"), env=_env(), capture_output=True,
                       text=True)
  assert res.returncode == 2
  assert res.stderr.strip().splitlines()[-1].startswith(
      "error: --config.rl.etaa is not a key of this config; did you mean --config.rl.eta?")
  res = subprocess.run(_args(tmp_path, "--config.rl.eta=-1"), env=_env(), capture_output=True,
                       text=True)
  assert res.returncode == 2 and "rl.eta=-1 must be an integer >= 0" in res.stderr
  assert "Traceback" not in res.stderr
