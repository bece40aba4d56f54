"""The README's conformal example runs as shown."""
import pathlib
import re
import warnings

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_conformal_example_runs():
  text = README.read_text()
  section = text[text.index("### Prediction sets (`conformal/`)"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  scope = {}
  with warnings.catch_warnings():
    warnings.simplefilter("error")             # the example must not hit an infinite set
    exec(compile(code, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert scope["lo"].shape == (3,) and (scope["hi"] > scope["lo"]).all()
  assert scope["claims"].shape == (3, 5)
