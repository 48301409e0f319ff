#!/usr/bin/env bash
# Prepare .carry/ for scripts/gpu_train.sh: what a GPU machine with PyTorch but no network needs to train the
# CartPole world model. Run here, on a machine with network and the collected dataset:
#
#   bash scripts/gpu_carry.sh            # -> .carry/whl (wheels for Python 3.12), .carry/minari (the datasets)
#
#   DATASET=diffusion_world/cartpole-pixels-v0   the Minari dataset to train on (default: the CartPole card's)
#   EXTRA=diffusion_world/cartpole-random-v0     random play for the termination classifier ("" to skip; skipped
#                                                if absent)
#   INIT=runs/x/checkpoint.pt                    optional: a training checkpoint to continue from, slimmed into
#                                                .carry/init.pt (model weights only: the EMA starts from them and
#                                                Adam starts afresh; the full file is 4x larger than the 64 MiB
#                                                the device tool carries)
#   PYVER=3.12                                   the GPU machine's Python
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-diffusion_world/cartpole-pixels-v0}
EXTRA=${EXTRA-diffusion_world/cartpole-random-v0}
INIT=${INIT:-}
PYVER=${PYVER:-3.12}
ROOT=${MINARI_DATASETS_PATH:-$HOME/.minari/datasets}
[ -f "$ROOT/$DATASET/data/main_data.hdf5" ] || { echo "no Minari dataset at $ROOT/$DATASET: run diffusion-world collect first" >&2; exit 1; }
rm -rf .carry && mkdir -p .carry/whl
# pure-Python packages the GPU image lacks (it has numpy, h5py, einops, opencv, scikit-image, matplotlib, tqdm)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 -d .carry/whl \
  "gymnasium==$(python3 -c 'import gymnasium; print(gymnasium.__version__)')" farama-notifications==0.0.4 \
  "minari==$(python3 -c 'import minari; print(minari.__version__)')"
for ds in "$DATASET" $EXTRA; do  # the HDF5 file and metadata only (the frame cache is rebuilt there)
  if [ -f "$ROOT/$ds/data/main_data.hdf5" ]; then mkdir -p ".carry/minari/$ds" && cp -r "$ROOT/$ds/data" ".carry/minari/$ds/"; fi
done
echo "$DATASET" > .carry/dataset_id
if [ -n "$INIT" ]; then
  python3 scripts/gpu_join.py slim "$INIT" .carry/init.pt
fi
du -sh .carry/*
