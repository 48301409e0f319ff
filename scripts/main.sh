#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, collect CartPole pixels into a Minari dataset, train a world
# model briefly (the dashboard shows the loss falling), and write an imagined-vs-real rollout GIF.
# Everything lands in reports/main/. A small budget: about 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${OUT:-reports/main}
STEPS=${STEPS:-150}
export MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-$PWD/runs/minari}
DATASET=diffusion_world/cartpole-main-v0
mkdir -p "$OUT"
if ! python -c "import minari, sys; sys.exit('$DATASET' not in minari.list_local_datasets())"; then
  diffusion-world collect --card envs/cartpole.toml --dataset-id "$DATASET" --steps 3000 --seed 0
fi
diffusion-world train --card envs/cartpole.toml --dataset-id "$DATASET" --out "$OUT/world_model" \
  --steps "$STEPS" --batch-size 4 --eval-every 50 --checkpoint-every 50 --resume
diffusion-world play --world-model "$OUT/world_model/checkpoint.pt" --steps 32 --out "$OUT/rollout.gif" \
  --compare-real
echo "main job done: see $OUT/ (world_model/dashboard.png, world_model/metrics.jsonl, rollout.gif)"
