#!/usr/bin/env bash
# Install effijax with its test extras into .venv, check the layer contracts, run every test.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
.venv/bin/lint-imports  # imports point down the layers (pyproject.toml [tool.importlinter])
.venv/bin/python -m pytest -q "$@"
