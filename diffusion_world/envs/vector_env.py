"""``gym.make_vec("DiffusionWorld-v0", num_envs=N)``: N imagined envs in one denoiser batch.

Each sub-env has its own ``np.random.Generator`` (seeded ``seed + i`` by ``reset(seed=seed)``, like Gymnasium's
own vector envs) and resets on its own: a row's reset warms up that row only. Sub-env i therefore produces the
frames a single :class:`DiffusionWorldEnv` seeded ``seed + i`` produces for the same actions, up to rare ±1
rounding flips from batched arithmetic.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from diffusion_world.checkpoint import WorldModel
from diffusion_world.envs.core import (
    Context,
    RecordedSpec,
    ResetNeededError,
    make_core,
    positive_int,
    warn_unknown_options,
)
from diffusion_world.errors import UserError


class DiffusionWorldVectorEnv(RecordedSpec, VectorEnv):
    """N imagined envs of one world model, stepped as one batch.

    ``autoreset_mode``: ``"NextStep"`` (Gymnasium's default: the step after an episode ends resets that
    sub-env and ignores its action), ``"SameStep"`` (the step that ends an episode already returns the new
    episode's first observation; the last one is in ``infos["final_obs"]``) or ``"Disabled"`` (reset ended
    sub-envs yourself with ``reset(options={"reset_mask": mask})``). ``max_episode_steps``, as Gymnasium's vector
    envs take it (``gym.make_vec`` passes a spec's): episodes are truncated at the lesser of it and ``horizon``.
    Other kwargs: those of :class:`~diffusion_world.envs.world_env.DiffusionWorldEnv`.

    Example::

        envs = gym.make_vec("DiffusionWorld-v0", num_envs=16, world_model="runs/cartpole/checkpoint.pt")
        observations, infos = envs.reset(seed=0)  # (16, 64, 64, 3) uint8
        observations, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30,
                                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, world_model: str | os.PathLike | WorldModel = "cartpole",
                 autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP, render_mode: str | None = None,
                 max_episode_steps: int | None = None, **kwargs: Any) -> None:
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"DiffusionWorldVectorEnv supports render_mode None or 'rgb_array', got {render_mode!r}")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError as e:
            modes = [m.value for m in AutoresetMode]
            raise UserError(f"autoreset_mode must be one of {modes}, got {autoreset_mode!r}") from e
        self.core = make_core("DiffusionWorldVectorEnv", world_model, num_envs, kwargs)
        if max_episode_steps is not None:
            self.core.horizon = min(self.core.horizon, positive_int("max_episode_steps", max_episode_steps))
        self.num_envs = self.core.num_envs
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode,
                         "render_fps": self.core.render_fps}
        self.single_observation_space = self.core.observation_space
        self.single_action_space = self.core.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)  # NEXT_STEP: rows whose episode just ended

    def _contexts(self, options: dict[str, Any] | None, count: int) -> list[Context | None]:
        """``options["context"]``: one context (L, H, W, 3) for every reset sub-env, or one each (n, L, H, W, 3)."""
        if not options or options.get("context") is None:
            warn_unknown_options(options)  # else context_from_options does
            return [None] * count
        frames = np.asarray(options["context"])
        if frames.ndim == 5:
            if len(frames) != count:
                raise UserError(f"options['context'] holds {len(frames)} contexts for {count} sub-envs to reset")
            actions = options.get("actions")
            return [self.core.context_from_options({**options, "context": f,
                                                    "actions": None if actions is None else actions[j]})
                    for j, f in enumerate(frames)]
        return [self.core.context_from_options(options)] * count

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-envs, or those in ``options["reset_mask"]``; ``seed=s`` seeds sub-env i with s + i."""
        N = self.num_envs
        if seed is None or isinstance(seed, int | np.integer):
            super().reset(seed=None if seed is None else int(seed))
            seeds: list[int | None] = [None if seed is None else int(seed) + i for i in range(N)]
        else:
            seeds = list(seed)
            if len(seeds) != N:
                raise UserError(f"reset got {len(seeds)} seeds for {N} sub-envs")
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(N, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.shape != (N,) or mask.dtype != np.bool_ or not mask.any():
                raise UserError(f"options['reset_mask'] must be a bool array of shape ({N},) with a True entry")
        rows = np.flatnonzero(mask)
        contexts = self._contexts(options, len(rows))
        self.core.reset_rows(rows, [self.core.row_rng(i, seeds[i]) for i in rows], contexts)
        self._autoreset[rows] = False
        return self.core.observations(), {}  # sub-envs not reset keep their current observation

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        core = self.core
        if core.needs_reset.any():
            raise ResetNeededError("DiffusionWorldVectorEnv: call reset() before step()")
        if self.autoreset_mode == AutoresetMode.DISABLED and self._autoreset.any():
            raise ResetNeededError(f"sub-envs {np.flatnonzero(self._autoreset).tolist()} ended: reset them with "
                                   "reset(options={'reset_mask': mask}) (autoreset_mode='Disabled')")
        actions = core.check_actions(actions)
        resetting = self._autoreset.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else None
        N = self.num_envs
        rewards = np.zeros(N, dtype=np.float64)
        terminations = np.zeros(N, dtype=bool)
        truncations = np.zeros(N, dtype=bool)
        infos: dict[str, Any] = {}
        if resetting is None or not resetting.all():
            result = core.step(actions, active=None if resetting is None else ~resetting)
            rewards, terminations, truncations = result.rewards, result.terminated, result.truncated
        if resetting is not None:  # NEXT_STEP: the sub-envs that ended last step start over, action ignored
            rows = np.flatnonzero(resetting)
            core.reset_rows(rows, [self.core.row_rng(i, None) for i in rows])
            rewards[rows], terminations[rows], truncations[rows] = 0.0, False, False
        done = terminations | truncations
        observations = core.observations()
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            rows = np.flatnonzero(done)
            final_obs = np.full(N, None, dtype=object)
            for i in rows:
                final_obs[i] = observations[i].copy()
            infos = {"final_obs": final_obs, "_final_obs": done.copy(), "final_info": {}, "_final_info": done.copy()}
            core.reset_rows(rows, [self.core.row_rng(i, None) for i in rows])
            observations[rows] = core.observations(rows)
        elif self.autoreset_mode != AutoresetMode.SAME_STEP:
            self._autoreset = done
        return observations, rewards, terminations, truncations, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """The newest frame of every sub-env with ``render_mode="rgb_array"``."""
        if self.core.needs_reset.any():  # before the render mode, as a Gymnasium env's order enforcing
            raise ResetNeededError("DiffusionWorldVectorEnv: call reset() before render()")
        if self.render_mode is None:
            return None
        return tuple(self.core.last_frames())

    # SyncVectorEnv's per-sub-env access, for code written against it. The N envs are rows of one object:
    # attributes are shared, and a method acts on all rows at once.

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name``, once per sub-env (the sub-envs share it); but each sub-env's own
        ``np_random_seed`` and ``np_random``, as a ``SyncVectorEnv``'s sub-envs give them (sub-env i of
        ``reset(seed=s)``: s + i)."""
        if name in ("np_random_seed", "np_random"):
            generators = tuple(self.core.row_rng(i, None) for i in range(self.num_envs))  # seeded on first use
            return tuple(self.core.row_seeds) if name == "np_random_seed" else generators
        value = getattr(self, name)
        return tuple(value for _ in range(self.num_envs))

    def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` to ``values``: one value, or a list with one (the same) per sub-env; ``np_random`` and
        ``np_random_seed``: each sub-env's own (one for all, or one each)."""
        if name in ("np_random", "np_random_seed"):
            self.core.set_row_rngs(name, values)
            return
        if isinstance(values, list | tuple):
            if len(values) != self.num_envs or any(v is not values[0] and v != values[0] for v in values):
                raise UserError(f"set_attr({name!r}): the sub-envs share their attributes: give one value, or "
                                f"{self.num_envs} equal ones")
            values = values[0]
        setattr(self, name, values)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``render``: each sub-env's newest frame (None each without ``render_mode="rgb_array"``, as a sub-env of
        ``SyncVectorEnv`` renders). Any other method is this vector env's own, which acts on all sub-envs at
        once: it runs once and its result is given for each sub-env; an attribute is read as :meth:`get_attr`
        reads it."""
        if name == "render":
            frames = self.render()
            return tuple(None for _ in range(self.num_envs)) if frames is None else frames
        value = getattr(self, name)
        result = value(*args, **kwargs) if callable(value) else value
        return tuple(result for _ in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        self.core.needs_reset[:] = True
