"""Gymnasium registrations, done when ``diffusion_world`` is imported.

Entry points are strings so that registering imports nothing heavy.
"""

import gymnasium as gym

PIXEL_ENV_ID = "diffusion_world/Pixels-v0"
WORLD_ENV_ID = "DiffusionWorld-v0"
CUE_MEMORY_ENV_ID = "diffusion_world/CueMemory-v0"


def register_envs() -> None:
    if PIXEL_ENV_ID not in gym.registry:
        gym.register(id=PIXEL_ENV_ID, entry_point="diffusion_world.data.pixel_env:PixelEnv")
    if WORLD_ENV_ID not in gym.registry:
        # No max_episode_steps: the env truncates itself at its `horizon` kwarg.
        gym.register(id=WORLD_ENV_ID, entry_point="diffusion_world.envs.world_env:DiffusionWorldEnv",
                     vector_entry_point="diffusion_world.envs.vector_env:DiffusionWorldVectorEnv")
    if CUE_MEMORY_ENV_ID not in gym.registry:  # the memory benchmark's real env (a cue to recall n steps later)
        gym.register(id=CUE_MEMORY_ENV_ID, entry_point="diffusion_world.data.cue_memory_env:CueMemoryEnv")
