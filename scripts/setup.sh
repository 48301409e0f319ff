#!/usr/bin/env bash
# Create .venv and install diffusion_world with its test tools. The CPU torch wheel is pinned first so that the
# `torch>=2.5` requirement does not pull a multi-GB CUDA build; set TORCH_SPEC to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e ".[dev,box2d,atari,mujoco,bench]"
python -c "import diffusion_world, torch; print('diffusion_world', diffusion_world.__version__, 'torch', torch.__version__)"
