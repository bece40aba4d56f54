"""Runs the notebooks top to bottom; ``--write`` saves their outputs into the ``.ipynb`` files.

  python notebooks/execute.py                      # every notebook; exit 1 on the first error
  python notebooks/execute.py --write              # ...and commit-ready outputs
  python notebooks/execute.py --write notebooks/01_train_resume_export.ipynb

Policy (notebooks/README.md): committed notebooks hold the outputs of one executed run. The
sha256 of their code cells at that run is stored in ``metadata.effijax.executed_source_sha256``;
``tests/test_notebooks.py`` executes every notebook and fails when a notebook's code no longer
matches the hash, i.e. it was edited and its outputs were not regenerated.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

DIR = Path(__file__).resolve().parent
ROOT = DIR.parent
TIMEOUT_S = 600  # per cell


def notebooks() -> list[Path]:
  return sorted(DIR.glob("[0-9][0-9]_*.ipynb"))


def source_sha256(nb) -> str:
  code = "\n\x00".join(c.source for c in nb.cells if c.cell_type == "code")
  return hashlib.sha256(code.encode()).hexdigest()


@contextlib.contextmanager
def _runtime_env():
  """The kernel sees the machine as a user's runtime would: no forced fake-device count."""
  saved = os.environ.get("XLA_FLAGS")
  os.environ.pop("XLA_FLAGS", None)
  try:
    yield
  finally:
    if saved is not None:
      os.environ["XLA_FLAGS"] = saved


def execute(path: Path, *, timeout: int = TIMEOUT_S):
  """Executes ``path`` with cwd = the repository root; returns the executed notebook.
  Raises ``nbclient.exceptions.CellExecutionError`` naming the cell that failed."""
  nb = nbformat.read(path, as_version=4)
  with _runtime_env():
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
  nb.metadata.setdefault("effijax", {})["executed_source_sha256"] = source_sha256(nb)
  return nb


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("paths", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
  p.add_argument("--write", action="store_true", help="save the outputs into the notebooks")
  args = p.parse_args(argv)
  for path in args.paths or notebooks():
    t0 = time.time()
    print(f"{path.name}: running...", flush=True)
    nb = execute(path)
    if args.write:
      nbformat.write(nb, path)
    print(f"{path.name}: ok in {time.time() - t0:.0f} s" + (" (written)" if args.write else ""),
          flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
