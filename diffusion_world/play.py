"""``diffusion-world play``: write an imagined rollout as a GIF or MP4.

Two modes:

* policy rollout: the env (``DiffusionWorldEnv``) driven by a random policy or an SB3 model for N steps,
  resetting when an episode ends;
* ``compare_real``: a held-out dataset episode (the validation split of the checkpoint's training run) replayed
  in imagination. The world model starts from the episode's first ``context_frames`` real frames and gets the
  episode's recorded actions; the video shows the recorded real frames | the imagined frames side by side, and
  the summary gives the PSNR per step.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from diffusion_world.errors import UserError, writable_dir

VIDEO_SUFFIXES = (".gif", ".mp4")
MIN_VIDEO_HEIGHT = 128  # frames are upscaled (nearest) to at least this height
MAX_SCALE = 32  # --scale beyond this makes videos of gigabytes (OpenCV failed to allocate 10^14 bytes at 100,000)
GAP = 4  # pixels between the real and the imagined frame


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 frames (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame if scale == 1 else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def side_by_side(*panels: np.ndarray, gap: int = GAP) -> np.ndarray:
    """Frames of one height next to each other, divided by grey bars (white vanished against white frames)."""
    bar = np.full((panels[0].shape[0], gap, 3), 128, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        parts += [bar, panel] if i else [panel]
    return np.concatenate(parts, axis=1)


def with_header(frame: np.ndarray, labels: list[str], widths: list[int], note: str = "", gap: int = GAP) -> np.ndarray:
    """``frame`` under a dark strip naming its panels (``labels``, one per panel of ``widths`` pixels, divided by
    ``gap``) and, at the right, ``note`` (e.g. the step)."""
    height = 16
    strip = np.full((height, frame.shape[1], 3), 40, dtype=np.uint8)
    x = 0
    for label, width in zip(labels, widths):
        cv2.putText(strip, label, (x + 3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        x += width + gap
    if note:
        (w, _), _ = cv2.getTextSize(note, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        cv2.putText(strip, note, (frame.shape[1] - w - 3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 220, 120), 1,
                    cv2.LINE_AA)
    return np.concatenate([strip, frame], axis=0)


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 15) -> Path:
    """Write (H, W, 3) uint8 RGB frames as a looping GIF (PIL) or an MP4 (OpenCV, mp4v)."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"output {str(path)!r} must end with .gif or .mp4")
    if not frames:
        raise UserError("no frames to write")
    check_video_path(path)
    # written next to it, then renamed: an interrupted write never leaves half a video under the name
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image

            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
        else:
            H, W = frames[0].shape[:2]
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), (W, H))
            if not writer.isOpened():
                raise UserError(f"OpenCV cannot write {str(path)!r} (no mp4v encoder?); write a .gif instead")
            try:
                for f in frames:
                    writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            finally:
                writer.release()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_video_path(path: str | os.PathLike) -> Path:
    """A clear :class:`UserError` for a video path that cannot be written (a directory, an unwritable folder), before
    the rollout that would fill it; its folder is created."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {str(path)!r} is a directory: give a file name ending with .gif or .mp4")
    writable_dir(path.parent, "the video's folder")
    return path


def _scale_for(height: int, scale: int | None) -> int:
    return scale if scale is not None else max(1, math.ceil(MIN_VIDEO_HEIGHT / height))


def play(world_model: str | os.PathLike = "cartpole", steps: int = 200, out: str | os.PathLike = "rollout.gif",
         policy: str = "random", compare_real: bool = False, seed: int = 0, fps: int = 15, scale: int | None = None,
         progress: bool = True, **env_kwargs: Any) -> dict[str, Any]:
    """Write an imagined rollout to ``out`` (.gif or .mp4) and return a summary.

    ``env_kwargs`` go to :class:`~diffusion_world.envs.DiffusionWorldEnv` (``dataset_id``, ``context_frames``,
    ``sampler_steps``, ``device``, ...).

    Example::

        play("runs/cartpole/checkpoint.pt", steps=100, out="rollout.gif", policy="ppo_imagined.zip")
        play("runs/cartpole/checkpoint.pt", steps=50, out="compare.mp4", compare_real=True)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be an integer >= 1, got {steps!r}")
    if Path(out).suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"output {str(out)!r} must end with .gif or .mp4")
    for name, v in (("fps", fps), ("scale", scale), ("frame_stack", env_kwargs.get("frame_stack"))):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UserError(f"{name} must be an integer >= 1, got {v!r}")
    if scale is not None and scale > MAX_SCALE:
        raise UserError(f"scale must be at most {MAX_SCALE} (a {scale}x video of 64x64 frames would be "
                        f"{64 * scale} pixels high), got {scale}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"seed must be an integer >= 0, got {seed!r}")
    check_video_path(out)  # before the rollout, not after it
    if compare_real:
        if policy != "random":
            raise UserError("--compare-real replays the recorded actions of a dataset episode: drop --policy")
        return _play_compare_real(world_model, steps, out, seed, fps, scale, progress, **env_kwargs)

    from diffusion_world.checkpoint import load_world_model
    from diffusion_world.envs.world_env import DiffusionWorldEnv

    wm = load_world_model(world_model, device=env_kwargs.get("device", "cpu"))
    frame_stack = env_kwargs.pop("frame_stack", None)
    if policy == "random":
        env = DiffusionWorldEnv(wm, render_mode="rgb_array", frame_stack=frame_stack or 1, **env_kwargs)
        env.action_space.seed(seed)
        act = lambda obs: env.action_space.sample()  # noqa: E731
    else:
        from diffusion_world.data.collect import load_sb3_model
        from diffusion_world.envs.sb3_vec_env import agent_frame_stack

        agent = load_sb3_model(policy)
        stack = agent_frame_stack(agent.observation_space, wm.config.frame_size)
        if stack is None or (frame_stack is not None and frame_stack != stack):
            raise UserError(f"policy {policy!r} observes {agent.observation_space}, which is not a stack of "
                            f"{frame_stack or 'k'} {wm.config.frame_size[0]}x{wm.config.frame_size[1]} RGB frames")
        env = DiffusionWorldEnv(wm, render_mode="rgb_array", frame_stack=stack, **env_kwargs)
        act = lambda obs: agent.predict(obs, deterministic=True)[0]  # noqa: E731
    obs, _ = env.reset(seed=seed)
    scale = _scale_for(env.core.frame_size[0], scale)
    frames = [upscale(env.core.last_frames()[0], scale)]
    episodes, returns, episode_return = 0, [], 0.0
    for _ in tqdm(range(steps), desc="imagining", unit="step", disable=not progress):
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        episode_return += float(reward)
        frames.append(upscale(env.core.last_frames()[0], scale))
        if terminated or truncated:
            episodes += 1
            returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
            frames.append(upscale(env.core.last_frames()[0], scale))
    path = write_video(out, frames, fps)
    return {"out": str(path), "steps": steps, "frames": len(frames), "episodes_ended": episodes,
            "episode_returns": returns, "unfinished_return": episode_return}


def _val_episodes(world_model: Any, cache: Any) -> tuple[np.ndarray, bool]:
    """The episodes of ``cache`` that the model did not train on: all of another dataset's, else the validation
    episodes of the training run (its ``val_fraction`` and split seed); else all, and False (trained on)."""
    from diffusion_world.checkpoint import load_checkpoint

    train = load_checkpoint(world_model.path).get("train_config") or {}
    if train.get("dataset_id") and train["dataset_id"] != cache.dataset_id:
        return np.arange(cache.num_episodes), True
    val_fraction = float(train.get("val_fraction", 0.1))
    split_seed = int(train.get("split_seed", train.get("seed", 0)))
    _, val = cache.episode_split(val_fraction, seed=split_seed)
    return (val, True) if len(val) else (np.arange(cache.num_episodes), False)


def _play_compare_real(world_model: str | os.PathLike, steps: int, out: str | os.PathLike, seed: int, fps: int,
                       scale: int | None, progress: bool, **env_kwargs: Any) -> dict[str, Any]:
    from diffusion_world.envs.core import Context, ImaginationCore

    env_kwargs.setdefault("context_source", "dataset")
    core = ImaginationCore(world_model, 1, **env_kwargs)
    cache = core.contexts.cache  # type: ignore[union-attr]
    L = core.context_frames
    episodes, held_out = _val_episodes(core.world_model, cache)
    if not held_out:
        warnings.warn(f"the training run held out no episode of {cache.dataset_id!r}: replaying one it trained on",
                      stacklevel=2)
    long_enough = episodes[cache.episode_lengths[episodes] > L]
    if not len(long_enough):
        raise UserError(f"no {'held-out ' if held_out else ''}episode of {cache.dataset_id!r} is longer than "
                        f"context_frames={L}")
    rng = np.random.default_rng(seed)
    episode = int(rng.choice(long_enough))
    start, length = int(cache.episode_starts[episode]), int(cache.episode_lengths[episode])
    window = slice(start, start + L)
    context = Context(np.array(cache.frames[window]), np.array(cache.prev_actions[window]),
                      np.array(cache.has_prev_action[window]))
    core.reset_rows([0], [rng], [context])
    steps = min(steps, length - L)
    scale = _scale_for(core.frame_size[0], scale)
    width = core.frame_size[1] * scale

    def labelled(real: np.ndarray, imagined: np.ndarray, note: str) -> np.ndarray:
        return with_header(side_by_side(upscale(real, scale), upscale(imagined, scale)), ["real", "imagined"],
                           [width, width], note)

    frames = [labelled(context.frames[-1], context.frames[-1], "last real context frame")]
    psnrs, predicted_end, real_end = [], None, None
    for t in tqdm(range(steps), desc="replaying", unit="step", disable=not progress):
        i = start + L + t  # the real frame this step should produce, and the action that led to it
        result = core.step(core.check_actions(cache.prev_actions[i:i + 1]))
        real, imagined = cache.frames[i], result.frames[0]
        psnrs.append(psnr(real, imagined))
        frames.append(labelled(real, imagined, f"step {t + 1}"))
        if predicted_end is None and result.terminated[0]:
            predicted_end = t + 1
        if real_end is None and cache.terminations[i]:
            real_end = t + 1
    path = write_video(out, frames, fps)
    return {"out": str(path), "steps": steps, "dataset_id": cache.dataset_id, "episode": episode, "held_out": held_out,
            "psnr_per_step": psnrs, "mean_psnr": float(np.mean([p for p in psnrs if math.isfinite(p)] or [math.inf])),
            "predicted_termination_step": predicted_end, "real_termination_step": real_end}


def play_from_args(args: Any) -> dict[str, Any]:
    """The ``play`` subcommand: flags -> :func:`play`, then a short summary on stdout."""
    env_kwargs = {k: v for k, v in {"dataset_id": args.dataset_id, "context_frames": args.context_frames,
                                    "sampler_steps": args.sampler_steps, "device": args.device,
                                    "frame_stack": args.frame_stack, "precision": args.precision}.items()
                  if v is not None}
    summary = play(args.world_model, steps=args.steps, out=args.out, policy=args.policy,
                   compare_real=args.compare_real, seed=args.seed, fps=args.fps, scale=args.scale,
                   progress=not args.quiet, **env_kwargs)
    if not args.quiet:
        if args.compare_real:
            print(f"wrote {summary['out']}: {'held-out' if summary['held_out'] else 'training'} episode "
                  f"{summary['episode']} of {summary['dataset_id']}, "
                  f"{summary['steps']} steps, mean PSNR {summary['mean_psnr']:.2f} dB "
                  f"(termination: predicted step {summary['predicted_termination_step']}, "
                  f"real step {summary['real_termination_step']})")
        else:
            print(f"wrote {summary['out']}: {summary['steps']} imagined steps, "
                  f"{summary['episodes_ended']} episode(s) ended, returns {summary['episode_returns']}")
    return summary
