"""The shipped default world model: `gym.make("DiffusionWorld-v0")` works with no dataset on the machine."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import diffusion_world  # noqa: F401  (registers the envs)
from diffusion_world.checkpoint import SHIPPED, load_checkpoint, resolve_world_model


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_slim_and_documented(name: str) -> None:
    path = resolve_world_model(name)
    assert path.stat().st_size <= 20e6
    ckpt = load_checkpoint(path)
    assert ckpt["provenance"]["exported_from_step"] == ckpt["step"] > 0
    assert ckpt["contexts"]["frames"].shape[0] >= 4  # reset contexts travel with the weights


def test_default_env_runs_without_the_dataset(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # an empty Minari root: no dataset here
    env = gym.make("DiffusionWorld-v0", horizon=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    steps = 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        assert isinstance(reward, float) and isinstance(terminated, bool)
        if terminated or truncated:
            break
    assert steps <= 3
    named = gym.make("DiffusionWorld-v0", world_model="cartpole")
    assert named.observation_space == env.observation_space
