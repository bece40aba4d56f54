"""Import layering (what import-linter would enforce; the repo has no contract file yet):
rl/offline and bayes/ may use optim but not train, infer, quant or reports; optim/sgld.py
imports only optax and jax."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[2]
FORBIDDEN = ("train", "infer", "quant", "reports")


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names


@pytest.mark.parametrize("package", ["rl", "bayes"])
def test_no_upward_imports(package):
  files = sorted((ROOT / package).rglob("*.py"))
  assert files
  for f in files:
    bad = _imports(f) & set(FORBIDDEN)
    assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"


def test_sgld_imports_only_optax_and_jax():
  allowed = {"jax", "optax", "__future__", "math", "numbers", "typing"}
  assert _imports(ROOT / "optim" / "sgld.py") <= allowed
