"""The README's text privacy snippet runs as shown."""
import pathlib

from tests.readme_snippets import python_blocks


def test_readme_text_privacy_snippet_runs():
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### Privacy audits: text (ReCIT on LoRA)")
  assert blocks, "README lost its text privacy section"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
