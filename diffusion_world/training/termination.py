"""Fit a :class:`~diffusion_world.model.termination.TerminationClassifier` on real frames and store it in a world
model checkpoint, where the env then uses it for every imagined frame.

Data: every frame of the training split (the run's ``val_fraction`` and seed) of the checkpoint's dataset, plus
that of each extra dataset of the same env, frame size and action space. Extra data matters: expert play
terminates rarely (35 of the 60k CartPole frames), random play every ~20 steps. Frames are drawn uniformly from
all of them, the loss is plain binary cross-entropy, so the classifier's probability is the data's. Every
validation split is scored (ROC AUC, precision / recall at p > 0.5) and the report is stored with the weights.

Imagined frames (``imagined_episodes`` > 0): the env applies the classifier to *imagined* frames, which differ
from real ones (an under-trained model tilts CartPole's pole less and draws it blurred), so a classifier that
only saw real frames misses terminations there. The world model in the checkpoint then replays the last up to
``imagined_horizon`` steps of that many training episodes per dataset from their real context frames, and each
imagined frame is labelled with the real frame's termination at the same step: the classifier learns to fire
where the real episode ends. Where the data goes on after a termination (``collect --post-terminal-steps``), the
rollouts go on for up to ``imagined_past_end`` more steps, labelled terminal like the real frames there. A share
``imagined_fraction`` of every batch is drawn from these frames. Imagined rollouts of the validation episodes are
scored separately.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffusion_world.bench.fidelity import termination_scores
from diffusion_world.checkpoint import (
    check_device,
    load_checkpoint,
    resolve_world_model,
    run_lock,
    save_checkpoint,
)
from diffusion_world.data.dataset import FrameCache
from diffusion_world.data.pixel_env import recorded_env_difference
from diffusion_world.diffusion.sampler import frames_to_x
from diffusion_world.errors import UserError, writable_dir
from diffusion_world.files import atomic_write_text
from diffusion_world.model.config import action_space_to_dict
from diffusion_world.model.termination import TerminationClassifier, TerminationClassifierConfig


@dataclass
class TerminationFitConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    imagined_episodes: int = 0  # per dataset; 0: real frames only
    imagined_fraction: float = 0.5
    imagined_horizon: int = 16
    imagined_past_end: int = 2  # steps replayed after the real terminal frame, where the data has frames there

    def validate(self) -> None:
        rules = {"steps": (self.steps >= 1, ">= 1"), "batch_size": (self.batch_size >= 1, ">= 1"),
                 "lr": (self.lr > 0, "> 0"), "imagined_episodes": (self.imagined_episodes >= 0, ">= 0"),
                 "imagined_horizon": (self.imagined_horizon >= 1, ">= 1"),
                 "imagined_past_end": (self.imagined_past_end >= 0, ">= 0"),
                 "imagined_fraction": (0 < self.imagined_fraction < 1, "in (0, 1)")}
        for name, (ok, requirement) in rules.items():
            if not ok:
                raise UserError(f"bad termination-classifier setting {name}={getattr(self, name)!r}: "
                                f"must be {requirement}")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney; tied scores count half); None without both classes."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return None
    values, inverse = np.unique(scores, return_inverse=True)
    ordered = np.sort(scores)
    first = np.searchsorted(ordered, values, side="left")
    last = np.searchsorted(ordered, values, side="right")
    ranks = ((first + 1 + last) / 2)[inverse]  # average 1-based rank of each tie group
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _frame_indices(cache: FrameCache, episodes: np.ndarray) -> np.ndarray:
    if not len(episodes):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(cache.episode_starts[e], cache.episode_starts[e] + cache.episode_lengths[e])
                           for e in episodes]).astype(np.int64)


def _check_compatible(dataset: dict[str, Any], cache: FrameCache) -> None:
    problems = []
    if list(cache.frame_size) != list(dataset.get("frame_size", cache.frame_size)):
        problems.append(f"frames {cache.frame_size} vs {tuple(dataset['frame_size'])}")
    if dataset.get("action_space") and action_space_to_dict(cache.action_space) != dataset["action_space"]:
        problems.append(f"action space {cache.action_space}")
    # the env each was recorded in, and a pixel env's frame skip, which changes the dynamics
    env = recorded_env_difference(cache.env_spec, dataset.get("env_spec"))
    if env:
        problems.append(env)
    if problems:
        raise UserError(f"dataset {cache.dataset_id!r} does not match the world model's: " + "; ".join(problems))


@torch.no_grad()
def classifier_logits(model: TerminationClassifier, cache: FrameCache, indices: np.ndarray, device: str = "cpu",
                      batch_size: int = 1024) -> np.ndarray:
    out = [model(frames_to_x(np.asarray(cache.frames[indices[lo: lo + batch_size]])).to(device)).float().cpu()
           for lo in range(0, len(indices), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def score_classifier(logits: np.ndarray, terminations: np.ndarray) -> dict[str, Any]:
    """ROC AUC and precision / recall / F1 at p > 0.5 over frames."""
    terminations = np.asarray(terminations, dtype=bool)
    scores = termination_scores(terminations[None], 1 / (1 + np.exp(-logits[None].astype(np.float64))))
    scores.pop("first_termination")
    return {"frames": int(len(terminations)), "auc": roc_auc(terminations, logits), **scores}


def imagined_frames(checkpoint: str | os.PathLike, caches: list[FrameCache],
                    splits: list[tuple[np.ndarray, np.ndarray]], cfg: TerminationFitConfig, device: str = "cpu",
                    progress: bool = True) -> dict[str, Any]:
    """The checkpoint's world model replays the last ``cfg.imagined_horizon`` steps of up to
    ``cfg.imagined_episodes`` episodes per dataset and split from their real context frames, and up to
    ``cfg.imagined_past_end`` steps further where the data has post-terminal frames: ``{"train": {"frames":
    (n, H, W, 3) uint8, "labels": (n,) bool}, "val": {...}, "seconds": float}``, labels being the real frames'
    terminations at the same steps."""
    from diffusion_world.bench.termination import end_windows, imagine_windows
    from diffusion_world.checkpoint import load_world_model
    from diffusion_world.diffusion.sampler import SamplerConfig

    t0 = time.monotonic()
    wm = load_world_model(checkpoint, device=device)
    context = int(wm.imagination.get("context_frames", 4))
    sampler = SamplerConfig(num_steps=int(wm.imagination.get("sampler_steps", 3)))
    rng = np.random.default_rng(cfg.seed)
    out: dict[str, Any] = {}
    for split in (0, 1):
        frames, labels = [], []
        for cache, eps in zip(caches, (s[split] for s in splits)):
            eps = eps[cache.live_lengths[eps] >= context + 1]
            if len(eps) > cfg.imagined_episodes:
                eps = np.sort(rng.choice(eps, cfg.imagined_episodes, replace=False))
            starts, steps = end_windows(cache, eps, context, cfg.imagined_horizon)
            # past the terminal frame where the data goes on (collect --post-terminal-steps): absorbing frames,
            # labelled terminal, so that the classifier also learns the fallen pole a late rollout draws
            steps = steps + np.minimum(cfg.imagined_past_end, cache.episode_lengths[eps] - cache.live_lengths[eps])
            for sel, _, res in imagine_windows(wm, cache, starts, steps, context, sampler, cfg.seed, progress,
                                               desc=f"imagined {('training', 'validation')[split]} rollouts"):
                idx = starts[sel, None] + np.arange(context, context + res["frames"].shape[1])
                frames.append(res["frames"].reshape(-1, *res["frames"].shape[2:]).numpy())
                labels.append(cache.terminations[idx].reshape(-1))
        h, w = caches[0].frame_size
        out[("train", "val")[split]] = {
            "frames": np.concatenate(frames) if frames else np.zeros((0, h, w, 3), np.uint8),
            "labels": np.concatenate(labels).astype(bool) if labels else np.zeros(0, bool)}
    if not out["train"]["labels"].any():
        raise UserError("no real termination falls in the imagined training rollouts: nothing to learn from them "
                        "(add a dataset where episodes terminate, e.g. random play)")
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def fit_termination(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None,
                    extra_datasets: tuple[str, ...] | list[str] = (), cfg: TerminationFitConfig | None = None,
                    device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train a termination classifier on real frames and write ``checkpoint`` (to ``out``, default in place;
    atomically) with it under ``termination_classifier``. Works on training checkpoints and exports alike.
    Returns the report (also written next to the checkpoint: :func:`report_path_for`). Refused while a `train`
    writes the folder it writes into (the run lock, held until done: :func:`~diffusion_world.checkpoint.run_lock`)."""
    with contextlib.ExitStack() as lock:
        return _fit_termination(lock, checkpoint, out, extra_datasets, cfg, device, progress)


def _fit_termination(lock: contextlib.ExitStack, checkpoint: str | os.PathLike, out: str | os.PathLike | None,
                     extra_datasets: tuple[str, ...] | list[str], cfg: TerminationFitConfig | None, device: str,
                     progress: bool) -> dict[str, Any]:
    cfg = cfg or TerminationFitConfig()
    cfg.validate()
    check_device(device)
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():  # a run directory, as gym.make, play and benchmark take it
        checkpoint = resolve_world_model(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    dst = Path(out) if out is not None else checkpoint
    if dst.is_dir():
        raise UserError(f"--out {str(dst)!r} is a directory: give the checkpoint file to write, e.g. {dst / 'wm.pt'}")
    writable_dir(dst.parent, "the folder of the checkpoint to write")  # before the training, not after it
    lock.enter_context(run_lock(dst.parent, "`diffusion-world fit-termination`"))  # not while a `train` writes it
    dataset = ckpt.get("dataset", {})
    if not dataset.get("dataset_id"):
        raise UserError(f"{checkpoint} names no dataset")
    caches = [FrameCache.open(d, progress=progress, frame_size=dataset.get("resize"))  # resized as in training
              for d in dict.fromkeys([dataset["dataset_id"], *extra_datasets])]
    for cache in caches:
        _check_compatible(dataset, cache)
    tc = ckpt.get("train_config", {})
    splits = [cache.episode_split(tc.get("val_fraction", 0.1), tc.get("seed", 0)) for cache in caches]
    train_idx = [_frame_indices(c, tr) for c, (tr, _) in zip(caches, splits)]
    val_idx = [_frame_indices(c, va) for c, (_, va) in zip(caches, splits)]
    sizes = np.array([len(i) for i in train_idx])
    if not sizes.sum():
        raise UserError("no training frames to fit the termination classifier on")
    positives = {c.dataset_id: int(c.terminations[i].sum()) for c, i in zip(caches, train_idx)}
    if not sum(positives.values()):
        raise UserError(f"no terminations in the training frames of {list(positives)}: nothing to learn "
                        f"(add a dataset where episodes terminate with --extra-dataset-id, e.g. random play)")

    imagined = (imagined_frames(checkpoint, caches, splits, cfg, device=device, progress=progress)
                if cfg.imagined_episodes else None)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    h, w = dataset.get("frame_size", caches[0].frame_size)
    model_cfg = TerminationClassifierConfig(frame_size=(h, w), image_channels=int(caches[0].frames.shape[-1]))
    model = TerminationClassifier(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    t0 = time.monotonic()
    losses = []
    bar = tqdm(range(cfg.steps), desc="termination classifier", disable=not progress)
    for _ in bar:
        n_imagined = int(rng.binomial(cfg.batch_size, cfg.imagined_fraction)) if imagined else 0
        draw = np.sort(rng.integers(0, offsets[-1], cfg.batch_size - n_imagined))
        frames, labels = [], []
        if n_imagined:
            assert imagined is not None
            sel = rng.integers(0, len(imagined["train"]["labels"]), n_imagined)
            frames.append(imagined["train"]["frames"][sel])
            labels.append(imagined["train"]["labels"][sel])
        for k, cache in enumerate(caches):
            sel = draw[(draw >= offsets[k]) & (draw < offsets[k + 1])] - offsets[k]
            if len(sel):
                idx = train_idx[k][sel]
                frames.append(np.asarray(cache.frames[idx]))
                labels.append(cache.terminations[idx])
        x = frames_to_x(np.concatenate(frames)).to(device)
        y = torch.from_numpy(np.concatenate(labels)).float().to(device)
        loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    model.eval().requires_grad_(False)
    fit_s = time.monotonic() - t0
    k = max(1, min(50, len(losses) // 2))
    val = {c.dataset_id: score_classifier(classifier_logits(model, c, i, device), c.terminations[i])
           for c, i in zip(caches, val_idx) if len(i)}
    report: dict[str, Any] = {"config": asdict(cfg), "datasets": [c.dataset_id for c in caches],
              "train_frames": {c.dataset_id: int(n) for c, n in zip(caches, sizes)},
              "train_terminations": positives, "fit_seconds": round(fit_s, 1),
              # the first and last k steps' mean loss, k = 50 or half the steps (disjoint, so a short run shows too)
              "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])), "loss_steps": k,
              "val": val}
    if imagined:
        report["imagined"] = {"episodes_per_dataset": cfg.imagined_episodes, "horizon": cfg.imagined_horizon,
                              "past_end": cfg.imagined_past_end,
                              "fraction": cfg.imagined_fraction, "seconds": imagined["seconds"],
                              "train_frames": int(len(imagined["train"]["labels"])),
                              "train_terminations": int(imagined["train"]["labels"].sum())}
        if len(imagined["val"]["labels"]):
            logits = torch.cat([model(frames_to_x(imagined["val"]["frames"][lo: lo + 1024]).to(device)).float().cpu()
                                for lo in range(0, len(imagined["val"]["labels"]), 1024)]).numpy()
            report["val"]["imagined rollouts of the validation episodes"] = score_classifier(
                logits, imagined["val"]["labels"])
    slim = ckpt.get("model") is None  # an export (export_for_inference) stores its weights in fp16
    ckpt["termination_classifier"] = {"config": model_cfg.to_dict(),
                                      "state_dict": {k: v.detach().cpu().half() if slim else v.detach().cpu()
                                                     for k, v in model.state_dict().items()},
                                      "report": report}
    save_checkpoint(dst, ckpt)
    report_path = report_path_for(dst)
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    return report


def report_path_for(checkpoint: str | os.PathLike) -> Path:
    """Where :func:`fit_termination` writes its report: ``termination.json`` next to a run's ``checkpoint.pt``,
    ``<name>.termination.json`` next to any other checkpoint (two of them in one folder kept one report)."""
    checkpoint = Path(checkpoint)
    name = "termination.json" if checkpoint.name == "checkpoint.pt" else f"{checkpoint.stem}.termination.json"
    return checkpoint.parent / name


def format_report(report: dict[str, Any]) -> str:
    """A Markdown table of the validation scores, one row per dataset."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    cols = ("frames", "positives", "auc", "precision", "recall", "f1")
    im = report.get("imagined")
    lines = [f"termination classifier: {report['config']['steps']} steps in {report['fit_seconds']} s on "
             f"{sum(report['train_frames'].values())} frames ({sum(report['train_terminations'].values())} "
             f"terminations)" + (f" and {im['train_frames']} imagined frames ({im['train_terminations']} at real "
                                 f"terminations; {im['fraction']:.0%} of each batch; rollouts {im['seconds']} s)"
                                 if im else ""),
             "", "| validation split of | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for dataset, row in report["val"].items():
        lines.append(f"| {dataset} | " + " | ".join(f(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)
