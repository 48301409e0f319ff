"""diffusion_world: learned pixel world models served as Gymnasium environments.

Offline trajectories (Minari datasets) -> an action-conditioned causal video diffusion model trained with
DART (a clean and a noised copy of each window in one pass) -> ``gym.make("DiffusionWorld-v0")``.
"""

__version__ = "0.1.0"

from diffusion_world.errors import DiffusionWorldError, UserError  # noqa: E402
from diffusion_world.registration import register_envs  # noqa: E402

register_envs()

__all__ = ["__version__", "DiffusionWorldError", "UserError", "register_envs"]
