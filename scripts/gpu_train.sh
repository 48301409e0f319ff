#!/usr/bin/env bash
# Train the CartPole world model on one CUDA GPU of a machine with PyTorch but no network, inside a fixed
# wall-clock budget, and bring back everything worth keeping as one file, OUT/gpu_results.tgz (< 16 MB: logs,
# metrics, dashboard, the exported model, benchmark results):
#
#   bash scripts/gpu_carry.sh                          # first, on a machine with network (fills .carry/, 13 MB;
#                                                      # rerun it after a local smoke test: that builds a 700 MB
#                                                      # frame cache inside .carry/)
#   OUT=/tmp/gpu_out TOTAL_S=560 bash scripts/gpu_train.sh    # then, on the GPU machine, from the repo root
#
# Steps: install the carried wheels; check the CUDA paths against their references (tests/test_cuda.py, without
# the slow torch.compile test, in the background while training runs); build the frame cache; train
# `diffusion-world train --card envs/cartpole.toml --device cuda` for what is left of TOTAL_S after reserving time
# for the rest; fit the termination classifier if the checkpoint has none (unless EXPORT_ARGS has
# --no-termination-classifier); export the fp16 EMA model; the speed
# benchmark on CUDA; optionally the fidelity benchmark. A step that fails or runs out of time is logged in OUT
# and the script goes on.
#
#   OUT       where gpu_results.tgz goes (default gpu_out); the files themselves are in WORK (default /tmp/gpu_work)
#   TOTAL_S   wall-clock budget of the whole script in seconds (default 560)
#   BATCH     windows per optimiser step (default 64)
#   ATTN      video attention in training: sdpa (default, dense mask) or flex (compiled FlexAttention)
#   INIT      a training checkpoint to continue from (--init-from; default .carry/init.pt if gpu_carry.sh made it)
#   SPEED     0: skip the speed benchmark (default 1)
#   RESERVE   seconds kept for what follows training (default 110, 200 with FIDELITY=1)
#   FIDELITY  1: also run the fidelity benchmark on the new model (default 0: run it later, on held-out data)
#   DEVICE    cuda (default); cpu only to smoke-test this script on a machine without a GPU
#   TRAIN_ARGS  more `diffusion-world train` flags, e.g. "--sigma-ctx-max 0.5" (default none)
#   EXPORT_ARGS more `scripts/export_shipped.py` flags, e.g. "--no-termination-classifier" (default none)
#   CUDA_TESTS  0: skip the CUDA equivalence tests, which share the GPU with training (default 1)
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-gpu_out}; TOTAL_S=${TOTAL_S:-560}; BATCH=${BATCH:-64}; DEVICE=${DEVICE:-cuda}
ATTN=${ATTN:-sdpa}; FIDELITY=${FIDELITY:-0}; SPEED=${SPEED:-1}; INIT=${INIT:-}; TRAIN_ARGS=${TRAIN_ARGS:-}
EXPORT_ARGS=${EXPORT_ARGS:-}; CUDA_TESTS=${CUDA_TESTS:-1}
[ -z "$INIT" ] && [ -f .carry/init.pt ] && INIT=.carry/init.pt
DATASET=$(cat .carry/dataset_id 2>/dev/null || echo diffusion_world/cartpole-pixels-v0)
OUT=${WORK:-/tmp/gpu_work}
START=$(date +%s)
left() { echo $((TOTAL_S - ($(date +%s) - START))); }
mkdir -p "$OUT/bench" "$FINAL"
pack() { tar czf "$FINAL/gpu_results.tgz" -C "$OUT" . 2>/dev/null; }
trap pack EXIT  # whatever happens, what exists comes back
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .carry/whl/*.whl || { echo "wheel install failed" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD MINARI_DATASETS_PATH=$PWD/.carry/minari PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

TESTS=
if [ "$CUDA_TESTS" = 1 ]; then
  echo "== CUDA equivalence tests (in the background; cuda_tests.log)"
  timeout 300 python3 -m pytest -q -m gpu tests/test_cuda.py -k "not compile" -p no:cacheprovider \
    > "$OUT/cuda_tests.log" 2>&1 &
  TESTS=$!
fi
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 > "$OUT/gpu_util.csv" 2>/dev/null &

echo "== frame cache of $DATASET ($(left) s left)"
python3 -c "from diffusion_world.data.dataset import FrameCache; print(FrameCache.open('$DATASET', progress=False))"

RESERVE=${RESERVE:-$(( FIDELITY == 1 ? 200 : 110 ))}  # export + speed (+ fidelity)
MINUTES=$(python3 -c "print(max(0.5, ($(left) - $RESERVE - 30) / 60))")
echo "== train for $MINUTES min, batch $BATCH, attention $ATTN"
rm -rf runs/gpu  # a fresh run on every call (a warm machine keeps the last one; continue it with train --resume)
# shellcheck disable=SC2086
python3 -m diffusion_world.cli train --card envs/cartpole.toml --dataset-id "$DATASET" --out runs/gpu --device "$DEVICE" --batch-size "$BATCH" \
  --steps 1000000 --max-minutes "$MINUTES" --attn-backend "$ATTN" --eval-every 500 --checkpoint-every 500 \
  --quiet ${INIT:+--init-from "$INIT"} $TRAIN_ARGS 2>&1 | tee "$OUT/train.log" | tail -4
cp runs/gpu/metrics.jsonl runs/gpu/dashboard.png "$OUT/" 2>/dev/null
[ -n "$TESTS" ] && wait "$TESTS" && tail -3 "$OUT/cuda_tests.log"
pack
# The training checkpoint, to go on from it elsewhere, in files of < 16 MB each (what the device tool brings
# back): raw weights, EMA weights, the rest; the Adam moments stay behind. Reassembled by
# `python scripts/gpu_join.py join OUT runs/x/checkpoint.pt`.
python3 scripts/gpu_join.py split runs/gpu/checkpoint.pt "$FINAL"

EXTRA=diffusion_world/cartpole-random-v0
HAS_CLF=$(python3 -c "import torch; print(torch.load('runs/gpu/checkpoint.pt', weights_only=True, map_location='cpu').get('termination_classifier') is not None)" 2>/dev/null)
if [ "$HAS_CLF" = True ]; then
  echo "== termination classifier: carried over from $INIT"
elif [[ " $EXPORT_ARGS " == *" --no-termination-classifier "* ]]; then
  echo "== termination classifier: skipped (the export leaves it out; the model's head scores terminations)"
elif [ -d ".carry/minari/$EXTRA" ]; then
  echo "== termination classifier ($(left) s left)"
  timeout 120 python3 -m diffusion_world.cli fit-termination runs/gpu/checkpoint.pt --extra-dataset-id "$EXTRA" \
    --device "$DEVICE" --quiet > "$OUT/termination.log" 2>&1 || echo "fit-termination failed: see termination.log"
  tail -5 "$OUT/termination.log"
fi

echo "== export ($(left) s left)"
python3 scripts/export_shipped.py runs/gpu/checkpoint.pt cartpole_gpu \
  --note "train=OUT=... bash scripts/gpu_train.sh (diffusion-world train --card envs/cartpole.toml --dataset-id $DATASET${INIT:+ --init-from $INIT} --device $DEVICE --batch-size $BATCH --max-minutes $MINUTES --attn-backend $ATTN${TRAIN_ARGS:+ $TRAIN_ARGS})" \
  --note "hardware=$(head -2 "$OUT/gpu.txt" | tail -1)" $EXPORT_ARGS > "$OUT/export.log" 2>&1
cp diffusion_world/shipped/cartpole_gpu.pt diffusion_world/shipped/cartpole_gpu.json "$OUT/" 2>/dev/null
cat "$OUT/export.log"

[ "$SPEED" = 1 ] && echo "== speed benchmark on $DEVICE ($(left) s left)" && timeout $(( $(left) - 15 > 20 ? $(left) - 15 : 20 )) python3 -m diffusion_world.cli benchmark speed --quick --device "$DEVICE" \
  --world-model diffusion_world/shipped/cartpole_gpu.pt --card envs/cartpole.toml --out "$OUT/bench" \
  > "$OUT/speed.log" 2>&1 && tail -2 "$OUT/speed.log"

if [ "$FIDELITY" = 1 ]; then
  echo "== fidelity of the new model ($(left) s left)"
  timeout $(( $(left) - 10 > 10 ? $(left) - 10 : 10 )) python3 -m diffusion_world.cli benchmark fidelity \
    --device "$DEVICE" --world-model diffusion_world/shipped/cartpole_gpu.pt --card envs/cartpole.toml \
    --out "$OUT/bench" > "$OUT/fidelity.log" 2>&1
  tail -2 "$OUT/fidelity.log"
fi
echo "== done in $(( $(date +%s) - START )) s"
