"""The README's SGLD / Bayesian mixture snippet runs as shown."""
import pathlib

from tests.readme_snippets import python_blocks


def test_readme_bayes_snippet_runs():
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### Bayesian mixtures and SGLD (`optim/sgld.py`, `bayes/`)")
  assert blocks, "README lost its SGLD/Bayes section"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
