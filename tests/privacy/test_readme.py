"""The README's privacy snippet runs as shown, and its comments hold."""
import pathlib

import numpy as np

from tests.readme_snippets import python_blocks


def test_readme_privacy_snippet_runs_and_its_comments_hold():
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### Gradient-inversion audits (`privacy/`)")
  assert len(blocks) == 1, "README lost its privacy section"
  ns = {}
  exec(compile(blocks[0], "README.md", "exec"), ns)  # pylint: disable=exec-used
  np.testing.assert_array_equal(ns["labels"], ns["batch"]["labels"])
  assert ns["defenses"].NAMES == ("none", "noise", "clip", "topk", "prune", "dpsgd")
  np.testing.assert_allclose(
      ns["image_attacks"].project_l1_ball(ns["jnp"].array([[3.0, -1.0, 0.5]]), 2.0),
      [[2.0, 0.0, 0.0]])
  assert set(ns["shared"]) == {"out"}
