#!/usr/bin/env bash
# The default test suite (CPU, a few minutes). Extra arguments go to pytest, e.g. `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
ruff check diffusion_world tests benchmarks examples
mypy diffusion_world benchmarks examples scripts  # the package and what sits on it; the tests are not typed
# one pytest worker per core, at most 4 (the tests use one torch thread each; pytest-xdist, in the dev extra);
# TEST_WORKERS=0 runs them in this process, as does a .venv made before xdist was in the dev extra
CORES=$(nproc 2>/dev/null || echo 1)
WORKERS=()
python -c "import xdist" 2>/dev/null && WORKERS=(-n "${TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}")
python -m pytest -q "${WORKERS[@]}" "$@"
