"""Memory: does the world model recall a cue shown once, ``n`` steps before it matters? (the "no amnesia" claim)

The env is :class:`~diffusion_world.data.cue_memory_env.CueMemoryEnv`: a colour cue (one of K) fills frame 0 (all
but its timer rows), a distractor runs for ``n`` steps under random actions, and at step ``n + 1`` the cue colour
reappears. In one run, on the same collected data and with the same training budget (optimiser steps and supervised
frames per step), two models of the same architecture are trained:

* ours: a context window covering the whole episode (``n + 2`` frames), trained on whole-episode windows;
* the short-memory baseline (DIAMOND's design): a context window of 4 frames, trained on windows of 5 frames
  (what it sees at inference: the trainer does not restrict attention to the window inside a training window).

Each model is reset on the first ``context`` real frames of fresh episodes (seeds never used for collection), the
cue frame included, and replays the episode's real actions up to the reappearance. The recalled colour is the
palette colour nearest to the mean colour of the patch in the imagined last frame; accuracy is the fraction of
episodes where it is the cue. Chance is 1/K.

No accuracy-vs-n sweep: each n needs its own dataset and pair of models (the trainer's windows cannot be longer
than an episode, so one dataset cannot mix gaps), and a model trained at one n, evaluated at another, tests when
it reveals the colour as much as whether it remembers it.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_world.checkpoint import WorldModel, load_checkpoint, load_world_model
from diffusion_world.data.collect import minari_root
from diffusion_world.data.cue_memory_env import (
    BACKGROUND,
    COLOUR_NAMES,
    CUE_MEMORY_ENV_ID,
    PALETTE,
    nearest_colour,
    patch_box,
)
from diffusion_world.diffusion.sampler import SamplerConfig, imagine
from diffusion_world.errors import UserError
from diffusion_world.files import save_figure

# The tiny preset with a third U-Net level, its video attention at 4x4 (16 tokens per frame, not 64): a 26-frame
# window trains about twice as fast on CPU. Both models share it; only the context window differs.
MODEL_OVERRIDES: dict[str, Any] = {"channels": [16, 32, 48], "enc_blocks": [0, 1, 1], "video_attention": [4],
                                   "attention_head_dim": 16}
# Both models learn faster with more training noise levels above sigma = 1, where the colour of the last frame
# can only come from memory (below, it shows through the noise).
LOSS_OVERRIDES: dict[str, Any] = {"p_mean": 0.4}
DEFAULT_STEPS = 1750  # per model; 12-14 minutes each on one loaded CPU thread (98% recall at n=24)
SHORT_MEMORY_WINDOW = 4  # DIAMOND conditions on the last 4 frames
HELDOUT_SEED = 1_000_000  # held-out episodes reset with seeds from here; collection uses seeds 0, 1, 2, ...


def collect_cue_memory(dataset_id: str, n: int, num_episodes: int, num_colours: int = 4, size: int = 16,
                       seed: int = 0, progress: bool = True) -> str:
    """Collect ``num_episodes`` random-action CueMemory episodes (``n + 1`` steps each) unless already there."""
    from diffusion_world.data.collect import collect, dataset_path

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

    env = make_pixel_env(CUE_MEMORY_ENV_ID, size=size, n=n, num_colours=num_colours, frame_size=size)
    rng = np.random.default_rng(seed)
    num_actions = int(env.action_space.n)  # type: ignore[attr-defined]  # Discrete(5)
    frames = np.zeros((num_episodes, n + 2, size, size, 3), dtype=np.uint8)
    actions = np.zeros((num_episodes, n + 2), dtype=np.int64)
    cues = np.zeros(num_episodes, dtype=np.int64)
    try:
        for i in range(num_episodes):
            frames[i, 0], info = env.reset(seed=seed + i)
            cues[i] = info["cue"]
            for t in range(1, n + 2):
                actions[i, t] = rng.integers(num_actions)
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
               model: dict[str, Any], loss: dict[str, Any], short_window: int = SHORT_MEMORY_WINDOW, seed: int = 0,
               device: str = "auto", progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train ours (window >= n+2, whole-episode windows) and the short-memory model with the same budget.

    The budget is the same number of optimiser steps with the same number of supervised frames per step: the
    short model's windows have ``short_window + 1`` frames, so it gets proportionally more of them per batch.
    """
    from diffusion_world.training.loss import LossConfig
    from diffusion_world.training.train import TrainConfig, train

    episode_frames = n + 2
    runs: dict[str, dict[str, Any]] = {
        "ours": {"context_window": max(episode_frames, 32), "seq_len": episode_frames, "batch_size": batch_size},
        "short_memory": {"context_window": short_window, "seq_len": short_window + 1,
                         "batch_size": max(1, round(batch_size * episode_frames / (short_window + 1)))},
    }
    for name, run in runs.items():
        # Dense SDPA masks: the windows are tiny, and flex attention would compile for each shape on CUDA.
        cfg = TrainConfig(dataset_id=dataset_id, out_dir=str(work_dir / name), preset="tiny",
                          model={**model, "context_window": run["context_window"]}, steps=steps,
                          batch_size=run["batch_size"], seq_len=run["seq_len"], lr=lr, loss=LossConfig(**loss),
                          warmup_steps=min(50, max(1, steps // 4)), eval_every=steps, checkpoint_every=steps,
                          log_every=max(1, steps // 20), seed=seed, device=device, attn_backend="sdpa",
                          progress=progress,
                          # whole episodes (ours) and windows inside them: padded windows past an episode's end
                          # (the trainer's default) left the cue frame in 4% of ours' windows, and the budget unequal
                          pad_episode_ends=False)
        started = time.perf_counter()
        run["checkpoint"] = str(train(cfg))
        run["train_seconds"] = time.perf_counter() - started
        run["steps"] = steps
        run["supervised_frames"] = int(load_checkpoint(run["checkpoint"])["num_frames_seen"])  # as trained
    return runs


def run_memory(out_dir: str | os.PathLike, n: int = 24, quick: bool = False, num_colours: int = 4,
               size: int = 16, num_train_episodes: int | None = None, steps: int | None = None,
               batch_size: int = 4, lr: float = 1e-2, context: int = 4, num_eval_episodes: int | None = None,
               sampler_steps: int = 3, short_window: int = SHORT_MEMORY_WINDOW, model: dict[str, Any] | None = None,
               loss: dict[str, Any] | None = None, datasets_path: str | os.PathLike | None = None,
               work_dir: str | os.PathLike | None = None, seed: int = 0, device: str = "auto",
               progress: bool = True, stem: str | None = None) -> dict[str, Any]:
    """Collect, train ours and the short-memory baseline, measure recall; write ``{stem}.png`` (default
    ``memory.png``, ``memory_quick.png`` when ``quick``) into ``out_dir``.

    ``quick`` shrinks everything (n=8, 30 steps) to under a minute on 2 CPU cores: it checks that the pipeline runs,
    its accuracy means nothing. ``datasets_path`` (default: a temporary directory) is the Minari root to collect
    into; ``work_dir`` (default: temporary) keeps the checkpoints. ``model`` / ``loss``: overrides of the tiny
    preset / the loss, the same for both models (default: :data:`MODEL_OVERRIDES`, :data:`LOSS_OVERRIDES`).

    Example:
        >>> result = run_memory("benchmarks/results", n=24)  # doctest: +SKIP
        >>> result["headline"]  # doctest: +SKIP
        {'n': 24, 'accuracy': ..., 'short_memory_accuracy': ..., 'chance': 0.25}
    """
    if quick:
        n = min(n, 8)
    num_train_episodes = num_train_episodes or (100 if quick else 1000)
    steps = steps or (30 if quick else DEFAULT_STEPS)
    num_eval_episodes = num_eval_episodes or (32 if quick else 256)
    model = dict(MODEL_OVERRIDES if model is None else model)
    loss = dict(LOSS_OVERRIDES if loss is None else loss)
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
        runs = train_pair(dataset_id, Path(work_dir), n, steps, batch_size, lr, model, loss, short_window, seed,
                          device, progress)
        eval_device = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
        episodes = heldout_episodes(n, num_eval_episodes, num_colours, size)
        scores = {}
        for name, run in runs.items():
            eval_started = time.perf_counter()
            wm = load_world_model(run["checkpoint"], device=eval_device)
            scores[name] = recall(wm, episodes, context, num_colours, sampler, seed=seed, progress=progress)
            run["eval_seconds"] = time.perf_counter() - eval_started
        num_parameters = sum(p.numel() for p in wm.model.parameters())

    def summary(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("frames", "recalled")}

    result: dict[str, Any] = {
        "headline": {"n": n, "accuracy": scores["ours"]["accuracy"],
                     "short_memory_accuracy": scores["short_memory"]["accuracy"], "chance": 1.0 / num_colours},
        "quick": quick,
        "env": {"id": CUE_MEMORY_ENV_ID, "n": n, "num_colours": num_colours, "frame_size": size,
                "colours": list(COLOUR_NAMES[:num_colours])},
        "data": {"dataset_id": dataset_id, "train_episodes": num_train_episodes, "policy": "random",
                 "collect_seeds": [seed, seed + num_train_episodes - 1], "heldout_seed": HELDOUT_SEED,
                 "eval_episodes": num_eval_episodes},
        "evaluation": {"context_frames": context, "imagined_steps": n + 2 - context, "sampler_steps": sampler_steps,
                       "readout": "palette colour nearest to the mean colour of the patch in the last frame"},
        "training": {"preset": "tiny", "model_overrides": model, "loss_overrides": loss, "lr": lr,
                     "budget": "same optimiser steps and supervised frames per step",
                     **{name: {k: v for k, v in run.items() if k != "checkpoint"} for name, run in runs.items()}},
        "ours": summary(scores["ours"]),
        "short_memory": summary(scores["short_memory"]),
        "num_parameters": num_parameters,
        "goal": {"n": 24, "accuracy_at_least": 0.95},
    }
    examples = {"real": episodes["frames"], "cues": episodes["cues"],
                **{name: r["frames"] for name, r in scores.items()}}
    plot_memory(out_dir / f"{stem or ('memory_quick' if quick else 'memory')}.png", result, examples)
    result["seconds"] = time.perf_counter() - started
    return result


def plot_memory(path: Path, result: dict[str, Any], examples: dict[str, Any], num_examples: int = 4) -> None:
    """Recall accuracy (ours, short memory, chance) and example episodes: the real cue, then real and imagined
    frames up to the reappearance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result["headline"]
    fig = plt.figure(figsize=(13, 4.8), constrained_layout=True)
    grid = fig.add_gridspec(1, 2, width_ratios=[1, 2.6])
    ax = fig.add_subplot(grid[0])
    names = [f"ours\n(window {result['training']['ours']['context_window']})",
             f"short memory\n(window {result['training']['short_memory']['context_window']})"]
    accs = [result["ours"]["accuracy"], result["short_memory"]["accuracy"]]
    cis = np.array([result["ours"]["accuracy_ci95"], result["short_memory"]["accuracy_ci95"]])
    ax.bar(names, accs, yerr=[np.subtract(accs, cis[:, 0]), np.subtract(cis[:, 1], accs)], capsize=6,
           color=["tab:blue", "tab:orange"])
    ax.axhline(h["chance"], color="grey", ls="--", label=f"chance (1/{result['env']['num_colours']})")
    ax.axhline(result["goal"]["accuracy_at_least"], color="tab:green", ls=":", label="goal")
    for i, a in enumerate(accs):
        ax.text(i, a + 0.02, f"{a:.0%}", ha="center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall accuracy")
    ax.set_title(f"n={h['n']}, {result['data']['eval_episodes']} held-out episodes")
    ax.legend(loc="upper right", fontsize=8)

    # One block per example episode (one per cue colour first): rows real / ours / short memory, columns every
    # few frames from the cue to the reappearance (the first `context` frames of the model rows are real).
    cues = examples["cues"]
    picks = [int(np.flatnonzero(cues == c)[0]) for c in np.unique(cues)][:num_examples]
    length = examples["real"].shape[1]
    context = length - examples["ours"].shape[1]
    shown = sorted({0, *range(context, length, max(1, (length - context) // 6)), length - 2, length - 1})
    sub = grid[1].subgridspec(3 * len(picks), len(shown), hspace=0.05, wspace=0.05)
    for b, episode in enumerate(picks):
        for r, name in enumerate(("real", "ours", "short_memory")):
            frames = examples[name][episode]
            if name != "real":
                frames = np.concatenate([examples["real"][episode, :context], frames])
            for c, t in enumerate(shown):
                a = fig.add_subplot(sub[3 * b + r, c])
                a.imshow(frames[t], interpolation="nearest")
                a.set_xticks([])
                a.set_yticks([])
                if c == 0:
                    a.set_ylabel(name.replace("_", " "), fontsize=7, rotation=0, ha="right", va="center")
                if b == 0 and r == 0:
                    a.set_title(f"t={t}", fontsize=8)
    fig.suptitle(f"Memory: recall of a colour cue after n={h['n']} distractor steps: ours {h['accuracy']:.0%}, "
                 f"short memory {h['short_memory_accuracy']:.0%}, chance {h['chance']:.0%}")
    save_figure(fig, path, dpi=90)
    plt.close(fig)
