"""Imagined env speed: steps/s of DiffusionWorldVectorEnv vs batch size, and step time vs frames already generated.

    python benchmarks/env_speed.py                    # small preset, 64x64, K=3 Euler steps, CPU
    python benchmarks/env_speed.py --batches 1 16 --device cuda
    python benchmarks/env_speed.py --precision fp32 bf16  # the env's precision= settings, one sweep each

A step is the whole env step: K denoiser calls, the cache update, reward and termination, uint8 frames back as
numpy, frame stack and truncation bookkeeping. Random weights (speed does not depend on them) and random
context frames stored in a temporary checkpoint; no episode ends while timing (termination_threshold=1), so every
timed step generates a frame. Writes ``benchmarks/results/env_speed.json``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_world.bench.common import cpu_model, loadavg, write_result
from diffusion_world.checkpoint import save_checkpoint
from diffusion_world.envs import DiffusionWorldVectorEnv
from diffusion_world.model.config import preset_config
from diffusion_world.model.dart import DartWorldModel, count_parameters, forward_gflops_per_frame
from diffusion_world.model.mp import normalize_weights_
from diffusion_world.precision import PRECISIONS, use_bf16

RESULTS = Path(__file__).resolve().parent / "results" / "env_speed.json"
NEVER_ENDS = 1.0  # termination_threshold while timing: a probability never exceeds it
# DIAMOND's Atari world model timed with its own code (random weights: its 4.41M-parameter denoiser called 3 times
# per frame on 4 context frames, then its 5.90M reward/termination model), env steps/s by batch size, on the CPUs it
# was timed on: DESIGN.md section 7 (2026-11-26, on the Intel Xeon this project's results of that day ran on) and
# benchmarks/history.md (2026-12-07, the AMD EPYC: the median of three runs, between runs of this script). Elsewhere:
# no reference.
DIAMOND_CPU_STEPS_PER_S = {"Intel(R) Xeon(R) Processor": {1: 4.4, 16: 4.4}, "AMD EPYC": {1: 2.7, 16: 2.5}}


def random_checkpoint(path: Path, preset: str, sampler_steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    space = {"type": "discrete", "n": 4}
    cfg = preset_config(preset, action_space=space)
    model = DartWorldModel(cfg)
    normalize_weights_(model)
    H, W = cfg.frame_size
    rng = np.random.default_rng(0)
    contexts = {"frames": torch.from_numpy(rng.integers(0, 256, (4, 8, H, W, 3), dtype=np.uint8)),
                "actions": torch.from_numpy(rng.integers(0, 4, (4, 8))),
                "has_action": torch.ones(4, 8, dtype=torch.bool)}
    save_checkpoint(path, {"model_config": cfg.to_dict(), "train_config": {},
                           "dataset": {"dataset_id": None, "frame_size": [H, W], "action_space": space,
                                       "env_spec": None},
                           "imagination": {"sampler_steps": sampler_steps, "context_frames": 4, "horizon": 10**9},
                           "contexts": contexts, "model": model.state_dict(), "ema": None, "step": 0})
    return {"preset": preset, "num_parameters": count_parameters(model), "frame_size": [H, W],
            "context_window": cfg.context_window, **forward_gflops_per_frame(model.eval())}


def speed_envs(B: int, path: Path, device: str, precision: str = "fp32") -> DiffusionWorldVectorEnv:
    """B envs on the random checkpoint whose episodes never end: its untrained termination head fires at random,
    and a step after an episode end is an autoreset (a context warm-up, no frame generated), which would be
    timed as a (much cheaper) imagined step. A probability never exceeds 1."""
    return DiffusionWorldVectorEnv(B, str(path), context_source="checkpoint", device=device, precision=precision,
                                   termination_threshold=NEVER_ENDS)


def step_times(envs: DiffusionWorldVectorEnv, num_steps: int) -> list[float]:
    rng = np.random.default_rng(0)
    times = []
    for _ in range(num_steps):
        actions = rng.integers(0, 4, envs.num_envs)
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = envs.step(actions)
        if envs.core.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if (terminated | truncated).any():
            raise RuntimeError("an episode ended while timing: the next step would time an autoreset")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--sampler-steps", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=12.0, help="time budget per batch size (after warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=None,
                        help="env precision(s) to sweep (default: fp32, plus bf16 where it is native)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    precisions = args.precision or ["fp32"] + (["bf16"] if use_bf16("auto", torch.device(args.device)) else [])
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = loadavg()
    print(f"loadavg at start: {load_start}, torch threads: {torch.get_num_threads()}")
    diamond = DIAMOND_CPU_STEPS_PER_S.get(cpu_model(), {}) if args.device == "cpu" else {}

    with tempfile.TemporaryDirectory(prefix="dw-env-speed-") as tmp:
        path = Path(tmp) / "random.pt"
        model_info = random_checkpoint(path, args.preset, args.sampler_steps)
        print(f"{args.preset}: {model_info['num_parameters'] / 1e6:.2f}M parameters, "
              f"{model_info['denoiser_call_gflops']:.2f} GFLOP per denoiser call")

        batches = []
        for B, precision in itertools.product(args.batches, precisions):  # alternating: the same load
            envs = speed_envs(B, path, args.device, precision)
            envs.reset(seed=0)
            step_times(envs, 2)  # warm-up (first calls allocate and pick kernels)
            times: list[float] = []
            while sum(times) < args.seconds or len(times) < 3:
                times += step_times(envs, 1)
            median = statistics.median(times)
            row = {"precision": precision, "batch_size": B, "steps_timed": len(times), "median_step_s": median,
                   "best_step_s": min(times), "env_steps_per_s": B / median,
                   "env_steps_per_s_best_step": B / min(times),
                   "vs_diamond_cpu": B / median / diamond[B] if B in diamond else None}
            batches.append(row)
            print(f"{precision} batch {B:3d}: {row['env_steps_per_s']:8.1f} env steps/s (median step "
                  f"{median * 1e3:.0f} ms, {len(times)} steps; DIAMOND on this CPU: {diamond.get(B, 'not timed')})")

        # step time vs frames already generated, batch 1: 0 .. 4x the KV window
        window = model_info["context_window"]
        envs = speed_envs(1, path, args.device)
        envs.reset(seed=0)
        step_times(envs, 2)
        envs.reset(seed=0)
        times = step_times(envs, 4 * window + 5)  # 9 steps around each point, 4x the window included
        context = envs.core.context_frames
        vs_length = []
        for generated in (0, window // 2, window, 2 * window, 3 * window, 4 * window):
            around = times[max(0, generated - 4):generated + 5]  # the 9 steps around that point
            vs_length.append({"frames_generated": generated, "frames_in_cache": min(context + generated, window),
                              "median_step_s": statistics.median(around), "best_step_s": min(around)})
        # best-of filters the other processes of a shared machine; the median is kept for reference
        flat_ratio = vs_length[-1]["best_step_s"] / vs_length[2]["best_step_s"]
        for r in vs_length:
            print(f"after {r['frames_generated']:4d} generated frames ({r['frames_in_cache']:2d} cached): "
                  f"best {r['best_step_s'] * 1e3:6.1f} ms, median {r['median_step_s'] * 1e3:6.1f} ms per step")
        print(f"best step time at 4x the window / at 1x: {flat_ratio:.2f} (flat = 1)")

    load_end = loadavg()
    print(f"loadavg at end: {load_end}")
    result = {"benchmark": "env_speed", "device": args.device, "sampler": {"steps": args.sampler_steps,
                                                                          "solver": "euler"},
              "model": model_info, "termination_threshold": NEVER_ENDS, "precisions": precisions, "batches": batches,
              "step_time_vs_frames_generated": vs_length,
              "best_step_time_ratio_4x_window_vs_1x": flat_ratio, "loadavg_before_run": load_start,
              "loadavg_at_end": load_end,
              "diamond_reference_cpu_steps_per_s": {str(b): v for b, v in diamond.items()} or None}
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
