"""The README's offline-RL snippet runs as shown."""
import pathlib

import pytest

from tests.readme_snippets import python_blocks


@pytest.mark.slow  # ~15 s: compiles the MDP pipeline once
def test_readme_offline_rl_snippet_runs():
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### Offline RL (`rl/offline/`)")
  assert blocks, "README lost its offline RL section"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used


def test_readme_areal_snippet_runs():
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### AReaL building blocks (`rl/`)")
  assert blocks, "README lost its AReaL building blocks section"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
