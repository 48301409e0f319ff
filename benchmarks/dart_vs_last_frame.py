"""Sample efficiency, the seed's central claim: DART (all T frames of a window supervised in one pass) vs
last-frame-only supervision (same model, same T, loss on the last frame only), at equal wall-clock on this CPU.

Three runs train in alternating time slices of the same length, so machine load hits them equally: DART with B
windows per step, last-frame-only with the same B, and last-frame-only with ``--last-frame-batch`` windows (about
the same step time as DART, hence the same number of optimiser steps in the budget). Every
``--eval-every`` seconds of its own training time each model is scored on the same held-out windows with the
same noise: the EDM-weighted denoising error of the last frame of the window (what both are trained for) and of
all frames. Writes ``benchmarks/results/dart_vs_last_frame.json`` and a PNG of the loss-vs-time curves.

    python benchmarks/dart_vs_last_frame.py --budget 300
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_world.bench.common import write_result
from diffusion_world.data.dataset import FrameCache, WindowSampler
from diffusion_world.diffusion.sampler import frames_to_x
from diffusion_world.model.config import action_space_to_dict, preset_config
from diffusion_world.model.dart import DartWorldModel, count_parameters
from diffusion_world.model.mp import normalize_weights_
from diffusion_world.training.loss import LossConfig, dart_loss, draw_noise

RESULTS = Path(__file__).resolve().parent / "results"


def tensors(batch: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [frames_to_x(torch.from_numpy(np.ascontiguousarray(batch["frames"])))] + [
        torch.from_numpy(batch[k]) for k in ("actions", "has_action", "rewards", "terminations")]


@torch.no_grad()
def heldout_error(model: DartWorldModel, val: list[torch.Tensor], seq_len: int) -> dict[str, float]:
    """EDM-weighted denoising error per noisy frame (fixed noise), for the last frame and for all frames."""
    x0, a, has, r, t = val
    draw = draw_noise(x0.shape[0], seq_len, tuple(x0.shape[2:]), LossConfig(), torch.Generator().manual_seed(7))
    sigma = draw.sigma
    out = model(x0 + sigma[..., None, None, None] * draw.noise, sigma,
                x0 + draw.sigma_ctx[..., None, None, None] * draw.noise_ctx, draw.sigma_ctx, a, has)
    sd = model.cfg.sigma_data
    w = (sigma**2 + sd**2) / (sigma * sd) ** 2
    err = w * (out.denoised - x0).square().mean(dim=(2, 3, 4))  # (B, T)
    return {"last_frame": float(err[:, -1].mean()), "all_frames": float(err.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per variant")
    parser.add_argument("--slice", type=float, default=10.0, help="seconds per alternating time slice")
    parser.add_argument("--eval-every", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6000, help="CartPole steps to collect")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--last-frame-batch", type=int, default=16, help="windows per step of the 3rd run")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "dart_vs_last_frame.json")
    args = parser.parse_args()

    os.environ.setdefault("MINARI_DATASETS_PATH", tempfile.mkdtemp(prefix="dw_bench_"))
    from diffusion_world.data.collect import collect

    dataset_id = f"bench/cartpole-{args.size}-v0"
    import minari

    if dataset_id not in minari.list_local_datasets():
        collect("CartPole-v1", dataset_id, steps=args.steps, size=args.size, policy="random", seed=0, progress=False)
    cache = FrameCache.open(dataset_id, progress=False)
    train_eps, val_eps = cache.episode_split(0.2, 0)
    train_w = WindowSampler(cache, args.seq_len, train_eps)
    val = tensors(WindowSampler(cache, args.seq_len, val_eps).sample(32, np.random.default_rng(0)))
    overrides = dict(frame_size=(args.size, args.size), action_space=action_space_to_dict(cache.action_space))
    runs = {}
    variants = {"dart": ("dart", args.batch_size), "last_frame": ("last_frame", args.batch_size),
                f"last_frame_b{args.last_frame_batch}": ("last_frame", args.last_frame_batch)}
    for name, (supervision, batch) in variants.items():
        torch.manual_seed(0)
        model = DartWorldModel(preset_config(args.preset, **overrides))
        normalize_weights_(model)
        runs[name] = {"model": model, "opt": torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.99)),
                      "cfg": LossConfig(supervision=supervision), "batch": batch, "time": 0.0, "steps": 0,
                      "frames": 0, "curve": [], "next_eval": 0.0, "rng": np.random.default_rng(1)}
    print(f"{args.preset} preset at {args.size}x{args.size}: {count_parameters(runs['dart']['model']) / 1e6:.2f}M "
          f"parameters; {train_w.num_windows} train windows; budget {args.budget:.0f}s per variant")
    while any(r["time"] < args.budget for r in runs.values()):
        for name, r in runs.items():
            if r["time"] >= args.budget:
                continue
            t_slice = time.perf_counter()
            while time.perf_counter() - t_slice < args.slice and r["time"] < args.budget:
                if r["time"] >= r["next_eval"]:
                    r["model"].eval()
                    r["curve"].append({"train_s": r["time"], "steps": r["steps"], "supervised_frames": r["frames"],
                                       **heldout_error(r["model"], val, args.seq_len)})
                    r["model"].train()
                    r["next_eval"] += args.eval_every
                t0 = time.perf_counter()
                x0, a, has, rew, term = tensors(train_w.sample(r["batch"], r["rng"]))
                draw = draw_noise(r["batch"], args.seq_len, tuple(x0.shape[2:]), r["cfg"],
                                  torch.Generator().manual_seed(r["steps"]))
                out = dart_loss(r["model"], x0, a, has, rew, term, draw, r["cfg"], 0.5)
                out.total.backward()
                r["opt"].step()
                r["opt"].zero_grad(set_to_none=True)
                normalize_weights_(r["model"])
                r["time"] += time.perf_counter() - t0
                r["steps"] += 1
                r["frames"] += out.num_supervised
            print(f"{name:14s} {r['time']:6.0f}s {r['steps']:5d} steps {r['frames'] / max(r['time'], 1e-9):7.1f} "
                  f"supervised frames/s; held-out error (last frame) "
                  f"{r['curve'][-1]['last_frame'] if r['curve'] else float('nan'):.4f}", flush=True)
    for r in runs.values():
        r["model"].eval()
        r["curve"].append({"train_s": r["time"], "steps": r["steps"], "supervised_frames": r["frames"],
                           **heldout_error(r["model"], val, args.seq_len)})
    fps = {k: r["frames"] / r["time"] for k, r in runs.items()}
    result = {
        "setup": {"preset": args.preset, "frame_size": args.size, "batch_size": args.batch_size,
                  "seq_len": args.seq_len,
                  "budget_s": args.budget, "slice_s": args.slice, "dataset": f"CartPole-v1 random, {args.steps} steps",
                  "num_parameters": count_parameters(runs["dart"]["model"])},
        "runs": {k: {"batch_size": r["batch"], "steps": r["steps"], "supervised_frames": r["frames"],
                     "train_s": r["time"], "supervised_frames_per_s": fps[k], "curve": r["curve"]}
                 for k, r in runs.items()},
        "headline": {
            "dart_vs_last_frame_supervised_fps_ratio": fps["dart"] / fps["last_frame"],
            "expected_ratio_(T+1)/2": (args.seq_len + 1) / 2,
            "final_heldout_error_last_frame_dart": runs["dart"]["curve"][-1]["last_frame"],
            "final_heldout_error_last_frame_last_frame_only": runs["last_frame"]["curve"][-1]["last_frame"],
            "final_heldout_error_all_frames_dart": runs["dart"]["curve"][-1]["all_frames"],
            "final_heldout_error_all_frames_last_frame_only": runs["last_frame"]["curve"][-1]["all_frames"],
            **{f"final_heldout_error_{k}": r["curve"][-1]["last_frame"] for k, r in runs.items()},
            **{f"steps_{k}": r["steps"] for k, r in runs.items()},
        },
    }
    write_result(args.out, result)
    plot(args.out.with_suffix(".png"), result)
    print(result["headline"])


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, r in result["runs"].items():
        c = r["curve"]
        label = f"{name} ({r['supervised_frames_per_s']:.0f} supervised frames/s)"
        axes[0].plot([p["train_s"] for p in c], [p["last_frame"] for p in c], "o-", ms=3, label=label)
        axes[1].plot([p["train_s"] for p in c], [p["all_frames"] for p in c], "o-", ms=3, label=label)
    for ax, title in zip(axes, ("held-out error, last frame of the window", "held-out error, all frames")):
        ax.set_xlabel("training time (s, same machine, alternating slices)")
        ax.set_ylabel("EDM-weighted denoising error")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
