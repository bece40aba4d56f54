"""Named targets -> compile-only devices (core/targets.py, configs/targets), and their errors."""
import importlib.metadata

import jax
import pytest

from configs import targets
from core import targets as core_targets
from tests import aot


def test_every_named_target_resolves_to_its_devices():
  for name, target in targets.TARGETS.items():
    devices = aot.devices(name)
    assert len(devices) == target.num_devices, name
    assert {d.device_kind for d in devices} == {target.chip.kind}, name
  # The default backend is still the CPU with the 8 fake devices the other tests use.
  assert jax.default_backend() == "cpu" and jax.device_count() == 8


def test_unknown_target_lists_the_valid_names():
  with pytest.raises(ValueError, match="unknown target 'v9-8'; valid targets: h200, 8xh200"):
    targets.get("v9-8")


@pytest.mark.parametrize("name, dist, extra", [("v5e-8", "libtpu", "aot-tpu"),
                                               ("h200", "nvidia-cuda-nvcc", "aot-gpu")])
def test_missing_compiler_names_the_extra(monkeypatch, name, dist, extra):
  real = importlib.metadata.version

  def version(d):
    if d == dist:  # as if pip had not installed it
      raise importlib.metadata.PackageNotFoundError(d)
    return real(d)

  monkeypatch.setattr(importlib.metadata, "version", version)
  with pytest.raises(core_targets.MissingExtraError,
                     match=rf"needs {dist}, which is not installed; run pip install -e "
                           rf"'\.\[{extra}\]'"):
    core_targets.compile_devices(targets.get(name))


def test_plugin_for_another_jax_version_is_reported(monkeypatch):
  real = importlib.metadata.version
  monkeypatch.setattr(importlib.metadata, "version",
                      lambda d: "0.0.1" if d == "jax-cuda13-plugin" else real(d))
  with pytest.raises(core_targets.MissingExtraError,
                     match=rf"jax-cuda13-plugin 0.0.1 does not match jax {jax.__version__}"):
    core_targets.check_extra("cuda")


def test_readme_scale_on_paper_snippet_runs():
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  from tests.readme_snippets import python_blocks  # pylint: disable=g-import-not-at-top
  readme = Path(__file__).resolve().parents[2] / "README.md"
  heading = next(l for l in readme.read_text().splitlines() if l.startswith("## Scale on paper"))
  (block,) = python_blocks(readme, heading)
  scope = {}
  exec(compile(block, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert len(scope["devices"]) == 8 and scope["devices"][0].device_kind == "TPU v5 lite"
