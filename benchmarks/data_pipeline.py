"""Data pipeline benchmark: collection speed, disk use, cache build time and window-sampling throughput.

Runs in a temporary MINARI_DATASETS_PATH and writes its numbers to ``benchmarks/results/data_pipeline.json``:

    python benchmarks/data_pipeline.py            # CartPole-v1, 64x64, 2000 random steps
    python benchmarks/data_pipeline.py --steps 10000 --out /tmp/data_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from diffusion_world.bench.common import write_result

RESULTS = Path(__file__).resolve().parent / "results" / "data_pipeline.json"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--sample-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dw-bench-") as root:
        os.environ["MINARI_DATASETS_PATH"] = root
        from diffusion_world.data import FrameCache, WindowSampler, make_pixel_env
        from diffusion_world.data.collect import collect

        # Env alone (render + resize): the ceiling for collection speed.
        env = make_pixel_env(args.env, size=args.size)
        env.action_space.seed(0)
        env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(args.steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        env_steps_per_s = args.steps / (time.perf_counter() - start)
        env.close()

        start = time.perf_counter()
        dataset = collect(args.env, "bench/lossless-v0", steps=args.steps, size=args.size, progress=False)
        collect_seconds = time.perf_counter() - start
        num_frames = args.steps + dataset.total_episodes
        lossless_bytes = dir_bytes(Path(root) / "bench/lossless-v0/data")

        collect(args.env, "bench/jpeg-v0", steps=args.steps, size=args.size, lossless=False, progress=False)
        jpeg_bytes = dir_bytes(Path(root) / "bench/jpeg-v0/data")
        # What lossy storage does to the frames (same seeds, same frames before encoding), and what merging
        # datasets does: Minari's combine_datasets re-encodes them, diffusion-world combine keeps them.
        import minari

        from diffusion_world.data.collect import combine

        exact = np.concatenate([e.observations for e in dataset.iterate_episodes()]).astype(np.int16)
        jpeg = np.concatenate([e.observations for e in minari.load_dataset("bench/jpeg-v0").iterate_episodes()])
        # a second dataset to merge with (combine refuses one dataset twice); only the first's frames are compared
        other = collect(args.env, "bench/lossless-other-v0", steps=200, size=args.size, seed=10_000, progress=False)
        minari.combine_datasets([dataset, other], "bench/minari-combined-v0")
        combine(["bench/lossless-v0", "bench/lossless-other-v0"], "bench/combined-v0")

        def changed(dataset_id: str) -> tuple[float, int]:
            frames = np.concatenate([e.observations for e in minari.load_dataset(dataset_id).iterate_episodes()])
            diff = np.abs(frames[: len(exact)].astype(np.int16) - exact)
            return float((diff > 0).mean()), int(diff.max())

        jpeg_diff = np.abs(jpeg.astype(np.int16) - exact)
        minari_combine_changed = changed("bench/minari-combined-v0")
        combine_changed = changed("bench/combined-v0")

        start = time.perf_counter()
        cache = FrameCache.open("bench/lossless-v0", progress=False)
        cache_build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        cache = FrameCache.open("bench/lossless-v0", progress=False)
        cache_reopen_seconds = time.perf_counter() - start

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # short episodes are excluded; the count is reported below
            sampler = WindowSampler(cache, seq_len=args.seq_len)
        rng = np.random.default_rng(0)
        sampler.sample(args.batch_size, rng)  # warm the page cache
        batches = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.sample_seconds:
            sampler.sample(args.batch_size, rng)
            batches += 1
        batches_per_s = batches / (time.perf_counter() - start)

    per_10k = 10_000 / num_frames / 1e6
    results = {
        "collection_steps_per_s": round(args.steps / collect_seconds, 1),
        "env_only_steps_per_s": round(env_steps_per_s, 1),
        "disk_mb_per_10k_frames_lossless": round(lossless_bytes * per_10k, 2),
        "disk_mb_per_10k_frames_jpeg": round(jpeg_bytes * per_10k, 2),
        "disk_mb_per_10k_frames_uncompressed": round(args.size * args.size * 3 * 10_000 / 1e6, 2),
        "jpeg_changed_value_fraction": round(float((jpeg_diff > 0).mean()), 4),
        "jpeg_max_abs_error": int(jpeg_diff.max()),
        "minari_combine_changed_value_fraction": round(minari_combine_changed[0], 4),
        "minari_combine_max_abs_error": minari_combine_changed[1],
        "diffusion_world_combine_changed_value_fraction": round(combine_changed[0], 4),
        "cache_build_seconds": round(cache_build_seconds, 3),
        "cache_build_frames_per_s": round(num_frames / cache_build_seconds, 1),
        "cache_reopen_seconds": round(cache_reopen_seconds, 4),
        "sample_batches_per_s": round(batches_per_s, 1),
        "sample_frames_per_s": round(batches_per_s * args.batch_size * args.seq_len, 1),
        "config": {
            "env_id": args.env,
            "size": args.size,
            "steps": args.steps,
            "policy": "random",
            "num_frames": num_frames,
            "num_episodes": int(cache.num_episodes),
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "num_windows": sampler.num_windows,
            "num_excluded_episodes": sampler.num_excluded_episodes,
            "sample_seconds": args.sample_seconds,
        },
        "notes": "collection is render-bound (pygame); sampling reads a memmap that fits in the page cache",
    }
    write_result(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
