"""Every notebook in notebooks/ runs top to bottom on this machine, and its committed outputs
are those of its current code (notebooks/README.md: the outputs policy).

A notebook that errors (an API it uses changed, say) fails here with the failing cell.
"""
import nbformat
import pytest

from notebooks import execute as nbexec

NOTEBOOKS = nbexec.notebooks()


def test_the_four_notebooks_exist():
  assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_come_from_the_current_code(path):
  nb = nbformat.read(path, as_version=4)
  stored = nb.metadata.get("effijax", {}).get("executed_source_sha256")
  assert stored == nbexec.source_sha256(nb), (
      f"{path.name}: its code changed since its outputs were made; rerun "
      f"`python notebooks/execute.py --write {path.relative_to(nbexec.ROOT)}` and commit it.")
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
      f"{path.name}: cells were not executed top to bottom in one run")
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, f"{path.name}: committed with an error output"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
  nb = nbexec.execute(path)  # raises CellExecutionError naming the cell on any error
  assert nb.metadata["effijax"]["executed_source_sha256"] == nbexec.source_sha256(
      nbformat.read(path, as_version=4))


def test_a_broken_notebook_fails(tmp_path, monkeypatch):
  """A notebook calling an API that does not exist fails execution (what CI relies on)."""
  import nbclient
  nb = nbformat.read(NOTEBOOKS[0], as_version=4)
  setup = next(c for c in nb.cells if c.cell_type == "code")
  broken = nbformat.v4.new_notebook(cells=[
      setup, nbformat.v4.new_code_cell("from train import loop\nloop.train_and_evaluat(None, '.')")])
  broken.metadata = nb.metadata
  path = tmp_path / "99_broken.ipynb"
  nbformat.write(broken, path)
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="train_and_evaluat"):
    nbexec.execute(path, timeout=120)
