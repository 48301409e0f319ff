#!/usr/bin/env bash
# The main job on a fresh machine (2 CPU cores: 10.5 minutes on an AMD EPYC, 2 of them for the set-up; the job
# itself took 4 minutes on an Intel Xeon with AMX): set up .venv, then run the whole pipeline on the CartPole card
# at a small budget -- collect a fresh dataset, train a world model briefly (100 steps or 4 minutes; loss falling),
# benchmark the fidelity of the shipped model, train PPO in its imagination and evaluate it in the real env --
# and write a report folder (summary.md, plots, a real | imagined | error GIF). Prints the summary table.
#
#   OUT=reports/main            where the report goes
#   MAIN_JOB_ARGS="..."         extra flags for `python -m diffusion_world.main_job` (e.g. --train-steps 300)
#   SKIP_SETUP=1                use the current Python environment instead of creating .venv
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SKIP_SETUP:-}" ]; then
  bash scripts/setup.sh
  . .venv/bin/activate
fi
OUT=${OUT:-reports/main}
# shellcheck disable=SC2086  # MAIN_JOB_ARGS is a list of flags
python -m diffusion_world.main_job --out "$OUT" ${MAIN_JOB_ARGS:-}
