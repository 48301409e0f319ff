"""Gymnasium registrations, done when ``diffusion_world`` is imported.

Entry points are strings so that registering imports nothing heavy.
"""

import os
import sys

import gymnasium as gym

# the env ids registered when diffusion_world was first imported: Gymnasium's own, and those of packages imported
# before it (a fresh process that imports diffusion_world knows Gymnasium's; see pixel_env.own_env_registration)
IDS_AT_IMPORT = frozenset(gym.registry)

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


def _one_torch_thread() -> None:
    torch = sys.modules.get("torch")  # imports nothing: a child of a process without torch has none to set
    if torch is not None:
        torch.set_num_threads(1)


_fork_hook_registered = False


def one_thread_after_fork() -> None:
    """Make processes forked from this one run torch on one thread. A parent that ran torch on several OpenMP
    threads leaves a forked child's OpenMP pool dead: its first parallel op waits forever. That is what
    ``gym.make_vec(..., vectorization_mode="async")`` does (it builds an env in the parent to read the spaces,
    then forks the workers), and SB3's ``SubprocVecEnv(start_method="fork")`` after the parent trained an agent;
    one thread per worker process is also what PyTorch's DataLoader workers use. Registered once per process,
    when ``diffusion_world`` is imported."""
    global _fork_hook_registered
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_one_torch_thread)
        _fork_hook_registered = True
