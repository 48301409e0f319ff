"""Memory: does the world model recall a cue shown once, ``n`` steps before it matters? (the "no amnesia" claim)

The env is :class:`~diffusion_world.data.cue_memory_env.CueMemoryEnv`: a colour cue (one of K) fills a patch of
frame 0, a distractor runs for ``n`` steps under random actions, and at step ``n + 1`` the cue colour reappears.
In one run, on the same collected data and with the same training budget (optimiser steps and supervised frames
per step), two models of the same architecture are trained:

* ours: a context window covering the whole episode (``n + 2`` frames), trained on whole-episode windows;
* the short-memory baseline (DIAMOND's design): a context window of 4 frames, trained on windows of 5 frames
  (what it sees at inference: the trainer does not restrict attention to the window inside a training window).

Each model is reset on the first ``context`` real frames of fresh episodes (seeds never used for collection), the
cue frame included, and replays the episode's real actions up to the reappearance. The recalled colour is the
palette colour nearest to the mean colour of the patch in the imagined last frame; accuracy is the fraction of
episodes where it is the cue. Chance is 1/K. The same models are also evaluated on shorter gaps n' < n (the timer
in every frame says when the colour comes back, so only the colour has to be remembered).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_world.checkpoint import WorldModel, load_world_model
from diffusion_world.data.cue_memory_env import (
    BACKGROUND,
    COLOUR_NAMES,
    CUE_MEMORY_ENV_ID,
    PALETTE,
    nearest_colour,
    patch_box,
    register_cue_memory_env,
)
from diffusion_world.diffusion.sampler import SamplerConfig, imagine
from diffusion_world.errors import UserError

# The tiny preset with a third U-Net level, its video attention at 4x4 (16 tokens per frame, not 64): a 26-frame
# window trains about twice as fast on CPU. Both models share it; only the context window differs.
MODEL_OVERRIDES: dict[str, Any] = {"channels": [16, 32, 48], "enc_blocks": [0, 1, 1], "video_attention": [4],
                                   "attention_head_dim": 16}
SHORT_MEMORY_WINDOW = 4  # DIAMOND conditions on the last 4 frames
HELDOUT_SEED = 1_000_000  # held-out episodes reset with seeds from here; collection uses seeds 0, 1, 2, ...


@contextlib.contextmanager
def minari_root(root: str | os.PathLike) -> Iterator[None]:
    """Point Minari (and :class:`FrameCache`) at ``root`` for the duration."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def collect_cue_memory(dataset_id: str, n: int, num_episodes: int, num_colours: int = 4, size: int = 16,
                       seed: int = 0, progress: bool = True) -> str:
    """Collect ``num_episodes`` random-action CueMemory episodes (``n + 1`` steps each) unless already there."""
    from diffusion_world.data.collect import collect, dataset_path

    register_cue_memory_env()
    if not dataset_path(dataset_id).exists():
        collect(CUE_MEMORY_ENV_ID, dataset_id, steps=num_episodes * (n + 1), size=size, seed=seed,
                progress=progress, env_kwargs={"n": n, "num_colours": num_colours, "frame_size": size})
    return dataset_id


def heldout_episodes(n: int, num_episodes: int, num_colours: int = 4, size: int = 16,
                     seed: int = HELDOUT_SEED) -> dict[str, np.ndarray]:
    """Fresh random-action episodes through the same pixel env as collection (episode i reset with seed+i).

    Returns ``frames`` (N, n+2, H, W, 3) uint8, ``prev_actions`` (N, n+2) int64 (the action that led to each
    frame), ``has_prev_action`` (N, n+2) bool and ``cues`` (N,) int64, aligned like :class:`FrameCache`.
    """
    from diffusion_world.data.pixel_env import make_pixel_env

    register_cue_memory_env()
    env = make_pixel_env(CUE_MEMORY_ENV_ID, size=size, n=n, num_colours=num_colours, frame_size=size)
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_episodes, n + 2, size, size, 3), dtype=np.uint8)
    actions = np.zeros((num_episodes, n + 2), dtype=np.int64)
    cues = np.zeros(num_episodes, dtype=np.int64)
    try:
        for i in range(num_episodes):
            frames[i, 0], info = env.reset(seed=seed + i)
            cues[i] = info["cue"]
            for t in range(1, n + 2):
                actions[i, t] = rng.integers(env.action_space.n)
                frames[i, t], _, terminated, _, _ = env.step(int(actions[i, t]))
            if not terminated:
                raise RuntimeError("a CueMemory episode did not end on the reappearance")
    finally:
        env.close()
    has = np.ones((num_episodes, n + 2), dtype=bool)
    has[:, 0] = False
    return {"frames": frames, "prev_actions": actions, "has_prev_action": has, "cues": cues}


def _binomial_ci95(k: int, total: int) -> list[float]:
    """Wilson score interval of a proportion k / total."""
    if total == 0:
        return [float("nan"), float("nan")]
    z, p = 1.96, k / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def recall(wm: WorldModel, episodes: dict[str, np.ndarray], context: int, num_colours: int,
           sampler: SamplerConfig, batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Reset on each episode's first ``context`` real frames, replay its actions to the end, read the colour.

    Returns ``accuracy`` and its 95% interval, ``revealed`` (the fraction of imagined last frames whose patch is
    nearer to a palette colour than to the grey background), the confusion matrix (rows: cue, columns: recalled)
    and ``frames`` (N, S, H, W, 3), the imagined frames after the context.
    """
    num, length = episodes["frames"].shape[:2]
    if not 1 <= context < length:
        raise UserError(f"context must be in [1, {length - 1}] frames for episodes of {length} frames, got {context}")
    imagined = []
    for lo in tqdm(range(0, num, batch_size), desc="imagine", disable=not progress, leave=False):
        rows = slice(lo, lo + batch_size)
        frames = torch.from_numpy(episodes["frames"][rows])
        actions = torch.from_numpy(episodes["prev_actions"][rows])
        has = torch.from_numpy(episodes["has_prev_action"][rows])
        gens = [torch.Generator().manual_seed(seed + lo + i) for i in range(len(frames))]
        out = imagine(wm.model, frames[:, :context], actions[:, :context], has[:, :context], actions[:, context:],
                      gens, sampler)
        imagined.append(out["frames"].numpy())
    fake = np.concatenate(imagined)
    last = fake[:, -1]
    recalled = nearest_colour(last, num_colours)
    cues = episodes["cues"]
    hits = int((recalled == cues).sum())
    top, bottom, left, right = patch_box(last.shape[1])
    mean = last[:, top:bottom, left:right].reshape(num, -1, 3).astype(np.float64).mean(axis=1)
    to_palette = np.linalg.norm(mean[:, None] - PALETTE[:num_colours], axis=-1).min(axis=1)
    to_background = np.linalg.norm(mean - BACKGROUND, axis=-1)
    confusion = np.zeros((num_colours, num_colours), dtype=np.int64)
    np.add.at(confusion, (cues, recalled), 1)
    return {"accuracy": hits / num, "accuracy_ci95": _binomial_ci95(hits, num), "num_episodes": num,
            "revealed": float((to_palette < to_background).mean()), "confusion": confusion.tolist(),
            "recalled": recalled, "frames": fake}


def train_pair(dataset_id: str, work_dir: Path, n: int, steps: int, batch_size: int, lr: float,
               model: dict[str, Any], short_window: int = SHORT_MEMORY_WINDOW, seed: int = 0,
               progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train ours (window n+2, whole-episode windows) and the short-memory model with the same budget.

    The budget is the same number of optimiser steps with the same number of supervised frames per step: the
    short model's windows have ``short_window + 1`` frames, so it gets proportionally more of them per batch.
    """
    from diffusion_world.training.train import TrainConfig, train

    episode_frames = n + 2
    runs = {
        "ours": {"context_window": max(episode_frames, 32), "seq_len": episode_frames, "batch_size": batch_size},
        "short_memory": {"context_window": short_window, "seq_len": short_window + 1,
                         "batch_size": max(1, round(batch_size * episode_frames / (short_window + 1)))},
    }
    for name, run in runs.items():
        cfg = TrainConfig(dataset_id=dataset_id, out_dir=str(work_dir / name), preset="tiny",
                          model={**model, "context_window": run["context_window"]}, steps=steps,
                          batch_size=run["batch_size"], seq_len=run["seq_len"], lr=lr,
                          warmup_steps=min(50, max(1, steps // 4)), eval_every=steps, checkpoint_every=steps,
                          log_every=max(1, steps // 20), seed=seed, progress=progress)
        started = time.perf_counter()
        run["checkpoint"] = str(train(cfg))
        run["train_seconds"] = time.perf_counter() - started
        run["steps"] = steps
        run["supervised_frames"] = steps * run["batch_size"] * run["seq_len"]
    return runs


def run_memory(out_dir: str | os.PathLike, n: int = 24, quick: bool = False, num_colours: int = 4,
               size: int = 16, num_train_episodes: int | None = None, steps: int | None = None,
               batch_size: int = 8, lr: float = 2e-3, context: int = 4, num_eval_episodes: int | None = None,
               sweep: Sequence[int] | None = None, sampler_steps: int = 3, short_window: int = SHORT_MEMORY_WINDOW,
               model: dict[str, Any] | None = None, datasets_path: str | os.PathLike | None = None,
               work_dir: str | os.PathLike | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Collect, train ours and the short-memory baseline, measure recall; write ``memory.png`` into ``out_dir``.

    ``quick`` shrinks everything (n=8, a few dozen steps) to a few minutes on 2 CPU cores: it checks that the
    pipeline runs, its accuracy means nothing. ``datasets_path`` (default: a temporary directory) is the Minari
    root to collect into; ``work_dir`` (default: temporary) keeps the checkpoints. ``sweep``: the other gaps n'
    to evaluate the same models at (default: 4, 8, 16 below n; none when quick).

    Example:
        >>> result = run_memory("benchmarks/results", n=24)  # doctest: +SKIP
        >>> result["headline"]  # doctest: +SKIP
        {'n': 24, 'accuracy': ..., 'short_memory_accuracy': ..., 'chance': 0.25}
    """
    if quick:
        n = min(n, 8)
    num_train_episodes = num_train_episodes or (120 if quick else 1000)
    steps = steps or (30 if quick else 600)
    num_eval_episodes = num_eval_episodes or (32 if quick else 256)
    sweep = sorted({m for m in (sweep if sweep is not None else ([] if quick else (4, 8, 16))) if context <= m < n})
    model = dict(MODEL_OVERRIDES if model is None else model)
    if not 1 <= context <= n:
        raise UserError(f"context must be in [1, n={n}] frames (the cue frame and a few after it), got {context}")
    sampler = SamplerConfig(num_steps=sampler_steps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if datasets_path is None:
            datasets_path = stack.enter_context(tempfile.TemporaryDirectory(prefix="dw-memory-minari-"))
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dw-memory-runs-"))
        stack.enter_context(minari_root(datasets_path))
        dataset_id = f"diffusion_world_bench/cue-memory-n{n}-k{num_colours}-{size}px-e{num_train_episodes}-s{seed}-v0"
        collect_cue_memory(dataset_id, n, num_train_episodes, num_colours, size, seed, progress)
        runs = train_pair(dataset_id, Path(work_dir), n, steps, batch_size, lr, model, short_window, seed, progress)
        models = {name: load_world_model(run["checkpoint"]) for name, run in runs.items()}
        by_n: dict[int, dict[str, dict[str, Any]]] = {}
        examples: dict[str, Any] = {}
        for gap in [n, *sweep]:
            episodes = heldout_episodes(gap, num_eval_episodes, num_colours, size)
            by_n[gap] = {name: recall(wm, episodes, context, num_colours, sampler, seed=seed, progress=progress)
                         for name, wm in models.items()}
            if gap == n:
                examples = {"real": episodes["frames"], "cues": episodes["cues"],
                            **{name: r["frames"] for name, r in by_n[gap].items()}}
    chance = 1.0 / num_colours

    def summary(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("frames", "recalled")}

    result: dict[str, Any] = {
        "headline": {"n": n, "accuracy": by_n[n]["ours"]["accuracy"],
                     "short_memory_accuracy": by_n[n]["short_memory"]["accuracy"], "chance": chance},
        "quick": quick, "env": {"id": CUE_MEMORY_ENV_ID, "n": n, "num_colours": num_colours, "frame_size": size,
                                "colours": list(COLOUR_NAMES[:num_colours])},
        "data": {"dataset_id": dataset_id, "train_episodes": num_train_episodes, "policy": "random",
                 "collect_seed": seed, "heldout_seed": HELDOUT_SEED, "eval_episodes": num_eval_episodes},
        "evaluation": {"context_frames": context, "sampler_steps": sampler_steps,
                       "imagined_steps": n + 2 - context, "readout": "nearest palette colour to the patch mean"},
        "training": {"preset": "tiny", "model_overrides": model, "lr": lr,
                     **{name: {k: v for k, v in run.items() if k != "checkpoint"} for name, run in runs.items()}},
        "ours": summary(by_n[n]["ours"]), "short_memory": summary(by_n[n]["short_memory"]),
        "sweep": {str(gap): {"ours": by_n[gap]["ours"]["accuracy"],
                             "short_memory": by_n[gap]["short_memory"]["accuracy"]} for gap in sorted(by_n)},
        "num_parameters": sum(p.numel() for p in models["ours"].model.parameters()),
        "goal": {"accuracy_at_least": 0.95, "n": 24},
    }
    plot_memory(out_dir / ("memory_quick.png" if quick else "memory.png"), result, examples)
    result["seconds"] = time.perf_counter() - started
    return result


def plot_memory(path: Path, result: dict[str, Any], examples: dict[str, Any], num_examples: int = 6) -> None:
    """Accuracy vs gap n (ours, short memory, chance) and example episodes: cue, real and imagined last frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 4.5), constrained_layout=True)
    grid = fig.add_gridspec(1, 2, width_ratios=[1, 1.3])
    ax = fig.add_subplot(grid[0])
    gaps = [int(g) for g in result["sweep"]]
    window = result["training"]["short_memory"]["context_window"]
    for name, label, marker in (("ours", f"ours (window {result['training']['ours']['context_window']})", "o-"),
                                ("short_memory", f"short memory (window {window})", "s-")):
        ax.plot(gaps, [result["sweep"][str(g)][name] for g in gaps], marker, label=label)
    ax.axhline(result["headline"]["chance"], color="grey", ls="--", label="chance")
    ax.set_xlabel("distractor steps n between cue and reappearance")
    ax.set_ylabel("recall accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(gaps)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(f"trained at n={result['headline']['n']}, {result['data']['eval_episodes']} held-out episodes")

    # Examples: one row per episode; columns: the cue frame, then the real / ours / short-memory last frame.
    cues = examples["cues"]
    rows = [int(np.flatnonzero(cues == c)[0]) for c in np.unique(cues)][:num_examples]
    rows += [i for i in range(len(cues)) if i not in rows][: num_examples - len(rows)]
    columns = [("cue (real)", examples["real"][:, 0]), ("last (real)", examples["real"][:, -1]),
               ("last (ours)", examples["ours"][:, -1]), ("last (short mem.)", examples["short_memory"][:, -1])]
    sub = grid[1].subgridspec(len(rows), len(columns))
    for i, row in enumerate(rows):
        for j, (title, frames) in enumerate(columns):
            a = fig.add_subplot(sub[i, j])
            a.imshow(frames[row], interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(title, fontsize=9)
    h = result["headline"]
    fig.suptitle(f"Memory: recall of a colour cue after n={h['n']} steps: ours {h['accuracy']:.0%}, "
                 f"short memory {h['short_memory_accuracy']:.0%}, chance {h['chance']:.0%}")
    fig.savefig(path, dpi=90)
    plt.close(fig)
