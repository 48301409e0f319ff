"""Gymnasium registrations, done when ``diffusion_world`` is imported.

Entry points are strings so that registering imports nothing heavy.
"""

import gymnasium as gym

PIXEL_ENV_ID = "diffusion_world/Pixels-v0"


def register_envs() -> None:
    if PIXEL_ENV_ID not in gym.registry:
        gym.register(id=PIXEL_ENV_ID, entry_point="diffusion_world.data.pixel_env:PixelEnv")
