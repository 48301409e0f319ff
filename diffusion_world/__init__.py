"""diffusion_world: learned pixel world models served as Gymnasium environments.

Offline trajectories (Minari datasets) -> an action-conditioned causal video diffusion model trained with
DART (a clean and a noised copy of each window in one pass) -> ``gym.make("DiffusionWorld-v0")``.
"""

__version__ = "0.1.0"

from typing import Any  # noqa: E402

from diffusion_world.errors import DiffusionWorldError, UserError  # noqa: E402
from diffusion_world.registration import one_thread_after_fork, register_envs  # noqa: E402

register_envs()
one_thread_after_fork()

__all__ = ["__version__", "DiffusionWorldError", "UserError", "make_sb3_vec_env", "register_envs"]


def __getattr__(name: str) -> Any:
    # Lazy: `import diffusion_world` must not import torch or stable-baselines3.
    if name == "make_sb3_vec_env":
        from diffusion_world.envs.sb3_vec_env import make_sb3_vec_env

        return make_sb3_vec_env
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
