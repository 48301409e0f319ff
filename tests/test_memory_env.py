"""The CueMemory env (the memory benchmark's env) and, marked slow, the quick memory benchmark end to end."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from diffusion_world.data.cue_memory_env import (
    BACKGROUND,
    CUE_MEMORY_ENV_ID,
    PALETTE,
    CueMemoryEnv,
    nearest_colour,
    patch_box,
)
from diffusion_world.errors import UserError


def rollout(env: gym.Env, seed: int, actions: list[int] | None = None) -> tuple[list[np.ndarray], list, dict]:
    """Frames, (reward, terminated, truncated) per step and the reset info of one episode."""
    frame, info = env.reset(seed=seed)
    frames, steps = [frame], []
    rng = np.random.default_rng(seed)
    t = 0
    while True:
        action = actions[t] if actions is not None else int(rng.integers(5))
        frame, reward, terminated, truncated, _ = env.step(action)
        frames.append(frame)
        steps.append((reward, terminated, truncated))
        t += 1
        if terminated or truncated:
            return frames, steps, info


def patch_mean(frame: np.ndarray) -> np.ndarray:
    top, bottom, left, right = patch_box(frame.shape[0])
    return frame[top:bottom, left:right].reshape(-1, 3).astype(np.float64).mean(axis=0)


@pytest.mark.filterwarnings("ignore:The minimal resolution for an image")  # SB3's CnnPolicy advice (16x16 frames)
def test_passes_gymnasium_and_sb3_check_env() -> None:
    check_env(gym.make(CUE_MEMORY_ENV_ID, n=5, render_mode="rgb_array").unwrapped, skip_render_check=False)
    sb3_env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    sb3_env_checker.check_env(CueMemoryEnv(n=5), warn=True)


def test_cue_only_at_start_then_reappears_at_step_n_plus_1() -> None:
    n = 6
    env = CueMemoryEnv(n=n, num_colours=4, frame_size=16)
    for seed in range(8):
        frames, steps, info = rollout(env, seed)
        cue = info["cue"]
        assert len(frames) == n + 2 and len(steps) == n + 1
        assert int(nearest_colour(frames[0], 4)) == cue
        for frame in frames[1: n + 1]:  # the distractor: the patch is background grey (plus the square)
            assert np.linalg.norm(patch_mean(frame) - BACKGROUND) < np.linalg.norm(patch_mean(frame) - PALETTE[cue])
            assert not np.all(frame == frames[0])
        assert int(nearest_colour(frames[-1], 4)) == cue
        assert [s[1] for s in steps] == [False] * n + [True]
        assert not any(s[2] for s in steps) and all(s[0] == 0.0 for s in steps)
        with pytest.raises(RuntimeError):
            env.step(0)


def test_timer_counts_down_to_the_reappearance() -> None:
    env = CueMemoryEnv(n=4, frame_size=16)
    frames, _, _ = rollout(env, 0)
    lit = [int((f[-2:] == 0).all(axis=-1).sum()) for f in frames]
    assert lit == [5, 4, 3, 2, 1, 0]


def test_actions_move_the_square() -> None:
    env = CueMemoryEnv(n=3, frame_size=16)
    right, _, _ = rollout(env, 0, [4, 4, 4, 0])
    stay, _, _ = rollout(env, 0, [0, 0, 0, 0])
    assert np.array_equal(right[0], stay[0])
    assert not np.array_equal(right[1], stay[1])


def test_deterministic_by_seed_and_all_colours_drawn() -> None:
    env_a, env_b = CueMemoryEnv(n=3), CueMemoryEnv(n=3)
    a, _, info_a = rollout(env_a, 7)
    b, _, info_b = rollout(env_b, 7)
    assert info_a["cue"] == info_b["cue"] and all(np.array_equal(x, y) for x, y in zip(a, b))
    cues = {CueMemoryEnv(n=3, num_colours=4).reset(seed=s)[1]["cue"] for s in range(40)}
    assert cues == {0, 1, 2, 3}


def test_pixel_env_frames_are_the_env_frames() -> None:
    from diffusion_world.data.pixel_env import make_pixel_env

    pixel = make_pixel_env(CUE_MEMORY_ENV_ID, size=16, n=3, frame_size=16)
    a, _, _ = rollout(pixel, 3)
    b, _, _ = rollout(CueMemoryEnv(n=3, frame_size=16), 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_kwargs_are_json_and_invalid_ones_rejected() -> None:
    spec = gym.make(CUE_MEMORY_ENV_ID, n=3, num_colours=6, frame_size=32).spec
    assert spec is not None
    json.dumps(spec.kwargs)
    for kwargs in ({"n": 0}, {"num_colours": 1}, {"num_colours": 99}, {"frame_size": 4}, {"n": 40, "frame_size": 16},
                   {"n": 2.5}):
        with pytest.raises(UserError):
            CueMemoryEnv(**kwargs)


def test_collects_whole_episodes(minari_root: Path) -> None:
    from diffusion_world.bench.memory import collect_cue_memory, heldout_episodes
    from diffusion_world.data.dataset import FrameCache

    dataset_id = collect_cue_memory("test/cue-memory-v0", n=3, num_episodes=5, progress=False)
    cache = FrameCache.open(dataset_id, progress=False)
    assert cache.num_episodes == 5 and (cache.episode_lengths == 5).all()
    assert cache.terminations[cache.episode_starts + 4].all()
    held = heldout_episodes(3, 4)
    assert held["frames"].shape == (4, 5, 16, 16, 3)
    assert (nearest_colour(held["frames"][:, -1], 4) == held["cues"]).all()
    assert not held["has_prev_action"][:, 0].any() and held["has_prev_action"][:, 1:].all()


@pytest.mark.slow
def test_quick_memory_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    from diffusion_world.bench.common import write_result
    from diffusion_world.bench.memory import run_memory

    result = run_memory(tmp_path / "out", quick=True, progress=False)
    headline = result["headline"]
    assert set(headline) == {"n", "accuracy", "short_memory_accuracy", "chance"}
    assert headline["chance"] == 0.25 and 0 <= headline["accuracy"] <= 1 and 0 <= headline["short_memory_accuracy"] <= 1
    assert result["training"]["ours"]["steps"] == result["training"]["short_memory"]["steps"]
    assert result["training"]["short_memory"]["context_window"] == 4
    assert result["training"]["ours"]["context_window"] >= headline["n"] + 2
    assert (tmp_path / "out" / "memory_quick.png").stat().st_size > 0
    path = write_result(tmp_path / "out" / "memory_quick.json", result)
    assert json.loads(path.read_text())["headline"] == headline


def test_memory_benchmark_trains_on_whole_episodes_and_records_what_it_trained(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Both models train on windows inside episodes, ours on whole episodes: the trainer's default of padded
    windows past an episode's end put the cue frame in 4% of ours' windows (it scored at chance), and the budget
    it reported (steps x batch x seq_len) was not what it trained (the checkpoint's ``num_frames_seen``)."""
    import diffusion_world.training.train as train_module
    from diffusion_world.bench.memory import train_pair
    from diffusion_world.checkpoint import save_checkpoint

    configs = {}

    def fake_train(cfg, resume=False, card=None):  # type: ignore[no-untyped-def]
        configs[Path(cfg.out_dir).name] = cfg
        save_checkpoint(Path(cfg.out_dir) / "checkpoint.pt", {"num_frames_seen": 7 * cfg.batch_size})
        return Path(cfg.out_dir) / "checkpoint.pt"

    monkeypatch.setattr(train_module, "train", fake_train)
    runs = train_pair("tt/cue-v0", tmp_path, n=24, steps=3, batch_size=4, lr=1e-2, model={}, loss={},
                      progress=False)
    assert not configs["ours"].pad_episode_ends and not configs["short_memory"].pad_episode_ends
    assert configs["ours"].seq_len == 26 and configs["short_memory"].seq_len == 5
    assert runs["ours"]["supervised_frames"] == 28 and runs["short_memory"]["supervised_frames"] == 7 * 21
