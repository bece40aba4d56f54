#!/usr/bin/env bash
# Install effijax into .venv and train the embedded default: lm_tiny on the bundled
# Python-stdlib corpus (CPU, a few minutes). Extra arguments go to train/main.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
.venv/bin/python train/main.py --config configs/lm_tiny.py --workdir workdirs/lm_tiny "$@"
