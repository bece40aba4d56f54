"""Every command of the README's Tour runs as written (with tiny settings appended), in order,
from a scratch directory that mirrors the repository, so the README cannot drift from the code.

A command with a placeholder path (``/path/to/...``) cannot run here; it must fail with one
clean ``error:`` line instead of a traceback.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Appended to each command (absl and argparse: the last value of a flag wins).
TINY = {
    "train/main.py": ["--config.train.steps=4", "--config.optim.warmup_steps=1",
                      "--config.train.log_every=2", "--config.train.eval_every=4",
                      "--config.train.checkpoint_every=4", "--config.train.eval_batches=1"],
    "quant/main.py": ["--calib-samples", "4", "--calib-seq-len", "32", "--eval-batches", "1",
                      "--eval-batch-size", "2", "--no-progress"],
    "infer/main.py": ["--max-new-tokens", "4"],
    "data.build_speech": ["--num_train=16", "--num_eval=2", "--data_dir=workdirs/tfds"],
    "privacy.main": ["--config.prior.steps=3", "--config.prior.batch_size=16",
                     "--config.victim.steps=3", "--config.attack.steps=2",
                     "--config.attack.dlg_steps=2", "--config.attack.stage_steps=2",
                     "--config.attack.restarts=1", "--config.trials=1",
                     "--config.text.pretrain_steps=2", "--config.text.relax_steps=2",
                     "--config.text.top_k=2", "--config.text.sweeps=0"],
    "rl.tasks.arith_sft": ["--train", "200", "--validation", "20"],
    "rl/main.py": ["--config.rl.versions=2", "--config.rl.train_problems=16",
                   "--config.rl.eval_problems=8", "--config.rl.max_new_tokens=6",
                   "--config.rl.checkpoint_every=2"],
}
# Commands whose config reads a large corpus get these too (matched on the --config path).
TINY_CONFIG = {
    "configs/asr_speech.py": ["--config.data.num_train=16", "--config.data.num_eval=2",
                              "--config.data.max_files=60", "--config.data.tokenizer_vocab=64",
                              "--config.data.num_buckets=2", "--config.data.num_subbuckets=1",
                              "--config.data.data_dir=workdirs/tfds"],
}
# Reports and benchmarks: tests/reports/test_quick.py runs every one of them (--quick); here
# only that the module the README names exists.
COVERED_ELSEWHERE = ("reports.", "benchmarks.")
NO_TINY = ("--list_configs", "--config_help")


def tour_commands() -> list[str]:
  text = (ROOT / "README.md").read_text()
  tour = text.split("\n## Tour", 1)[1].split("\n## ", 1)[0]
  cmds = []
  for block in re.findall(r"```bash\n(.*?)```", tour, flags=re.S):
    for line in block.splitlines():
      line = line.split("  #", 1)[0].strip()
      if line.startswith("python ") and "<" not in line:  # <name>: a pattern, not a command
        cmds.append(line)
  return cmds


def _tiny(args: list[str]) -> list[str]:
  if any(a in NO_TINY for a in args):
    return []
  target = args[2] if args[1] == "-m" else args[1]
  extra = next((extra for key, extra in TINY.items() if target.startswith(key)), [])
  return extra + [a for key, more in TINY_CONFIG.items() if key in args for a in more]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  """A directory whose entries link to the repository's, so ``workdirs/`` is private."""
  d = tmp_path_factory.mktemp("readme")
  for entry in ROOT.iterdir():
    if entry.name not in ("workdirs", ".git", ".venv"):
      (d / entry.name).symlink_to(entry)
  return d


def test_the_tour_has_commands():
  cmds = tour_commands()
  assert any("train/main.py" in c for c in cmds) and any("quant/main.py" in c for c in cmds)
  assert any("infer/main.py" in c for c in cmds)


@pytest.mark.slow
def test_every_tour_command_runs(scratch):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop
  for cmd in tour_commands():
    args = shlex.split(cmd)
    if args[1] == "-m" and args[2].startswith(COVERED_ELSEWHERE):
      assert (ROOT / (args[2].replace(".", "/") + ".py")).is_file(), cmd
      continue
    args = [sys.executable] + args[1:] + _tiny(args)
    res = subprocess.run(args, cwd=scratch, env=env, capture_output=True, text=True,
                         timeout=900)
    if "/path/to/" in cmd:
      assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error:"), \
          (cmd, res.stderr[-2000:])
      assert "Traceback" not in res.stderr, cmd
      continue
    assert res.returncode == 0, (cmd, res.stdout[-1500:], res.stderr[-3000:])
