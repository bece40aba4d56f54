"""privacy.main: one-line errors for bad configs, and it never replaces results.json."""
import os
import subprocess
import sys

import pytest

from configs.privacy import gifd_digits
from privacy import runner

CONFIG = "configs/privacy/gifd_digits.py"


def _run(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "privacy.main", "--config", CONFIG, *args],
                        capture_output=True, text=True, env=env, timeout=300, check=False)


def test_a_bad_attack_name_fails_in_one_line_before_any_work(tmp_path):
  r = _run("--workdir", str(tmp_path / "w"), "--config.attacks=('ig','nope')")
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "unknown attack 'nope'; registered attacks: dlg, gifd" in r.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key,value,message", [
    ("defense", "blur", "unknown defense 'blur'; valid names: none, noise"),
    ("modality", "audio", "config.modality='audio' is unknown"),
    ("batch_size", 0, "batch_size and trials must be >= 1"),
])
def test_config_validation(key, value, message):
  config = gifd_digits.get_config()
  config[key] = value
  with pytest.raises(ValueError, match=message):
    runner.validate(config)
  runner.validate(gifd_digits.get_config())


def test_existing_results_are_not_overwritten(tmp_path):
  (tmp_path / "results.json").write_text("{\"mine\": 1}")
  r = _run("--workdir", str(tmp_path))
  assert r.returncode == 2
  assert "exists; pass --overwrite" in r.stderr
  assert (tmp_path / "results.json").read_text() == "{\"mine\": 1}"
