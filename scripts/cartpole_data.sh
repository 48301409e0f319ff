#!/usr/bin/env bash
# Collect the datasets behind the shipped CartPole model into $MINARI_DATASETS_PATH (about 3 minutes on 2 CPU
# cores; datasets already there are kept): its training mix, diffusion_world/cartpole-mixed-tails-v0 (the PPO
# state expert with epsilon = 0.25, plus random play with 10 post-terminal steps per episode; the commands that
# diffusion_world/shipped/cartpole.json records), and the held-out episodes its benchmarks replay
# (cartpole-pixels-heldout2-v0 for fidelity, cartpole-random-tails-heldout2-v0 for termination), whose episode
# seeds it never saw. With them, the shipped model can be fine-tuned further and compared on the same episodes:
#
#   diffusion-world train --card envs/cartpole.toml --dataset-id diffusion_world/cartpole-mixed-tails-v0 \
#       --init-from cartpole --sigma-ctx-max 0.5 --out runs/cartpole_more
#
#   DRY_RUN=1   print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")/.."

has() {  # has DATASET_ID: is it a local Minari dataset?
  [ -z "${DRY_RUN:-}" ] && python -c "import sys, minari; sys.exit(sys.argv[1] not in minari.list_local_datasets())" "$1"
}
run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else echo "+ $*" >&2; "$@"; fi; }

has diffusion_world/cartpole-pixels-v0 || run diffusion-world collect --card envs/cartpole.toml
has diffusion_world/cartpole-random-tails-v0 || run diffusion-world collect --card envs/cartpole.toml --policy random \
  --dataset-id diffusion_world/cartpole-random-tails-v0 --steps 16000 --seed 100000 --post-terminal-steps 10
has diffusion_world/cartpole-mixed-tails-v0 || run diffusion-world combine diffusion_world/cartpole-pixels-v0 \
  diffusion_world/cartpole-random-tails-v0 --out-id diffusion_world/cartpole-mixed-tails-v0
has diffusion_world/cartpole-pixels-heldout2-v0 || run diffusion-world collect --card envs/cartpole.toml \
  --dataset-id diffusion_world/cartpole-pixels-heldout2-v0 --steps 7000 --seed 700000
has diffusion_world/cartpole-random-tails-heldout2-v0 || run diffusion-world collect --card envs/cartpole.toml \
  --policy random --dataset-id diffusion_world/cartpole-random-tails-heldout2-v0 --steps 3000 --seed 710000 \
  --post-terminal-steps 10
