#!/usr/bin/env bash
# Prepare .carry/ for scripts/gpu_train.sh: what a GPU machine with PyTorch but no network needs to train the
# CartPole world model. Run here, on a machine with network and the collected dataset:
#
#   bash scripts/gpu_carry.sh            # -> .carry/whl (wheels for Python 3.12), .carry/minari (the dataset)
#
#   DATASET=diffusion_world/cartpole-pixels-v0   which Minari dataset to carry (default: the CartPole card's)
#   EXTRA=diffusion_world/cartpole-random-v0     random play for the termination classifier (skipped if absent)
#   PYVER=3.12                                   the GPU machine's Python
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-diffusion_world/cartpole-pixels-v0}
EXTRA=${EXTRA:-diffusion_world/cartpole-random-v0}
PYVER=${PYVER:-3.12}
SRC=${MINARI_DATASETS_PATH:-$HOME/.minari/datasets}/$DATASET/data
[ -f "$SRC/main_data.hdf5" ] || { echo "no Minari dataset at $SRC: run diffusion-world collect first" >&2; exit 1; }
rm -rf .carry && mkdir -p .carry/whl ".carry/minari/$DATASET"
# pure-Python packages the GPU image lacks (it has numpy, h5py, einops, opencv, scikit-image, matplotlib, tqdm)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 -d .carry/whl \
  "gymnasium==$(python3 -c 'import gymnasium; print(gymnasium.__version__)')" farama-notifications==0.0.4 \
  "minari==$(python3 -c 'import minari; print(minari.__version__)')"
cp -r "$SRC" ".carry/minari/$DATASET/"   # the HDF5 file and metadata only (the frame cache is rebuilt there)
EXTRA_SRC=${MINARI_DATASETS_PATH:-$HOME/.minari/datasets}/$EXTRA/data
if [ -f "$EXTRA_SRC/main_data.hdf5" ]; then mkdir -p ".carry/minari/$EXTRA" && cp -r "$EXTRA_SRC" ".carry/minari/$EXTRA/"; fi
du -sh .carry/whl .carry/minari
