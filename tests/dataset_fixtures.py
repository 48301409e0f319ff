"""Minari datasets built the way other tools record them (an env's own observations, random actions, each
episode's reset seed), for the tests of what diffusion_world does with datasets it did not collect."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer


def record(dataset_id: str, env: gym.Env, seeds: list[int], recorded_seeds: list[int | None] | None = None,
           data_format: str = "hdf5", **storage: Any) -> None:
    """One random-action episode per seed, written with ``minari.create_dataset_from_buffers`` (Minari's
    ``DataCollector`` needs jax); ``recorded_seeds`` may record other seeds than those played."""
    env.action_space.seed(0)
    buffers = []
    for seed, recorded in zip(seeds, recorded_seeds or seeds):
        obs, _ = env.reset(seed=seed)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        while True:
            actions.append(env.action_space.sample())
            obs, reward, terminated, truncated, _ = env.step(actions[-1])
            observations.append(obs)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            if terminated or truncated:
                break
        stacked = ({k: np.stack([o[k] for o in observations]) for k in observations[0]}  # a Dict space
                   if isinstance(observations[0], dict) else np.stack(observations))
        buffers.append(EpisodeBuffer(seed=recorded, observations=stacked, actions=np.array(actions),
                                     rewards=np.array(rewards), terminations=np.array(terminations),
                                     truncations=np.array(truncations)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari: no author / code permalink given
        minari.create_dataset_from_buffers(dataset_id, buffers, env=env, data_format=data_format, **storage)
    env.close()


# The source of a user's own env module (an 8-cell dot world with Discrete actions): tests write it next to them.
DOT_ENV_MODULE = '''
import gymnasium as gym
import numpy as np


class Dot(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Discrete(8)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = int(self.np_random.integers(0, 8))
        return self.x, {}

    def step(self, action):
        self.x = (self.x + int(action)) % 8
        return self.x, 1.0, False, False, {}

    def render(self):
        frame = np.zeros((16, 16, 3), np.uint8)
        frame[:, 2 * self.x: 2 * self.x + 2] = 255
        return frame
'''
