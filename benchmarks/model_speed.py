"""DART model speed on this machine: denoiser calls and env steps vs batch and cache length, training steps.

    python benchmarks/model_speed.py                      # small preset, 64x64, CPU
    python benchmarks/model_speed.py --device cuda        # the same on a GPU (bf16 autocast)

Writes ``benchmarks/results/model_speed_<device>.json``. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from diffusion_world.bench.common import write_result
from diffusion_world.diffusion.sampler import SamplerConfig, edm_sigmas, sample_next_frame
from diffusion_world.model.config import preset_config
from diffusion_world.model.dart import DartWorldModel, count_parameters, forward_gflops_per_frame
from diffusion_world.model.mp import normalize_weights_
from diffusion_world.training.loss import LossConfig, dart_loss, draw_noise

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    dev = torch.device(args.device)
    amp = dev.type == "cuda"
    torch.manual_seed(0)
    cfg = preset_config(args.preset, action_space={"type": "discrete", "n": 2})
    model = DartWorldModel(cfg).to(dev)
    normalize_weights_(model)
    H, W = cfg.frame_size
    flops = forward_gflops_per_frame(model)
    result: dict = {"preset": args.preset, "model_config": cfg.to_dict(), "num_parameters": count_parameters(model),
                    **flops, "device": str(dev), "amp_bf16": amp}
    print(f"{args.preset}: {count_parameters(model) / 1e6:.2f}M parameters, {flops}")

    # ---- inference: one env step = K denoiser calls + commit, vs batch size and frames in the cache
    model.eval()
    sampler = SamplerConfig(num_steps=3)
    sig = edm_sigmas(sampler, dev)
    rows = []
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        for B in (1, 16):
            for cache_len in (4, 16, 64):
                state = model.new_state(B, dev)
                x = torch.rand(B, cache_len, 3, H, W, device=dev) * 2 - 1
                a = torch.randint(0, 2, (B, cache_len), device=dev)
                model.warmup(state, x, sampler.sigma_min, a, torch.ones_like(a, dtype=torch.bool))
                gens = [torch.Generator().manual_seed(i) for i in range(B)]
                act, has = a[:, 0], torch.ones(B, dtype=torch.bool, device=dev)
                best_step, best_call = float("inf"), float("inf")
                for r in range(args.repeat + 1):
                    s = copy.deepcopy(state)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    sample_next_frame(model, s, act, has, gens, sampler, sig)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    # a denoiser call after the first of the step: the causal-conv temporal sums are cached
                    s2 = copy.deepcopy(state)
                    model.denoise_step(s2, x[:, 0], sig[0].expand(B), act, has)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    model.denoise_step(s2, x[:, 0], sig[1].expand(B), act, has)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t3 = time.perf_counter()
                    if r > 0:  # the first round is warm-up
                        best_step, best_call = min(best_step, t1 - t0), min(best_call, t3 - t2)
                cached = int((state.slot_pos >= 0).sum(1)[0])
                row = {"batch": B, "context_frames": cache_len, "frames_in_cache": cached,
                       "env_step_ms": best_step * 1e3, "denoiser_call_ms": best_call * 1e3,
                       "env_steps_per_s": B / best_step}
                rows.append(row)
                print(row)
    result["inference"] = rows

    # ---- training: B=4, T=16, DART (all 16 frames supervised) vs last-frame-only (the same model and T)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    B, T = 4, 16
    x0 = torch.rand(B, T, 3, H, W, device=dev) * 2 - 1
    a = torch.randint(0, 2, (B, T), device=dev)
    has = torch.ones(B, T, dtype=torch.bool, device=dev)
    zeros = torch.zeros(B, T, device=dev)
    train_rows = []
    for supervision in ("dart", "last_frame"):
        lcfg = LossConfig(supervision=supervision)
        best = float("inf")
        n = 0
        for r in range(max(2, args.repeat // 2) + 1):
            draw = draw_noise(B, T, (3, H, W), lcfg, torch.Generator().manual_seed(r))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = dart_loss(model, x0, a, has, zeros, zeros.bool(), draw, lcfg, cfg.sigma_data,
                                "flex" if dev.type == "cuda" else "sdpa")
            out.total.backward()
            opt.step()
            opt.zero_grad()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if r > 0:
                best = min(best, time.perf_counter() - t0)
            n = out.num_supervised
        row = {"supervision": supervision, "batch": B, "seq_len": T, "step_s": best, "supervised_frames": n,
               "supervised_frames_per_s": n / best}
        train_rows.append(row)
        print(row)
    result["training"] = train_rows
    result["dart_vs_last_frame_supervised_fps_ratio"] = (
        train_rows[0]["supervised_frames_per_s"] / train_rows[1]["supervised_frames_per_s"])
    out_path = args.out or RESULTS / f"model_speed_{dev.type}.json"
    write_result(out_path, result)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
