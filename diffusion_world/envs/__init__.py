"""Learned environments: a world model served as a Gymnasium env, a Gymnasium vector env and an SB3 ``VecEnv``.

All three run on :class:`~diffusion_world.envs.core.ImaginationCore` (N rollouts in one denoiser batch). The SB3
adapter is imported lazily: ``import diffusion_world.envs`` does not import stable-baselines3.
"""

from __future__ import annotations

from typing import Any

from diffusion_world.envs.core import Context, ImaginationCore, InvalidActionError, ResetNeededError
from diffusion_world.envs.vector_env import DiffusionWorldVectorEnv
from diffusion_world.envs.world_env import ChannelFrameStack, DiffusionWorldEnv, make_real_env

__all__ = [
    "ChannelFrameStack",
    "Context",
    "DiffusionWorldEnv",
    "DiffusionWorldSB3VecEnv",
    "DiffusionWorldVectorEnv",
    "ImaginationCore",
    "InvalidActionError",
    "ResetNeededError",
    "make_real_env",
    "make_sb3_vec_env",
]


def __getattr__(name: str) -> Any:
    if name in ("DiffusionWorldSB3VecEnv", "make_sb3_vec_env"):
        from diffusion_world.envs import sb3_vec_env

        return getattr(sb3_vec_env, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
