"""What every benchmark result records: the machine, the package version, the git commit, the load."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_world.errors import UserError
from diffusion_world.files import atomic_write_text
from diffusion_world.precision import cpu_has_native_bf16


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the diffusion_world checkout that runs; None for an installed copy (one inside another
    project's git repository, e.g. its .venv, would otherwise report that project's commit)."""
    package = Path(__file__).resolve().parents[1]  # .../diffusion_world
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10,
                             cwd=package).stdout.strip()
        if not top or Path(top).resolve() / "diffusion_world" != package:
            return None
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=package)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    from diffusion_world import __version__

    info: dict[str, Any] = {
        "package_version": __version__, "git_commit": git_commit(), "date": datetime.now(UTC).isoformat(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        # two CPUs of one model name may differ in this (AVX512-BF16 or AMX), which decides bf16 speed
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch": str(torch.__version__), "python": platform.python_version(), "loadavg_at_start": loadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write a benchmark result as JSON (atomically), adding the machine description."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), **result}
    return atomic_write_text(path, json.dumps(result, indent=2, sort_keys=False) + "\n")


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Best-of-``repeat`` wall time of ``fn()`` in seconds (best-of filters the noise of a shared machine)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sampler_label(r: dict[str, Any]) -> str:
    """How a result's imagined frames were sampled, for its Markdown: ``K=3``, or ``K=3, history guidance w=2``."""
    w = r.get("history_guidance")
    return f"K={r['sampler_steps']}" + (f", history guidance w={w:g}" if w is not None else "")


# the imagination agent's training return at the end: the mean over its last rollouts of the return of the
# imagined episodes that ended in each (the learning curve); high next to a low real-env return = exploitation
TRAINING_END_ROLLOUTS = 5


def training_end_return(r: dict[str, Any], rollouts: int = TRAINING_END_ROLLOUTS) -> float | None:
    """The mean return in the env it trains in of a ``benchmark rl`` result's imagination agent over the last
    ``rollouts`` rollouts of its learning curve (None without one)."""
    curve = (r.get("imagination") or {}).get("curve") or []
    return float(sum(c[1] for c in curve[-rollouts:]) / len(curve[-rollouts:])) if curve else None


def heldout_episodes(cache: Any, dataset: dict[str, Any], train_config: dict[str, Any]
                     ) -> tuple[np.ndarray, str, list[int] | None]:
    """The episodes of ``cache`` (a ``FrameCache``) a world model trained with ``train_config`` on ``dataset``
    (its checkpoint's) did not see: the training run's validation split when ``cache`` is its own dataset, else
    every episode. Returns (episode indices, how they were held out, [lowest, highest] reset seed of those episodes
    where collect recorded them all: ``collect --seed`` gives episode i the seed seed + i, so they can be collected
    again)."""
    if cache.dataset_id == dataset.get("dataset_id"):
        _, episodes = cache.episode_split(train_config.get("val_fraction", 0.1), train_config.get("seed", 0))
        how = "validation split of the training dataset"
    else:
        episodes = np.arange(cache.num_episodes)
        how = "every episode of a dataset the model was not trained on"
    seeds = np.asarray(cache.episode_seeds)[episodes]
    seed_range = [int(seeds.min()), int(seeds.max())] if len(seeds) and (seeds >= 0).all() else None
    return episodes, how, seed_range


def comparison_dataset(wm: Any, suite: str) -> str:
    """The dataset whose real episodes a suite compares with by default: the model's training dataset (its
    held-out episodes), with a clear :class:`UserError` where it is not on this machine (e.g. the shipped model's,
    after a pip install) saying how to give another."""
    from diffusion_world.data.dataset import minari_datasets_root

    dataset_id = wm.dataset.get("dataset_id")
    if not dataset_id:
        raise UserError("the checkpoint names no dataset: pass --dataset-id")
    if not (minari_datasets_root() / dataset_id / "data").is_dir():
        raise UserError(f"benchmark {suite} compares the model with real episodes: by default the held-out ones of "
                        f"its training dataset {dataset_id!r}, which is not in the Minari root "
                        f"{minari_datasets_root()}. Give --dataset-id with a pixel dataset of the same env and frame "
                        "size (all its episodes then count as held out), e.g. one collected with `diffusion-world "
                        "collect --env CartPole-v1 --dataset-id me/cartpole-v0 --steps 5000` for a CartPole model")
    return str(dataset_id)
