"""An SB3 ``VecEnv`` over the imagination core: train stable-baselines3 agents entirely in imagination.

SB3 2.x does not accept Gymnasium vector envs, so this is a ``stable_baselines3.common.vec_env.VecEnv``: one
denoiser batch for all N envs, same-step autoreset with ``infos[i]["terminal_observation"]`` and
``infos[i]["TimeLimit.truncated"]``, as SB3 expects. Observations are channel-last uint8 frames: ``CnnPolicy``
transposes them itself (``VecTransposeImage``). SB3's default ``NatureCNN`` needs frames of at least 36x36;
for smaller frames use ``policy_kwargs=small_frames_policy_kwargs()`` (:class:`SmallFramesCNN`) or ``MlpPolicy``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from diffusion_world.checkpoint import WorldModel
from diffusion_world.envs.core import ResetNeededError, make_core
from diffusion_world.errors import UserError


class DiffusionWorldSB3VecEnv(VecEnv):
    """N imagined envs as an SB3 ``VecEnv``. Kwargs: those of :class:`~diffusion_world.envs.DiffusionWorldEnv`.

    ``seed(s)`` (what ``PPO(..., seed=s)`` calls) seeds env i with s + i at the next ``reset()``, as in SB3's own
    vec envs; ``set_options({"context": ...})`` gives the next reset a context.

    Example::

        venv = DiffusionWorldSB3VecEnv("runs/cartpole/checkpoint.pt", num_envs=16)
        PPO("CnnPolicy", venv).learn(100_000)
    """

    def __init__(self, world_model: str | os.PathLike | WorldModel = "cartpole", num_envs: int = 1,
                 render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"DiffusionWorldSB3VecEnv supports render_mode None or 'rgb_array', got {render_mode!r}")
        self.core = make_core("DiffusionWorldSB3VecEnv", world_model, num_envs, kwargs)
        self.render_mode = render_mode
        self._actions: np.ndarray | None = None
        super().__init__(self.core.num_envs, self.core.observation_space, self.core.action_space)
        self.metadata: dict[str, Any] = {**self.metadata, "render_fps": self.core.render_fps}

    def reset(self) -> VecEnvObs:
        rows = range(self.num_envs)
        contexts = [self.core.context_from_options(self._options[i]) for i in rows]
        self.core.reset_rows(rows, [self.core.row_rng(i, self._seeds[i]) for i in rows], contexts)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in rows]
        self._actions = None
        return self.core.observations()

    def step_async(self, actions: np.ndarray) -> None:
        if self.core.needs_reset.any():
            raise ResetNeededError("DiffusionWorldSB3VecEnv: call reset() before step()")
        # SB3 hands Discrete actions as (N,) or (N, 1)
        space = self.core.action_space
        actions = np.asarray(actions)
        if isinstance(space, gym.spaces.Discrete) and actions.shape == (self.num_envs, 1):
            actions = actions[:, 0]
        self._actions = self.core.check_actions(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise UserError("step_wait() without a step_async() before it")
        result = self.core.step(self._actions)
        self._actions = None
        observations = self.core.observations()
        dones = result.terminated | result.truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        rows = np.flatnonzero(dones)
        for i in rows:
            infos[i]["terminal_observation"] = observations[i].copy()
            infos[i]["TimeLimit.truncated"] = bool(result.truncated[i] and not result.terminated[i])
        if len(rows):  # same-step autoreset
            self.core.reset_rows(rows, [self.core.row_rng(i, None) for i in rows])
            observations[rows] = self.core.observations(rows)
        return observations, result.rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.core.needs_reset[:] = True

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each env's newest frame; None each (with a warning, as SB3's ``DummyVecEnv``) without
        ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            warnings.warn(f"the render mode is {self.render_mode}: images need render_mode='rgb_array'", stacklevel=2)
            return [None for _ in range(self.num_envs)]
        if self.core.needs_reset.any():
            raise ResetNeededError("DiffusionWorldSB3VecEnv: call reset() before rendering")
        return list(self.core.last_frames())

    # The N envs are rows of one object: attributes are shared by all of them.

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Each env's own ``np_random_seed`` and ``np_random`` (env i of ``seed(s)``: s + i); any other attribute
        is shared by all N."""
        if attr_name in ("np_random_seed", "np_random"):
            generators = [self.core.row_rng(i, None) for i in self._get_indices(indices)]  # seeded on first use
            return ([self.core.row_seeds[i] for i in self._get_indices(indices)] if attr_name == "np_random_seed"
                    else generators)
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set a shared attribute; ``np_random`` / ``np_random_seed``: the addressed envs' own."""
        if attr_name in ("np_random", "np_random_seed"):
            for i in self._get_indices(indices):  # the same value for each addressed env, as DummyVecEnv sets it
                self.core.set_row_rng(i, attr_name, value)
            return
        if len(list(self._get_indices(indices))) != self.num_envs:
            raise UserError("the imagined envs share their attributes: set_attr must address all of them")
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """``render`` gives each addressed env's frame. Any other method is this VecEnv's own, which acts on all N
        envs at once: it runs once (not once per env) and its result is given for each index; addressing only
        some of the envs is refused, rather than acting on the others too."""
        indices = list(self._get_indices(indices))
        if method_name == "render":
            frames = self.get_images()
            return [frames[i] for i in indices]
        if sorted(indices) != list(range(self.num_envs)):
            raise UserError(f"env_method({method_name!r}): the imagined envs are rows of one batch, whose methods "
                            f"act on all {self.num_envs} of them; it must address all of them, got indices {indices}")
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in indices]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


def make_sb3_vec_env(world_model: str | os.PathLike | WorldModel = "cartpole", num_envs: int = 1,
                     monitor: bool = True, **kwargs: Any) -> VecEnv:
    """N imagined envs for stable-baselines3, wrapped in ``VecMonitor`` (episode returns in the logs) unless
    ``monitor=False``. Kwargs: those of :class:`~diffusion_world.envs.world_env.DiffusionWorldEnv`.

    Example::

        from stable_baselines3 import PPO
        venv = diffusion_world.make_sb3_vec_env("runs/cartpole/checkpoint.pt", num_envs=16)
        PPO("CnnPolicy", venv, seed=0).learn(100_000)
    """
    venv: VecEnv = DiffusionWorldSB3VecEnv(world_model, num_envs, **kwargs)
    return VecMonitor(venv) if monitor else venv


class SmallFramesCNN(BaseFeaturesExtractor):
    """A features extractor for frames below NatureCNN's 36x36 minimum: two 3x3 stride-2 convolutions and a
    linear layer. Importable, so agents trained with it can be loaded elsewhere (``PPO.load``).

    Example::

        PPO("CnnPolicy", venv, policy_kwargs=small_frames_policy_kwargs())
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        channels = observation_space.shape[0]  # CnnPolicy hands the extractor channel-first images
        self.cnn = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten())
        with torch.no_grad():
            n = self.cnn(torch.zeros(1, *observation_space.shape)).shape[1]
        self.linear = torch.nn.Sequential(torch.nn.Linear(n, features_dim), torch.nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))


def small_frames_policy_kwargs(features_dim: int = 128) -> dict[str, Any]:
    """``policy_kwargs`` of a ``CnnPolicy`` on frames smaller than 36x36."""
    return {"features_extractor_class": SmallFramesCNN, "features_extractor_kwargs": {"features_dim": features_dim}}


def agent_frame_stack(observation_space: gym.Space, frame_size: Sequence[int]) -> int | None:
    """How many RGB frames an agent's observations stack: (H, W, 3k), or (3k, H, W) as ``CnnPolicy`` keeps them;
    None when the space is neither."""
    shape = tuple(getattr(observation_space, "shape", None) or ())
    H, W = int(frame_size[0]), int(frame_size[1])
    if len(shape) == 3 and shape[:2] == (H, W) and shape[2] % 3 == 0:
        return shape[2] // 3
    if len(shape) == 3 and shape[1:] == (H, W) and shape[0] % 3 == 0:
        return shape[0] // 3
    return None
