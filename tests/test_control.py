"""The action-response benchmark: its scores on synthetic rollouts with a known answer, its refusals, and a full
run on a tiny world model against the real (16x16 CartPole) env."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from diffusion_world.bench.control import action_set, collect_real, run_control, score_control
from diffusion_world.bench.report import render
from diffusion_world.cli import main
from diffusion_world.errors import UserError


def _real(N: int = 3, A: int = 2, H: int = 4, seed: int = 0) -> np.ndarray:
    """Real rollouts in which every action moves a dark square its own way, further each step."""
    rng = np.random.default_rng(seed)
    real = np.full((N, A, H, 12, 12, 3), 200, np.uint8)
    for i in range(N):
        y = int(rng.integers(3, 8))
        for a in range(A):
            for h in range(H):
                x = 4 + (h + 1) // 2 * (1 if a == 1 else -1)
                real[i, a, h, y: y + 2, max(x, 0): max(x, 0) + 2] = 40
    return real


def test_scores_of_known_models() -> None:
    real = _real()
    N, A, H = real.shape[:3]
    lengths = np.full((N, A), H)
    twice = np.repeat(real[:, :, None], 2, axis=2)  # two identical "samples" per action

    perfect = score_control(real, lengths, twice)
    assert perfect["starts"] == [N] * H
    # step 1: both squares still at the same place (the (h + 1) // 2 offset), so nothing is identifiable
    assert perfect["identifiable"][0] == 0 and perfect["accuracy"][0] is None and perfect["gain"][0] is None
    assert perfect["accuracy"][1:] == [1.0] * (H - 1)
    assert perfect["gain"][1:] == pytest.approx([1.0] * (H - 1))
    assert perfect["sample_spread"][1:] == [0.0] * (H - 1)

    ignores = score_control(real, lengths, np.repeat(twice[:, :1], A, axis=1))  # action 0's frames for all
    assert ignores["accuracy"][1:] == [0.5] * (H - 1)  # chance
    assert ignores["gain"][1:] == pytest.approx([0.0] * (H - 1))

    reversed_ = score_control(real, lengths, twice[:, ::-1])
    assert reversed_["accuracy"][1:] == [0.0] * (H - 1)
    assert reversed_["gain"][1:] == pytest.approx([-1.0] * (H - 1))

    # half the effect: the square drawn half as dark where action 1 moves it, and where action 0 does
    half = twice.astype(np.int16)
    mid = (real[:, 0].astype(np.int16) + real[:, 1]) // 2
    half[:, 0, :] = mid[:, None] + (real[:, 0, None].astype(np.int16) - mid[:, None]) // 2
    half[:, 1, :] = mid[:, None] + (real[:, 1, None].astype(np.int16) - mid[:, None]) // 2
    g = score_control(real, lengths, half.astype(np.uint8))["gain"]
    assert g[1:] == pytest.approx([0.5] * (H - 1), abs=0.02)

    # noise differs between samples: spread > 0, the gain of the sample mean stays near 1
    rng = np.random.default_rng(1)
    noisy = np.clip(twice.astype(np.int16) + rng.integers(-30, 31, twice.shape), 0, 255).astype(np.uint8)
    s = score_control(real, lengths, noisy)
    assert all(v > 0 for v in s["sample_spread"][1:]) and s["gain"][-1] == pytest.approx(1.0, abs=0.1)


def test_ended_episodes_are_not_scored() -> None:
    real = _real(N=3, H=4)
    lengths = np.array([[4, 4], [4, 2], [1, 4]])  # start 1: action 1's episode ended after 2 steps
    s = score_control(real, lengths, np.repeat(real[:, :, None], 2, axis=2))
    assert s["starts"] == [3, 2, 1, 1]
    with pytest.raises(UserError, match="at least two actions"):
        score_control(real[:, :1], lengths[:, :1], np.repeat(real[:, :1, None], 2, axis=2))


def test_action_set() -> None:
    rng = np.random.default_rng(0)
    assert action_set(gym.spaces.Discrete(3, start=1), rng) == [1, 2, 3]
    many = action_set(gym.spaces.Discrete(20), rng)
    assert len(many) == 8 and len(set(many)) == 8 and all(0 <= a < 20 for a in many)
    box = action_set(gym.spaces.Box(-1.0, 2.0, (2,)), rng)  # each dimension on its own, not only the diagonal
    assert [b.tolist() for b in box] == [[-1.0, 0.5], [2.0, 0.5], [0.5, -1.0], [0.5, 2.0]]  # no centre: see below
    assert [b.tolist() for b in action_set(gym.spaces.Box(-2.0, 2.0, (1,)), rng)] == [[-2.0], [0.0], [2.0]]
    wide = action_set(gym.spaces.Box(-1.0, 1.0, (6,)), rng)
    assert len(wide) == 8 and all(b.shape == (6,) and b.dtype == np.float32 for b in wide)
    with pytest.raises(UserError, match="finite bounds"):
        action_set(gym.spaces.Box(-np.inf, np.inf, (2,)), rng)
    with pytest.raises(UserError, match="Discrete and Box"):
        action_set(gym.spaces.MultiBinary(3), rng)


class _UnseededEnv(gym.Env):
    """Frames that ignore the reset seed: constant-action rollouts cannot share a start state."""

    observation_space = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.rng = np.random.default_rng()

    def reset(self, *, seed=None, options=None):
        return self.rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), {}

    def step(self, action):
        return self.rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), 1.0, False, False, {}


def test_nondeterministic_env_is_refused() -> None:
    env = _UnseededEnv()
    with pytest.raises(UserError, match="not deterministic"):
        collect_real(env, env.action_space, [0, 1], num_starts=2, context=3, horizon=2, seed=0)


def test_control_on_tiny_model(tiny_world_model: str, tmp_path: Path, one_torch_thread: None) -> None:
    r = run_control(tiny_world_model, tmp_path, num_starts=3, horizon=4, context=2, progress=False)
    assert r["env_id"] == "CartPole-v1" and r["actions"] == [0, 1] and r["chance"] == 0.5
    s = r["per_step"]
    assert len(s["accuracy"]) == 4 and s["starts"][0] == 3
    assert all(v is None or 0 <= v <= 1 for v in s["accuracy"])
    assert (tmp_path / "control.png").exists() and (tmp_path / "control_rollouts.png").exists()
    md = render("control", {**r, "machine": {}})
    assert "| steps held |" in md and "identification" in md
    again = run_control(tiny_world_model, None, num_starts=3, horizon=4, context=2, progress=False)
    assert again["per_step"] == s  # same seeds: same start states, same sampler noise


def test_control_cli(tiny_world_model: str, tmp_path: Path, one_torch_thread: None,
                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "control", "--world-model", tiny_world_model, "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "control_quick.json").exists() and "| steps held |" in capsys.readouterr().out
