"""Does the imagined env end an episode when the real one does?

For each terminated held-out episode: its real frames up to ``context`` before the last ``horizon`` steps warm
the model up, then the episode's real actions are replayed until its real terminal frame (and ``tolerance`` steps
further where the data goes on after its terminations, ``collect --post-terminal-steps``), and the step at which
the imagined episode first terminates (p > 0.5) is compared with the real one. On time: within ``tolerance``
steps of it; early: before that; missed: not by the last step replayed. The same, as expected shares, for an
env that samples terminations (``termination="sample"``) from the same probabilities. The same is scored for the
model's own termination head on the same imagined frames (when a frame classifier replaces it) and for whatever scores
terminations (classifier or head) on the real frames of the episode (what perfect frames would give; the head
reads them teacher-forced, each real frame seeing the real ones before it).

Calibration: on every real frame of the same episodes up to its first terminal one, teacher-forced as the fidelity
benchmark's ``termination_real_frames`` reads them, whether the probabilities that score terminations match how often
the frames they are given to are terminal (a reliability table and diagram, the Brier score, the expected
calibration error). A probability above the share is an env that ends episodes too eagerly when it samples them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_world.bench.common import comparison_dataset, heldout_episodes, sampler_label
from diffusion_world.bench.fidelity import real_frame_termination_probs
from diffusion_world.bench.random_play import SWEEP
from diffusion_world.checkpoint import WorldModel, load_checkpoint, load_world_model
from diffusion_world.data.dataset import FrameCache
from diffusion_world.diffusion.sampler import SamplerConfig, frames_to_x, imagine
from diffusion_world.envs.core import open_dataset_for
from diffusion_world.errors import UserError
from diffusion_world.files import save_figure


def _first_step(terminated: np.ndarray) -> int | None:
    hits = np.flatnonzero(terminated)
    return int(hits[0]) + 1 if len(hits) else None


def score_first_steps(first: list[int | None], real: list[int], tolerance: int) -> dict[str, Any]:
    """On-time / early / missed shares and the mean |step error| where the imagined episode terminated."""
    n = len(real)
    on_time = sum(f is not None and abs(f - r) <= tolerance for f, r in zip(first, real))
    early = sum(f is not None and f < r - tolerance for f, r in zip(first, real))
    errors = [abs(f - r) for f, r in zip(first, real) if f is not None]
    return {"episodes": n, "on_time": on_time / n if n else None, "early": early / n if n else None,
            "missed": (n - on_time - early) / n if n else None,
            "mean_abs_step_error": float(np.mean(errors)) if errors else None}


def score_sampled(probabilities: list[np.ndarray], real: list[int], tolerance: int) -> dict[str, Any]:
    """The expected on-time / early / missed shares when each step terminates with its probability (an env with
    ``termination="sample"``): episode i first terminates at step t with p_t * prod_{s<t} (1 - p_s). Exact, not
    drawn. The mean |step error| is over the episodes' termination steps, weighted by their probability."""
    n = len(real)
    on_time = early = terminated = abs_error = 0.0
    for p, r in zip(probabilities, real):
        p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
        survive = np.concatenate([[1.0], np.cumprod(1.0 - p)[:-1]])
        first = p * survive  # P(first termination at step t = 1..len(p))
        t = np.arange(1, len(p) + 1)
        on_time += first[np.abs(t - r) <= tolerance].sum()
        early += first[t < r - tolerance].sum()
        terminated += first.sum()
        abs_error += (first * np.abs(t - r)).sum()
    return {"episodes": n, "on_time": on_time / n if n else None, "early": early / n if n else None,
            "missed": (n - on_time - early) / n if n else None,
            "mean_abs_step_error": abs_error / terminated if terminated else None}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for z = 1.96) of a share of ``k`` in ``n``."""
    share, z2 = k / n, z * z
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exactly 0 at k = 0 and 1 at k = n, where rounding gave 2.8e-17 or 0.9999999999999999 (a negative error bar)
    return float(min(share, max(0.0, centre - half))), float(max(share, min(1.0, centre + half)))


def calibration(real: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """How well termination probabilities ``probs`` match the terminations ``real`` (booleans) of the same frames:
    the frames in ``bins`` equal-width probability bins (a bin holds [lo, hi), the last one [lo, 1]), each with
    its mean probability and the share of its frames that are terminal (with its 95 % Wilson interval); the
    expected calibration error (the frames' mean |mean probability - terminal share| of their bin), the Brier
    score (mean squared error of the probabilities) and the overall mean probability against the overall
    terminal share."""
    real, probs = np.asarray(real, dtype=bool), np.asarray(probs, dtype=np.float64)
    if real.shape != probs.shape or real.ndim != 1 or not len(real):
        raise ValueError(f"calibration needs two equal 1-D non-empty arrays, got {real.shape} and {probs.shape}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, bins - 1)
    rows, gap = [], 0.0
    for i in range(bins):
        m = which == i
        if not m.any():
            continue
        mean_p, share = float(probs[m].mean()), float(real[m].mean())
        rows.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "frames": int(m.sum()),
                     "terminal_frames": int(real[m].sum()), "mean_probability": mean_p, "terminal_share": share,
                     "terminal_share_95": wilson_interval(int(real[m].sum()), int(m.sum()))})
        gap += m.sum() * abs(mean_p - share)
    return {"frames": len(real), "terminal_frames": int(real.sum()), "mean_probability": float(probs.mean()),
            "terminal_share": float(real.mean()), "brier": float(np.mean((probs - real) ** 2)),
            "expected_calibration_error": gap / len(real), "bins": rows}


def live_frames(cache: FrameCache, episodes: np.ndarray) -> np.ndarray:
    """For the frames of ``episodes`` in order (as :func:`real_frame_termination_probs` gives them): whether each
    lies at or before its episode's first terminal frame."""
    return np.concatenate([np.arange(n) < live for n, live in zip(cache.episode_lengths[episodes],
                                                                   cache.live_lengths[episodes])])


def end_windows(cache: FrameCache, episodes: np.ndarray, context: int, horizon: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """For each episode (of at least ``context + 1`` frames): the first frame of the window of ``context`` real
    frames and then up to ``horizon`` steps that ends on the episode's first terminal frame (its last frame when
    it has none), and its number of steps."""
    ends = cache.episode_starts[episodes] + cache.live_lengths[episodes] - 1
    starts = np.maximum(cache.episode_starts[episodes], ends - context - horizon + 1)
    return starts, ends - starts - context + 1


def imagine_windows(wm: WorldModel, cache: FrameCache, starts: np.ndarray, steps: np.ndarray, context: int,
                    sampler: SamplerConfig, seed: int = 0, progress: bool = True, batch_size: int = 16,
                    desc: str = "rollouts", precision: str = "fp32"
                    ) -> Iterator[tuple[np.ndarray, torch.Tensor, dict[str, torch.Tensor]]]:
    """Replay the real actions of each window (``starts``, ``steps`` as from :func:`end_windows`) from its first
    ``context`` real frames, in batches of windows with the same number of steps. Yields the windows' positions
    in ``starts``, their real frames (b, context + h, H, W, 3) and :func:`imagine`'s output; window i's sampler
    noise comes from seed ``seed + i``."""
    groups = {int(h): np.flatnonzero(steps == h) for h in np.unique(steps)}
    for h, members in tqdm(groups.items(), desc=desc, disable=not progress, leave=False):
        for lo in range(0, len(members), batch_size):
            sel = members[lo: lo + batch_size]
            idx = starts[sel, None] + np.arange(context + h)
            fr = torch.from_numpy(np.asarray(cache.frames[idx]))
            act = torch.from_numpy(cache.prev_actions[idx])
            has = torch.from_numpy(cache.has_prev_action[idx])
            gens = [torch.Generator().manual_seed(seed + int(i)) for i in sel]
            yield sel, fr, imagine(wm.model, fr[:, :context], act[:, :context], has[:, :context], act[:, context:],
                                   gens, sampler, precision=precision)


@torch.no_grad()
def real_frame_head_probability(wm: WorldModel, frames: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
                                sigma_ctx: float) -> torch.Tensor:
    """The model's own calibrated termination probability for real frames (b, T, H, W, 3) uint8, teacher-forced:
    one causal pass of the clean stream (as when real context frames warm the env up), each frame seeing the
    real frames before it. (b, T)."""
    dev = next(wm.model.parameters()).device
    state = wm.model.new_state(len(frames), dev)
    out = wm.model.warmup(state, frames_to_x(frames).to(dev), sigma_ctx, actions.to(dev), has_action.to(dev))
    return wm.head_termination_probability(out.termination_logit).cpu()


@torch.no_grad()
def run_termination(world_model: str, dataset_id: str | None = None, context: int | None = None,
                    horizon: int = 16, max_episodes: int = 128, tolerance: int = 2, sampler_steps: int | None = None,
                    history_guidance: float | None = None, seed: int = 0, device: str = "cpu",
                    progress: bool = True, precision: str = "fp32", out: str | Path | None = None,
                    stem: str = "termination") -> dict[str, Any]:
    """Score the ends of imagined episodes (see the module's docstring); with ``out``, also draw the calibration's
    reliability diagram into ``out/<stem>.png``."""
    wm: WorldModel = load_world_model(world_model, device=device)
    dataset_id = dataset_id or comparison_dataset(wm, "termination")
    cache = open_dataset_for(dataset_id, wm, progress=progress)
    tc = load_checkpoint(wm.path).get("train_config", {})
    episodes, heldout, seed_range = heldout_episodes(cache, wm.dataset, tc)
    context = int(context or wm.imagination.get("context_frames", 4))
    sampler = wm.sampler_config(sampler_steps, history_guidance)
    K = sampler.num_steps
    if not len(episodes):
        raise UserError(f"{dataset_id!r} has no held-out episodes (the run trained on all of them): pass "
                        "--dataset-id of another dataset of this env")
    ends = cache.episode_starts[episodes] + cache.live_lengths[episodes] - 1
    terminated = np.asarray(cache.terminations)[ends]
    if not terminated.any():
        raise UserError(f"none of the {len(episodes)} held-out episode(s) of {dataset_id!r} terminates (they are "
                        "all truncated): nothing to score; use a dataset whose episodes end by termination (in "
                        "CartPole, random play), or this env may never terminate")
    ok = terminated & (cache.live_lengths[episodes] >= context + 1)
    episodes, ends = episodes[ok], ends[ok]
    if not len(episodes):
        raise UserError(f"no terminated held-out episode of {dataset_id!r} has {context + 1} frames "
                        f"({context} context frames + the terminal one)")
    rng = np.random.default_rng(seed)
    if len(episodes) > max_episodes:
        keep = np.sort(rng.choice(len(episodes), max_episodes, replace=False))
        episodes = episodes[keep]
    starts, steps = end_windows(cache, episodes, context, horizon)
    # Where the data goes on after the termination (collect --post-terminal-steps), the rollouts go on too, with
    # the real actions, for up to ``tolerance`` steps: a termination that comes late but on time is then seen.
    # Elsewhere they stop at the real terminal frame, and a late one counts as missed.
    past_end = np.minimum(tolerance, cache.episode_lengths[episodes] - cache.live_lengths[episodes])
    rows: dict[str, list[int | None]] = {"imagined": [], "imagined_head": [], "real_frames": []}
    sampled: list[np.ndarray] = []
    real: list[int] = []
    has_classifier = wm.termination_classifier is not None
    for sel, fr, rollout in imagine_windows(wm, cache, starts, steps + past_end, context, sampler, seed, progress,
                                        desc="termination rollouts", precision=precision):
        h = fr.shape[1] - context
        p = wm.termination_probability(rollout["termination_logits"], frames_to_x(rollout["frames"])).numpy()
        p_head = wm.head_termination_probability(rollout["termination_logits"]).numpy()
        if has_classifier:
            p_real = wm.termination_probability(torch.zeros(len(sel), h), frames_to_x(fr[:, context:])).numpy()
        else:
            idx = starts[sel, None] + np.arange(context + h)
            p_real = real_frame_head_probability(wm, fr, torch.from_numpy(cache.prev_actions[idx]),
                                                 torch.from_numpy(cache.has_prev_action[idx]),
                                                 sampler.sigma_min)[:, context:].numpy()
        for j in range(len(sel)):
            rows["imagined"].append(_first_step(p[j] > 0.5))
            rows["imagined_head"].append(_first_step(p_head[j] > 0.5))
            rows["real_frames"].append(_first_step(p_real[j] > 0.5))
            sampled.append(p[j])
            real.append(int(steps[sel[j]]))
    result: dict[str, Any] = {
        "world_model": str(world_model), "dataset_id": dataset_id, "heldout": heldout,
        "heldout_episode_seeds": seed_range, "checkpoint_step": wm.step,
        "context_frames": context, "horizon": horizon, "tolerance": tolerance, "sampler_steps": K,
        **({"history_guidance": sampler.history_guidance} if sampler.guided else {}),
        "steps_past_end": int(past_end.min()) if past_end.min() == past_end.max() else past_end.tolist(),
        "termination_source": "classifier" if has_classifier else "head",
        "imagined": score_first_steps(rows["imagined"], real, tolerance),
        "imagined_sampled": score_sampled(sampled, real, tolerance),
    }
    if has_classifier:
        result["imagined_head"] = score_first_steps(rows["imagined_head"], real, tolerance)
    result["real_frames"] = score_first_steps(rows["real_frames"], real, tolerance)
    seq_len = int(tc.get("seq_len", 16))
    longest = int(cache.episode_lengths[episodes].max())
    labels, probs = real_frame_termination_probs(wm, cache, episodes, min(seq_len, longest), progress=progress)
    live = live_frames(cache, episodes)
    result["real_frames_calibration"] = {"seq_len": seq_len, **calibration(labels[live], probs[live])}
    if out is not None:
        plot_calibration(Path(out) / f"{stem}.png", result)
    # other values of the env's termination_threshold, scored on the same imagined rollouts
    result["threshold_sweep"] = [{"threshold": th, **score_first_steps([_first_step(q > th) for q in sampled], real,
                                                                     tolerance)} for th in SWEEP]
    result["headline"] = {"episodes": len(real), "on_time": result["imagined"]["on_time"],
                          "early": result["imagined"]["early"], "missed": result["imagined"]["missed"]}
    return result


def _past_end_note(r: dict[str, Any]) -> str:
    past, tol = r.get("steps_past_end", 0), r["tolerance"]
    if past == tol:
        return (f"The data goes on after each termination (`collect --post-terminal-steps`): rollouts and real frames "
                f"go on for {tol} more steps, with the real actions, so late terminations within the tolerance count "
                "as on time.")
    if isinstance(past, list):
        return (f"Rollouts go on past the real terminal frame, with the real actions, for up to {tol} steps where the "
                f"data has frames there ({sum(k == tol for k in past)} of {len(past)} episodes); elsewhere a late "
                "termination counts as missed.")
    return ("The rollouts stop at the real terminal frame (the data has no frames after it), so a termination that "
            "comes late, even within the tolerance, counts as missed.")


def termination_markdown(r: dict[str, Any]) -> str:
    from diffusion_world.bench.report import _f

    lines = [f"{r['imagined']['episodes']} terminated episodes ({r['heldout']}, `{r['dataset_id']}`): "
             f"{r['context_frames']} real context frames, then the real actions for up to {r['horizon']} steps, to "
             f"the real terminal frame; {sampler_label(r)}; checkpoint step {r['checkpoint_step']}. On time: "
             f"the imagined episode terminates within {r['tolerance']} steps of the real one. "
             + _past_end_note(r), "",
             "| terminations from | on time | early | missed | mean abs step error |", "|---|---|---|---|---|"]
    names = {"imagined": f"imagined frames, {r['termination_source']}",
             "imagined_sampled": f"imagined frames, {r['termination_source']}, sampled (`termination=\"sample\"`; "
                                 "expected shares)",
             "imagined_head": "imagined frames, the model's head",
             "real_frames": f"real frames, {r['termination_source']}"}
    for key, name in names.items():
        if key in r:
            s = r[key]
            lines.append(f"| {name} | {_f(s['on_time'])} | {_f(s['early'])} | {_f(s['missed'])} "
                         f"| {_f(s['mean_abs_step_error'], 1)} |")
    for s in r.get("threshold_sweep", []):  # recorded since 2026-11-27
        if s["threshold"] != 0.5:
            lines.append(f"| imagined frames, {r['termination_source']}, `termination_threshold={s['threshold']:g}` "
                         f"| {_f(s['on_time'])} | {_f(s['early'])} | {_f(s['missed'])} "
                         f"| {_f(s['mean_abs_step_error'], 1)} |")
    return "\n".join(lines + calibration_markdown(r))



def calibration_markdown(r: dict[str, Any]) -> list[str]:
    from diffusion_world.bench.report import _f

    c = r.get("real_frames_calibration")
    if c is None:  # results from before 2026-12-08
        return []
    lines = ["", f"Calibration of the {r['termination_source']} on the {c['frames']} real frames of these episodes up "
             f"to their first terminal one ({c['terminal_frames']} terminal; teacher-forced in windows of "
             f"{c['seq_len']} frames): mean probability {_f(c['mean_probability'], 3)} against a terminal share of "
             f"{_f(c['terminal_share'], 3)}; Brier score {_f(c['brier'], 4)}; expected calibration error "
             f"{_f(c['expected_calibration_error'], 4)}. Per probability bin (a well-calibrated probability matches "
             "its bin's terminal share; above it, the env ends episodes too eagerly where it samples them):", "",
             "| probability bin | frames | terminal | mean probability | terminal share (95 % interval) |",
             "|---|---|---|---|---|"]
    for b in c["bins"]:
        lo, hi = b["terminal_share_95"]
        lines.append(f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['frames']} | {b['terminal_frames']} "
                     f"| {_f(b['mean_probability'], 3)} | {_f(b['terminal_share'], 3)} ({lo:.3f}-{hi:.3f}) |")
    return lines


def plot_calibration(path: Path, r: dict[str, Any]) -> None:
    """Reliability diagram of ``r["real_frames_calibration"]``: each bin's terminal share against its mean
    probability (marker area ~ frames), over a histogram of the probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = r["real_frames_calibration"]
    bins = c["bins"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True,
                                   constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="calibrated")
    x = [b["mean_probability"] for b in bins]
    y = [b["terminal_share"] for b in bins]
    n = np.array([b["frames"] for b in bins], dtype=float)
    ci = np.array([b["terminal_share_95"] for b in bins]).T
    errors = np.clip([np.subtract(y, ci[0]), ci[1] - y], 0, None)
    ax.errorbar(x, y, yerr=errors, fmt="-", color="C0", lw=1, elinewidth=1, capsize=3,
                label="95 % interval of the share")
    ax.scatter(x, y, s=20 + 180 * np.sqrt(n / n.max()), color="C0", zorder=3,
               label=f"{r['termination_source']} on real frames (area ~ frames)")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of the bin's frames that are terminal")
    ax.set_title(f"Termination calibration, checkpoint step {r['checkpoint_step']}\n{c['frames']} real frames, "
                 f"ECE {c['expected_calibration_error']:.3f}, Brier {c['brier']:.4f}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.bar([(b["lo"] + b["hi"]) / 2 for b in bins], n, width=[b["hi"] - b["lo"] for b in bins], color="C0",
             alpha=0.6, edgecolor="white", log=True)
    hist.set_xlabel("termination probability")
    hist.set_ylabel("frames (log)")
    hist.grid(alpha=0.3)
    save_figure(fig, path, dpi=90)
    plt.close(fig)
