#!/usr/bin/env bash
# The default test suite (CPU, a few minutes). Extra arguments go to pytest, e.g. `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
ruff check diffusion_world tests benchmarks examples
python -m pytest -q "$@"
