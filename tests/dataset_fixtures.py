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
