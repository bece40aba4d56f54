"""Every report and every benchmark runs: ``python -m reports.<name> --quick`` and
``python -m benchmarks.<name> --quick`` in a subprocess (1 CPU device), exit 0, one JSON in
the common schema, nothing written over committed results. The lists come from the
directories, so a new script is covered without touching this file, and a broken one fails CI.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.common import RESULT_KEYS, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 900  # a hang guard; --quick runs take seconds to ~2 min on an idle 2-core CPU


def _scripts(package: str) -> list[str]:
  return sorted(p.stem for p in (ROOT / package).glob("*.py")
                if p.stem not in ("__init__", "common"))


REPORTS = _scripts("reports")
BENCHMARKS = _scripts("benchmarks")


def _snapshot(*dirs):
  return {p: (p.stat().st_size, p.stat().st_mtime_ns)
          for d in dirs for p in (ROOT / d).iterdir() if p.is_file()}


def _run_quick(module: str, tmp_path: Path, *more: str) -> None:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # 1 device, not conftest's 8
  env.update(JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path),  # --quick writes under TMPDIR
             PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-m", module, "--quick", *more], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  print(f"{module} --quick: {time.time() - t0:.1f} s")
  assert proc.returncode == 0, (f"python -m {module} --quick exited {proc.returncode}\n"
                                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")


def _check_record(path: Path, name: str, module: str) -> dict:
  record = json.loads(path.read_text())
  missing = [k for k in RESULT_KEYS if k not in record]
  assert not missing, f"{path} lacks the schema keys {missing}"
  assert record["schema"] == SCHEMA_VERSION and record["name"] == name
  assert record["command"] == f"python -m {module} --quick"
  assert record["platform"] == "cpu" and record["device"].endswith("x1")
  assert isinstance(record["config"], dict) and record["results"]
  return record


def test_every_script_is_found_and_documents_its_commands():
  assert {"lamb", "sso", "sso_lm", "adadim"} <= set(REPORTS)
  assert {"lowbit_matmul", "prefix_attention", "decode_throughput", "gptq_speed",
          "train_throughput"} <= set(BENCHMARKS)
  for package, names in (("reports", REPORTS), ("benchmarks", BENCHMARKS)):
    for name in names:
      source = (ROOT / package / f"{name}.py").read_text()
      assert f"python -m {package}.{name} --quick" in source, f"{package}/{name}.py docstring"
      assert f"python {package}/{name}.py" not in source and "sys.path" not in source, \
          f"{package}/{name}.py: run it as python -m {package}.{name}"


@pytest.mark.slow
@pytest.mark.parametrize("name", REPORTS)
def test_report_quick(name, tmp_path):
  before = _snapshot("reports")
  _run_quick(f"reports.{name}", tmp_path)
  written = list(tmp_path.rglob(f"{name}.json"))
  assert len(written) == 1, f"expected one {name}.json under the temp dir, got {written}"
  _check_record(written[0], name, f"reports.{name}")
  md = written[0].parent / f"{name}.md"
  assert md.is_file()
  if "add_from_json_flag" in (ROOT / "reports" / f"{name}.py").read_text():
    # --from-json re-renders the same run's text from its JSON (the --quick banner aside)
    quick_text = md.read_text()
    _run_quick(f"reports.{name}", tmp_path, "--from-json", "--out-dir", str(md.parent))
    assert md.read_text() and md.read_text().strip() in quick_text
  assert _snapshot("reports") == before, "--quick wrote into reports/"


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick(name, tmp_path):
  before = _snapshot("benchmarks/results")
  _run_quick(f"benchmarks.{name}", tmp_path)
  written = list(tmp_path.rglob(f"{name}_*.json"))
  assert len(written) == 1, f"expected one {name}_*.json under the temp dir, got {written}"
  _check_record(written[0], name, f"benchmarks.{name}")
  assert _snapshot("benchmarks/results") == before, "--quick wrote into benchmarks/results/"
