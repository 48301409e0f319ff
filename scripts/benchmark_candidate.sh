#!/usr/bin/env bash
# Benchmark a CartPole checkpoint trained further (e.g. from the shipped model, see README "The shipped CartPole
# model") on the held-out episodes, start states and seeds of the shipped model's results, so that the
# candidates table of benchmarks/README.md and the README puts it next to the shipped model (about 12 minutes on
# 2 CPU cores; run nothing else beside it: two torch processes on 2 cores slow each other many times over).
# Random play starts from the contexts stored in the checkpoint, which a run started with --init-from cartpole
# keeps from the shipped model:
#
#   bash scripts/benchmark_candidate.sh runs/cp/checkpoint.pt cp_step20000
#
# writes fidelity_TAG, termination_tails_TAG, control_TAG and random_play_TAG into OUT (default
# benchmarks/results); a result already there is kept (delete it to measure again), so a later run with RL_SEEDS
# adds RL transfer only. Needs the held-out datasets of scripts/cartpole_data.sh.
#   RL_SEEDS="0 1"  then RL transfer as the shipped model's rl_50k_sampled_seeds measures it (PPO for 50,000
#               steps in imagination, sampled terminations; about an hour per pair of seeds on 2 cores): two seeds
#               at a time side by side, one torch thread each (rl_50k_sampled_TAG_seed<S>), then their sweep
#               rl_50k_sampled_TAG_seeds; a seed already there is reused, so later runs can add seeds. The
#               real-env reference agents are kept in REFERENCE_CACHE (default runs/rl_references) for the next
#               candidate on this machine.
#   DRY_RUN=1   print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
  echo "usage: bash scripts/benchmark_candidate.sh CHECKPOINT TAG" >&2
  exit 2
fi
model=$1 tag=$2 out=${OUT:-benchmarks/results}
run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else echo "+ $*" >&2; "$@"; fi; }
common=(--world-model "$model" --card envs/cartpole.toml --out "$out")

bench() {  # bench SUITE NAME ARGS...: one result, kept when OUT already holds it
  if [ -e "$out/$2.json" ]; then echo "kept $out/$2.json" >&2; return; fi
  run diffusion-world benchmark "$1" "${common[@]}" --name "$2" "${@:3}"
}
bench fidelity "fidelity_$tag" --dataset-id diffusion_world/cartpole-pixels-heldout2-v0
bench termination "termination_tails_$tag" --dataset-id diffusion_world/cartpole-random-tails-heldout2-v0
bench control "control_$tag"
bench random_play "random_play_$tag" --context-source checkpoint

if [ -n "${RL_SEEDS:-}" ]; then
  read -ra seeds <<< "$RL_SEEDS"
  rl=(diffusion-world benchmark rl "${common[@]}" --termination sample --agent-steps 50000
      --reference-cache "${REFERENCE_CACHE:-runs/rl_references}")
  for ((i = 0; i < ${#seeds[@]}; i += 2)); do
    pids=()
    for s in "${seeds[@]:i:2}"; do
      if [ -e "$out/rl_50k_sampled_${tag}_seed$s.json" ]; then continue; fi
      OMP_NUM_THREADS=1 run "${rl[@]}" --seed "$s" --name "rl_50k_sampled_${tag}_seed$s" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
  done
  run "${rl[@]}" --seed "${seeds[@]}" --name "rl_50k_sampled_$tag"
fi
