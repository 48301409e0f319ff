"""Fidelity: replay held-out real episodes in the world model and compare frame by frame.

From each held-out window the model gets the first ``context`` real frames, then the window's real actions for
``horizon`` steps. Per horizon h: PSNR and SSIM of imagined vs real frames (scikit-image), with mean and 95%
interval over windows; reward MAE; termination precision / recall / F1 and first-termination step error; and the
termination scoring alone (the model's classifier if it has one, else its head) on every real frame of the held-out
episodes (teacher-forced, no rollout drift);
foreground retention and recall (how much of the moving objects an imagined frame still draws: thin objects that
fade over a rollout cost little PSNR on a mostly static screen, so PSNR alone hides them) and precision (how much of
what it draws is there in the real frame: recall alone rewards noise); motion (how much of the real change
since the last context frame the imagined frames reproduce: damped dynamics). In the
same run: "repeat the last real frame", optionally a short-memory model (DIAMOND's design: a context of at most
4 frames) trained with the same budget, and the model's own sampler-steps sweep.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_world.bench.common import comparison_dataset, heldout_episodes, sampler_label
from diffusion_world.checkpoint import WorldModel, load_checkpoint, load_world_model
from diffusion_world.data.dataset import FrameCache, WindowSampler
from diffusion_world.diffusion.sampler import SamplerConfig, frames_to_x, imagine
from diffusion_world.envs.core import open_dataset_for
from diffusion_world.errors import UserError
from diffusion_world.files import save_figure


def _metrics() -> tuple[Any, Any]:
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("the fidelity benchmark needs scikit-image: pip install 'diffusion-world[bench]'") from e
    return peak_signal_noise_ratio, structural_similarity


def horizons(h_max: int) -> list[int]:
    """1, 2, 4, ... up to h_max (h_max included)."""
    out, h = [], 1
    while h < h_max:
        out.append(h)
        h *= 2
    return out + [h_max]


def heldout_windows(cache: FrameCache, episodes: np.ndarray, length: int, num: int, seed: int) -> np.ndarray:
    """Start indices (into cache.frames) of ``num`` windows of ``length`` frames inside held-out episodes. Half
    of them end on an episode's last frame, so terminations are in the sample."""
    rng = np.random.default_rng(seed)
    eps = [e for e in episodes if cache.episode_lengths[e] >= length]
    if not eps:
        longest = int(max((cache.episode_lengths[e] for e in episodes), default=0))
        raise UserError(f"no held-out episode has {length} frames (context frames + rollout horizon); the longest "
                        f"has {longest}: use a shorter horizon (benchmark fidelity --horizon), fewer context frames "
                        "(a card's [imagination] context_frames) or longer episodes")
    starts = []
    for i in range(num):
        e = eps[rng.integers(len(eps))]
        first, n = int(cache.episode_starts[e]), int(cache.episode_lengths[e])
        offset = n - length if i % 2 == 0 else int(rng.integers(0, n - length + 1))
        starts.append(first + offset)
    return np.array(starts, dtype=np.int64)


def static_background(frames: np.ndarray) -> np.ndarray:
    """Per-pixel median of (N, H, W, 3) uint8 frames: the static scene, with the moving objects removed."""
    return np.median(np.asarray(frames), axis=0).astype(np.uint8)


def _foreground(frames: np.ndarray, background: np.ndarray, threshold: int) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W): |frame - background| summed over channels, in units of 255, zero
    where it is at most ``threshold`` (faint sampling noise on the background counts for nothing)."""
    d = np.abs(np.asarray(frames, np.int16) - background.astype(np.int16)).sum(-1)
    return np.where(d > threshold, d, 0) / 255.0


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Boolean (..., H, W) mask grown by r pixels (a (2r+1)^2 square)."""
    H, W = mask.shape[-2:]
    padded = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(r, r), (r, r)])
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[..., dy:dy + H, dx:dx + W]
    return out


def foreground_retention(real: np.ndarray, fake: np.ndarray, background: np.ndarray, hs: list[int],
                         threshold: int = 30, radius: int = 2) -> dict[str, float | None]:
    """real, fake: (N, H, h, w, 3). Per horizon: how strongly the imagined frames draw the real frames' moving
    objects where they are: foreground mass of the imagined frame within ``radius`` pixels of the real
    foreground, over that of the real frame (summed over windows). 1: the objects drawn as strongly as in
    reality, in place; 0: faded into the background or drawn elsewhere. Marks the real frame does not have
    count for nothing, so noise cannot make up for a faded object. None where the real frames have no
    foreground."""
    out: dict[str, float | None] = {}
    for h in hs:
        fg_real = _foreground(real[:, h - 1], background, threshold)
        near = _dilate(fg_real > 0, radius)
        m_real = fg_real.sum()
        m_fake = (_foreground(fake[:, h - 1], background, threshold) * near).sum()
        out[str(h)] = float(m_fake / m_real) if m_real > 0 else None
    return out


def foreground_recall(real: np.ndarray, fake: np.ndarray, background: np.ndarray, hs: list[int],
                      threshold: int = 30, radius: int = 1) -> dict[str, float | None]:
    """real, fake: (N, H, h, w, 3). Per horizon: the share of the real frames' foreground pixels (moving objects)
    that the imagined frame also draws, within ``radius`` pixels. Unlike :func:`foreground_retention` every
    pixel counts the same whatever its contrast, so a thin low-contrast object (CartPole's pole) weighs as much
    as its size, and values stay within [0, 1]. None where the real frames have no foreground. A frame drawn
    everywhere (noise) scores 1: read it with :func:`foreground_precision`."""
    return _foreground_share(real, fake, background, hs, threshold, radius)


def foreground_precision(real: np.ndarray, fake: np.ndarray, background: np.ndarray, hs: list[int],
                         threshold: int = 30, radius: int = 1) -> dict[str, float | None]:
    """real, fake: (N, H, h, w, 3). Per horizon: the share of the imagined frames' foreground pixels that the real
    frame also draws, within ``radius`` pixels: recall's counterpart, low for objects drawn where there are none
    (noise, a second pole, a smear). None where the imagined frames have no foreground."""
    return _foreground_share(fake, real, background, hs, threshold, radius)


def _foreground_share(a: np.ndarray, b: np.ndarray, background: np.ndarray, hs: list[int], threshold: int,
                      radius: int) -> dict[str, float | None]:
    """Per horizon: the share of ``a``'s foreground pixels within ``radius`` pixels of ``b``'s foreground."""
    out: dict[str, float | None] = {}
    for h in hs:
        a_fg = _foreground(a[:, h - 1], background, threshold) > 0
        b_fg = _dilate(_foreground(b[:, h - 1], background, threshold) > 0, radius)
        n = a_fg.sum()
        out[str(h)] = float((a_fg & b_fg).sum() / n) if n > 0 else None
    return out


def background_error(real: np.ndarray, fake: np.ndarray, background: np.ndarray, hs: list[int],
                     threshold: int = 30) -> dict[str, dict[str, float | None]]:
    """real, fake: (N, H, h, w, 3). Per horizon, on the quiet background (pixels where neither frame draws an
    object: both within ``threshold`` of the static background): ``share``, the part of the squared error
    (PSNR's denominator) that lies there, and ``mean_abs``, the mean absolute error there in levels (0-255).
    Faint noise or a tint on a static scene is invisible to the eye but can dominate PSNR at short horizons,
    where the objects barely move; a high share says the PSNR measures that rather than the dynamics."""
    out: dict[str, dict[str, float | None]] = {}
    for h in hs:
        r, f = real[:, h - 1].astype(np.float32), fake[:, h - 1].astype(np.float32)
        quiet = (_foreground(real[:, h - 1], background, threshold) == 0) & \
                (_foreground(fake[:, h - 1], background, threshold) == 0)
        se = ((f - r) ** 2).mean(-1)
        total = float(se.sum())
        out[str(h)] = {"share": float(se[quiet].sum()) / total if total > 0 else None,
                       "mean_abs": float(np.abs(f - r).mean(-1)[quiet].mean()) if quiet.any() else None}
    return out


def motion(real: np.ndarray, fake: np.ndarray, last: np.ndarray, hs: list[int]) -> dict[str, float | None]:
    """real, fake: (N, H, h, w, 3); last: (N, h, w, 3), the last real context frame. Per horizon: the share of the
    real change since that frame that the imagined frames reproduce, sum <fake - last, real - last> over
    sum |real - last|^2 (all windows together). 1: the objects moved as far as the real ones, in the same
    direction; 0: nothing moved (repeating the last frame); below 1: damped dynamics, e.g. an imagined pole that
    falls more slowly than the real one (an object that fades also counts as partly moved away). None where
    nothing moved in the real frames."""
    ref = last.astype(np.float64)
    out: dict[str, float | None] = {}
    for h in hs:
        dr = real[:, h - 1].astype(np.float64) - ref
        den = float((dr * dr).sum())
        out[str(h)] = float(((fake[:, h - 1].astype(np.float64) - ref) * dr).sum() / den) if den > 0 else None
    return out


def _mean_ci(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": float(half)}


def frame_scores(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """real, fake: (N, H, W, 3) uint8 -> per-frame PSNR and SSIM, (N,) each. A frame equal to the real one (PSNR
    infinite) scores 100 dB."""
    psnr_fn, ssim_fn = _metrics()
    psnr = np.array([psnr_fn(r, f, data_range=255) if not np.array_equal(r, f) else 100.0
                     for r, f in zip(real, fake)])
    ssim = np.array([ssim_fn(r, f, channel_axis=-1, data_range=255) for r, f in zip(real, fake)])
    return psnr, ssim


def rollout(wm: WorldModel, cache: FrameCache, starts: np.ndarray, context: int, horizon: int, sampler: SamplerConfig,
            batch_size: int = 16, seed: int = 0, progress: bool = True,
            precision: str = "fp32") -> dict[str, np.ndarray]:
    """Imagine ``horizon`` steps from each window's first ``context`` real frames, replaying its actions."""
    frames, rewards, terms = [], [], []
    for lo in tqdm(range(0, len(starts), batch_size), desc=f"imagine (K={sampler.num_steps})", disable=not progress,
                   leave=False):
        idx = starts[lo: lo + batch_size, None] + np.arange(context + horizon)
        fr = torch.from_numpy(np.asarray(cache.frames[idx]))
        act = torch.from_numpy(cache.prev_actions[idx])
        has = torch.from_numpy(cache.has_prev_action[idx])
        gens = [torch.Generator().manual_seed(seed + lo + i) for i in range(len(idx))]
        out = imagine(wm.model, fr[:, :context], act[:, :context], has[:, :context], act[:, context:], gens, sampler,
                      precision=precision)
        frames.append(out["frames"].numpy())
        rewards.append(wm.clip_rewards(out["rewards"]).numpy())  # as the env pays them
        terms.append(wm.termination_probability(out["termination_logits"], frames_to_x(out["frames"])).numpy())
    return {"frames": np.concatenate(frames), "rewards": np.concatenate(rewards),
            "termination_probs": np.concatenate(terms)}


def score(real: np.ndarray, fake: np.ndarray, hs: list[int]) -> dict[str, Any]:
    """real, fake: (N, H, h, w, 3) -> per-horizon PSNR/SSIM mean and 95% interval."""
    out: dict[str, Any] = {}
    for h in hs:
        r, f = real[:, h - 1], fake[:, h - 1]
        psnr, ssim = frame_scores(r, f)
        mse = ((r.astype(np.float64) - f.astype(np.float64)) ** 2).reshape(len(r), -1).mean(axis=1)
        out[str(h)] = {"psnr": _mean_ci(psnr), "ssim": _mean_ci(ssim),
                       # frames equal to the real one score a placeholder 100 dB in the mean PSNR (theirs is
                       # infinite): their share, and the PSNR of the mean squared error, which needs no placeholder
                       "exact": float(np.mean(mse == 0)),
                       "psnr_of_mean_mse": float(10 * np.log10(255.0 ** 2 / mse.mean())) if mse.mean() > 0 else None}
    return out


def real_frame_termination(wm: WorldModel, cache: FrameCache, episodes: np.ndarray, seq_len: int = 16,
                           batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Termination probabilities (classifier or head) on every real frame of ``episodes`` (teacher-forced): each
    episode cut into consecutive windows of ``seq_len`` frames (the last one padded), each frame seeing the real
    frames before it in its window, at the sampler's final noise level. Scores as :func:`termination_scores`,
    over frames."""
    real, probs = real_frame_termination_probs(wm, cache, episodes, seq_len, batch_size, progress)
    scores = termination_scores(real[None], probs[None])
    scores.pop("first_termination")
    return {**scores, "frames": len(real), "seq_len": seq_len}


@torch.no_grad()
def real_frame_termination_probs(wm: WorldModel, cache: FrameCache, episodes: np.ndarray, seq_len: int = 16,
                                 batch_size: int = 16, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(real terminations, predicted probabilities), one entry per frame of ``episodes`` in dataset order."""
    windows = WindowSampler(cache, seq_len, episodes, pad_ends=True)
    first = np.repeat(cache.episode_starts[windows.episodes], cache.episode_lengths[windows.episodes])
    chosen = np.flatnonzero((windows.window_starts - first) % seq_len == 0)
    real, probs = [], []
    model, device = wm.model, next(wm.model.parameters()).device
    last = torch.tensor([seq_len - 1], device=device)  # one noisy frame: the heads only read the clean stream
    for lo in tqdm(range(0, len(chosen), batch_size), desc="termination on real frames", disable=not progress,
                   leave=False):
        b = windows.get(chosen[lo: lo + batch_size])
        x = frames_to_x(torch.from_numpy(np.ascontiguousarray(b["frames"]))).to(device)
        sigma_ctx = torch.full(x.shape[:2], SamplerConfig().sigma_min, device=device)
        out = model(x[:, last], sigma_ctx[:, last], x, sigma_ctx, torch.from_numpy(b["actions"]).to(device),
                    torch.from_numpy(b["has_action"]).to(device), noisy_index=last,
                    window=min(model.cfg.context_window, seq_len))
        probs.append(wm.termination_probability(out.termination_logit, x).cpu().numpy()[b["valid"]])
        real.append(b["terminations"][b["valid"]])
    return np.concatenate(real), np.concatenate(probs)


def termination_scores(real: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    pred = probs > threshold
    tp, fp, fn = int((pred & real).sum()), int((pred & ~real).sum()), int((~pred & real).sum())
    precision = tp / (tp + fp) if tp + fp else None  # undefined (no predicted termination): None in the JSON
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"precision": precision, "recall": recall, "f1": f1, "positives": int(real.sum()),
            "first_termination": first_termination(real, pred)}


def first_termination(real: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Where each window's first termination falls, real against predicted ((N, H) booleans): the mean step
    error over the windows where both terminate, and counts of the windows where only the real episode
    terminates (``missed``) or only the imagined one does (``spurious``). A one-sided termination has no
    step error: counting it to the window's end would make an error that depends on the window length."""
    errors, missed, spurious = [], 0, 0
    for r, p in zip(real, pred):
        if r.any() and p.any():
            errors.append(abs(int(np.argmax(r)) - int(np.argmax(p))))
        missed += int(r.any() and not p.any())
        spurious += int(p.any() and not r.any())
    return {"both": len(errors), "step_error": float(np.mean(errors)) if errors else None, "missed": missed,
            "spurious": spurious}


def run_fidelity(world_model: str, out_dir: str | Path, dataset_id: str | None = None, context: int | None = None,
                 horizon: int = 32, num_windows: int = 32, sampler_sweep: tuple[int, ...] = (1, 2, 3, 5, 10),
                 short_memory: str | None = None, seed: int = 0, device: str = "cpu",
                 progress: bool = True, sampler_steps: int | None = None, history_guidance: float | None = None,
                 stem: str = "fidelity", precision: str = "fp32") -> dict[str, Any]:
    """Run the fidelity benchmark; returns the result dict (see module docstring). Also writes ``{stem}.png`` and
    the GIF ``{stem}_rollout.gif`` into ``out_dir``.
    ``sampler_steps``: K of the main table (default: the checkpoint's, else 3). ``history_guidance``: the
    sampler's w at every K (default: the checkpoint's, else off). ``precision``: the rollouts'
    model calls in fp32 or bf16 autocast, as the imagined envs' ``precision``."""
    wm = load_world_model(world_model, device=device)
    ckpt = load_checkpoint(wm.path)
    dataset_id = dataset_id or comparison_dataset(wm, "fidelity")
    cache = open_dataset_for(dataset_id, wm, progress=progress)
    tc = ckpt.get("train_config", {})
    val_eps, heldout, seed_range = heldout_episodes(cache, wm.dataset, tc)
    if len(val_eps) == 0:
        raise UserError(f"dataset {dataset_id!r} has no held-out episodes")
    context = context or int(wm.imagination.get("context_frames", 4))
    starts = heldout_windows(cache, val_eps, context + horizon, num_windows, seed)
    idx = starts[:, None] + np.arange(context + horizon)
    real = np.asarray(cache.frames[idx])[:, context:]  # (N, H, h, w, 3)
    real_rewards = cache.rewards[idx][:, context:]
    real_terms = cache.terminations[idx][:, context:]
    hs = horizons(horizon)
    rng = np.random.default_rng(seed)
    background = static_background(cache.frames[np.sort(rng.choice(cache.num_frames, min(512, cache.num_frames),
                                                                     replace=False))])
    sampler = wm.sampler_config(sampler_steps, history_guidance)
    default_k = sampler.num_steps
    ks = sorted(set(sampler_sweep) | {default_k})

    by_k: dict[int, dict[str, np.ndarray]] = {}
    for k in ks:
        by_k[k] = rollout(wm, cache, starts, context, horizon, dataclasses.replace(sampler, num_steps=k), seed=seed,
                          progress=progress, precision=precision)
    main = by_k[default_k]
    last = np.asarray(cache.frames[starts + context - 1])
    repeat_last = np.repeat(last[:, None], horizon, axis=1)
    result: dict[str, Any] = {
        "world_model": str(world_model), "dataset_id": dataset_id, "context_frames": context, "horizon": horizon,
        "num_windows": len(starts), "distinct_windows": len(np.unique(starts)), "heldout_episodes": len(val_eps),
        "window_episodes": len(np.unique(np.searchsorted(cache.episode_starts, starts, side="right") - 1)),
        "heldout": heldout, "heldout_episode_seeds": seed_range,
        "sampler_steps": default_k,
        **({"history_guidance": sampler.history_guidance} if sampler.guided else {}),
        "checkpoint_step": wm.step, "horizons": hs,
        "model": score(real, main["frames"], hs),
        "repeat_last_frame": score(real, repeat_last, hs),
        "foreground_retention": {"model": foreground_retention(real, main["frames"], background, hs),
                                 "repeat_last_frame": foreground_retention(real, repeat_last, background, hs)},
        "foreground_recall": {"model": foreground_recall(real, main["frames"], background, hs),
                              "repeat_last_frame": foreground_recall(real, repeat_last, background, hs)},
        "foreground_precision": {"model": foreground_precision(real, main["frames"], background, hs),
                                 "repeat_last_frame": foreground_precision(real, repeat_last, background, hs)},
        "motion": {"model": motion(real, main["frames"], last, hs)},
        "background_error": {str(k): background_error(real, by_k[k]["frames"], background,
                                                      hs if k == default_k else [1, hs[-1]]) for k in ks},
        "reward_mae": float(np.abs(main["rewards"] - real_rewards).mean()),
        "termination": termination_scores(real_terms, main["termination_probs"]),
        "termination_real_frames": real_frame_termination(wm, cache, val_eps, int(tc.get("seq_len", 16)),
                                                          progress=progress),
        "sampler_sweep": {str(k): score(real, by_k[k]["frames"], [1, hs[-1]]) for k in ks},
    }
    if short_memory:
        sm = load_world_model(short_memory, device=device)
        sm_out = rollout(sm, cache, starts, min(context, sm.config.context_window), horizon,
                         dataclasses.replace(sampler, num_steps=default_k), seed=seed, progress=progress,
                         precision=precision)
        sm_train = load_checkpoint(sm.path).get("train_config", {})
        result["short_memory"] = {"world_model": short_memory, "context_window": sm.config.context_window,
                                  "checkpoint_step": sm.step, "init_from": sm_train.get("init_from") or None,
                                  **score(real, sm_out["frames"], hs)}
        result["foreground_retention"]["short_memory"] = foreground_retention(real, sm_out["frames"], background, hs)
        result["foreground_recall"]["short_memory"] = foreground_recall(real, sm_out["frames"], background, hs)
        result["foreground_precision"]["short_memory"] = foreground_precision(real, sm_out["frames"], background,
                                                                              hs)
        result["motion"]["short_memory"] = motion(real, sm_out["frames"], last, hs)
    h16 = str(16) if "16" in result["model"] else str(hs[-1])
    result["headline"] = {
        "psnr_h1": result["model"]["1"]["psnr"]["mean"],
        "psnr_h16": result["model"][h16]["psnr"]["mean"],
        "ssim_h16": result["model"][h16]["ssim"]["mean"],
        "foreground_retention_h16": result["foreground_retention"]["model"][h16],
        "foreground_recall_h16": result["foreground_recall"]["model"][h16],
        "foreground_precision_h16": result["foreground_precision"]["model"][h16],
        "motion_h16": result["motion"]["model"][h16],
        "repeat_last_psnr_h16": result["repeat_last_frame"][h16]["psnr"]["mean"],
        "short_memory_psnr_h16": result["short_memory"][h16]["psnr"]["mean"] if short_memory else None,
        "termination_f1": result["termination"]["f1"],
        "reward_mae": result["reward_mae"],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_comparison_gif(out_dir / f"{stem}_rollout.gif", real[0], main["frames"][0])
    plot_fidelity(out_dir / f"{stem}.png", result)
    return result


ERROR_GAIN = 4  # the error panel shows |real - imagined| x 4: errors of a few levels are otherwise black


def write_comparison_gif(path: Path, real: np.ndarray, fake: np.ndarray, scale: int = 3) -> None:
    """real | imagined | |error| x ERROR_GAIN (grey: the mean over colour channels) side by side, labelled, one
    GIF frame per imagined step."""
    from PIL import Image

    from diffusion_world.play import side_by_side, upscale, with_header

    err = np.abs(real.astype(np.int16) - fake.astype(np.int16)).mean(axis=-1, keepdims=True)
    err = np.repeat(np.clip(err * ERROR_GAIN, 0, 255).astype(np.uint8), 3, axis=-1)
    width = real.shape[2] * scale
    tiles = [with_header(side_by_side(upscale(r, scale), upscale(f, scale), upscale(e, scale), gap=2 * scale),
                         ["real", "imagined", f"|error| x{ERROR_GAIN}"], [width] * 3, f"step {t + 1}",
                         gap=2 * scale)
             for t, (r, f, e) in enumerate(zip(real, fake, err))]
    images = [Image.fromarray(t) for t in tiles]
    images[0].save(path, save_all=True, append_images=images[1:], duration=120, loop=0)


def _steps_axis(ax: Any, hs: list[int]) -> None:
    """A log2 axis of steps ahead, ticked at the horizons as plain numbers (not 2^k)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(hs, [str(h) for h in hs])
    ax.set_xlabel("steps after the real context")


def plot_fidelity(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = result["horizons"]
    fg = result.get("foreground_retention")
    fig, axes = plt.subplots(1, 3 if fg else 2, figsize=(16 if fg else 11, 4), constrained_layout=True)
    series = [("world model", result["model"]), ("repeat last frame", result["repeat_last_frame"])]
    if "short_memory" in result:
        series.append((f"short memory ({result['short_memory']['context_window']} frames)", result["short_memory"]))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for name, res in series:
            m = np.array([res[str(h)][metric]["mean"] for h in hs])
            ci = np.array([res[str(h)][metric]["ci95"] for h in hs])
            ax.plot(hs, m, "o-", label=name + " (band: 95% CI over windows)" * (metric == "ssim" and
                                                                                name == "world model"))
            ax.fill_between(hs, m - ci, m + ci, alpha=0.2)
        _steps_axis(ax, hs)
        ax.set_ylabel({"psnr": "PSNR (dB; an exact frame counts 100)", "ssim": "SSIM"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    if fg:
        ax = axes[2]
        names = {"model": "world model", "repeat_last_frame": "repeat last frame", "short_memory": "short memory"}
        for (metric, style), series_by_model in ((("retention", "o-"), fg),
                                                  (("recall", "s--"), result.get("foreground_recall", {})),
                                                  (("precision", "^:"), result.get("foreground_precision", {}))):
            for i, (key, values) in enumerate(series_by_model.items()):
                ax.plot(hs, [np.nan if values[str(h)] is None else values[str(h)] for h in hs], style,
                        color=f"C{i}", label=f"{names[key]}: {metric}")
        ax.axhline(1.0, color="gray", lw=0.8, label="1: as the real frame")
        _steps_axis(ax, hs)
        ax.set_ylabel("foreground retention / recall / precision")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Fidelity on held-out episodes of {result['dataset_id']} ({result['num_windows']} windows, "
                 f"world model step {result['checkpoint_step']}, {sampler_label(result)}"
                 + (f", {result['precision']}" if result.get("precision") else "") + ")")
    save_figure(fig, path, dpi=90)
    plt.close(fig)
