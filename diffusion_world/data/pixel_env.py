"""Any Gymnasium env as uint8 pixel observations: the one source of frames for collection and evaluation.

``PixelEnv`` wraps ``gym.make(env_id, render_mode="rgb_array")`` and returns ``render()`` resized with OpenCV
``INTER_AREA`` as its observation. It is registered as ``diffusion_world/Pixels-v0`` with JSON-serialisable
kwargs only, so a Minari dataset collected with it can rebuild it with ``dataset.recover_environment()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, SupportsFloat

import cv2
import gymnasium as gym
import numpy as np

from diffusion_world.errors import UserError
from diffusion_world.registration import IDS_AT_IMPORT, PIXEL_ENV_ID

MIN_FRAME_SIZE = 8


def register_ale_if_needed(env_id: str) -> None:
    """Atari ids only exist once ale-py registered them; import it lazily (it is an optional extra). Also for an
    id nothing registered where ale-py is installed: its legacy ids (``BreakoutNoFrameskip-v4``, as SB3 and the
    rl-zoo name them) have no ``ALE/`` prefix."""
    if not env_id.startswith("ALE/"):
        if ":" not in env_id and env_id not in gym.registry and importlib.util.find_spec("ale_py") is not None:
            try:
                import ale_py
            except ImportError:  # a broken ale-py: the id is then unknown, as without it
                return
            gym.register_envs(ale_py)
        return
    try:
        import ale_py
    except ImportError as e:
        raise UserError(f"env id {env_id!r} needs ale-py: pip install 'diffusion-world[atari]'") from e
    gym.register_envs(ale_py)


def registered_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """``gym.spec(env_id)``, also for ``"module:Env-vN"`` ids (which ``gym.make`` takes, and ``gym.spec`` does not):
    the module is imported, as ``gym.make`` would, to register its envs."""
    register_ale_if_needed(env_id)
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        importlib.import_module(module)
    return gym.spec(env_id)


def recorded_env_id(env_spec: dict[str, Any] | None) -> str | None:
    """The env a dataset's env spec (as the frame cache keeps it) was recorded in: the env a pixel env rendered,
    or the spec's own id; None without a spec."""
    if not env_spec:
        return None
    env_id = env_spec.get("env_id") if env_spec.get("id") == PIXEL_ENV_ID else env_spec.get("id")
    return env_id if isinstance(env_id, str) else None


def bare_env_id(env_id: str | None) -> str | None:
    """An env id without the module that registers it: ``"module:Env-v0"``, as ``gym.make`` takes it, is
    ``"Env-v0"``."""
    return env_id.split(":", 1)[1] if env_id and ":" in env_id else env_id


def recorded_env_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    """How the envs that two datasets' env specs (as the frame cache keeps them) were recorded in differ: the env
    (a pixel env's rendered one, or the spec's own id: other tools' datasets have no ``env_id``; with or without
    the module that registers it) or, where both are pixel envs, their frame skip, which changes the dynamics
    (another tool's dataset skips frames by means this does not compare: wrappers, the env's own kwargs); None
    where they agree."""
    a, b = a or {}, b or {}
    if bare_env_id(recorded_env_id(a)) != bare_env_id(recorded_env_id(b)):
        return f"env {recorded_env_id(a)!r} vs {recorded_env_id(b)!r}"
    if a.get("id") == b.get("id") == PIXEL_ENV_ID and a.get("frame_skip", 1) != b.get("frame_skip", 1):
        return f"frame_skip {a.get('frame_skip', 1)} vs {b.get('frame_skip', 1)}"
    return None


def recorded_render_fps(env_spec: dict[str, Any] | None, default: int = 30) -> int:
    """The frame rate of the env a dataset's env spec names, without making it: its class's
    ``metadata["render_fps"]``, divided by the pixel env's frame skip (as :class:`PixelEnv` does); ``default`` where
    the spec or the class does not tell (an env made by a function, an env not installed)."""
    if not env_spec or not isinstance(env_spec.get("id"), str):
        return default
    env_id, frame_skip = env_spec["id"], 1
    if env_id == PIXEL_ENV_ID:
        env_id, frame_skip = env_spec.get("env_id"), env_spec.get("frame_skip", 1)
    try:
        entry_point = (registered_spec(env_id).entry_point if ":" in env_id or env_id in gym.registry
                       or not env_spec.get("entry_point") else env_spec["entry_point"])
        creator = gym.envs.registration.load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    except (gym.error.Error, ImportError, AttributeError, TypeError, ValueError):  # UserError is a ValueError
        return default
    fps = getattr(creator, "metadata", {}).get("render_fps")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
        return default
    return max(1, round(fps / max(1, int(frame_skip))))


def recorded_time_limit(env_spec: dict[str, Any] | None) -> int | None:
    """The steps after which the env a dataset's env spec names truncates its episodes, without making it: the
    spec's ``max_episode_steps``, else the registered one; through the pixel env, its inner env's limit in the
    pixel env's steps (each repeating the action ``frame_skip`` times). None where neither tells."""
    if not env_spec or not isinstance(env_spec.get("id"), str):
        return None

    def limit(env_id: Any, given: Any) -> int | None:
        if given is None:
            try:
                given = registered_spec(env_id).max_episode_steps
            except (gym.error.Error, ImportError, TypeError, ValueError):  # UserError is a ValueError
                return None
        return int(given) if isinstance(given, int | np.integer) and not isinstance(given, bool) and given > 0 \
            else None

    outer = limit(env_spec["id"], env_spec.get("max_episode_steps"))
    if env_spec["id"] != PIXEL_ENV_ID:
        return outer
    inner = limit(env_spec.get("env_id"), (env_spec.get("env_kwargs") or {}).get("max_episode_steps"))
    frame_skip = env_spec.get("frame_skip", 1)
    frame_skip = int(frame_skip) if isinstance(frame_skip, int | np.integer) and frame_skip > 0 else 1
    limits = [n for n in (outer, None if inner is None else -(-inner // frame_skip)) if n is not None]
    return min(limits) if limits else None


def record_time_limit(env: gym.Env) -> gym.Env:
    """Give the spec of a pixel env from :func:`make_pixel_env` (before anything reads it) the steps after which
    its inner env truncates, in pixel-env steps (each repeating the action ``frame_skip`` times): a dataset
    recorded with it then states its time limit where the registry cannot tell it later (an env of the user's
    own module, ``"module:Env-vN"``, registered only once that module is imported; a ``TimeLimit`` among the
    ``wrappers``), and imagined episodes last as long as real ones (:func:`recorded_time_limit`)."""
    pixel = env.unwrapped
    assert isinstance(pixel, PixelEnv), "record_time_limit needs a PixelEnv (make_pixel_env)"
    limit = pixel.inner.spec.max_episode_steps if pixel.inner.spec is not None else None
    if limit and pixel.spec is not None and pixel.spec.max_episode_steps is None:
        pixel.spec = dataclasses.replace(pixel.spec, max_episode_steps=-(-int(limit) // pixel.frame_skip))
    return env


def own_env_registration(env_id: str) -> tuple[str | None, dict[str, Any]]:
    """The entry point (``"module:name"``) and registered kwargs to record with a dataset of ``env_id`` where a
    fresh process may not know the id: an env registered in this process by the user's code, or by a package
    imported here (registered kwargs are part of the env: MiniGrid's sizes, LunarLander's ``continuous``).
    ``(None, {})`` for Gymnasium's own envs (registered when it is imported, from its own package), ALE's and
    ``"module:Env-vN"`` ids (``gym.make`` imports the module); also, with a warning, where the env cannot be made
    again elsewhere (a class of ``__main__`` or a local one, kwargs that are not JSON)."""
    if ":" in env_id or env_id.startswith("ALE/") or env_id not in gym.registry:
        return None, {}
    spec = gym.registry[env_id]
    entry_point: Any = spec.entry_point
    if not isinstance(entry_point, str):  # a class or function: "module:name" where that module has it
        module, name = getattr(entry_point, "__module__", None), getattr(entry_point, "__qualname__", None)
        loaded = sys.modules.get(module) if isinstance(module, str) and module != "__main__" else None
        entry_point = (f"{module}:{name}" if loaded is not None and isinstance(name, str)
                       and getattr(loaded, name, None) is spec.entry_point else None)
    package = None if entry_point is None else entry_point.split(".")[0].split(":")[0]
    kwargs = dict(spec.kwargs or {})
    if (package == "diffusion_world" or package == "gymnasium" and env_id in IDS_AT_IMPORT
            or package == "ale_py" and _registered_by_ale(env_id, kwargs)):
        return None, {}  # ours, Gymnasium's own or ALE's (registered where needed, see register_ale_if_needed)
    try:
        json.dumps(kwargs)
    except TypeError:
        entry_point = None
    if entry_point is None:
        warnings.warn(f"{env_id!r} is registered here with the entry point {spec.entry_point!r} and kwargs "
                      f"{kwargs}, which another process cannot make again: the dataset records only the id, so its "
                      "real env (benchmarks, make_real_env) can be made only where the same registration runs first. "
                      "Register a 'module:Class' string (or a class of an importable module) with JSON kwargs, or "
                      "name the env 'module:Env-vN'", stacklevel=3)
        return None, {}
    return entry_point, kwargs


def _registered_by_ale(env_id: str, kwargs: dict[str, Any]) -> bool:
    """Whether ale-py registers ``env_id`` (a legacy id such as ``SpaceInvadersNoFrameskip-v4`` or ``Pong-ram-v0``,
    its game in its kwargs), not a variant the user registered with ALE's entry point."""
    match = re.fullmatch(r"([A-Za-z]+?)(-ram)?(NoFrameskip|Deterministic)?-v[045]", env_id)
    return match is not None and match.group(1).lower() == str(kwargs.get("game", "")).replace("_", "").lower()


def make_env(env_id: str, kwargs: dict[str, Any], entry_point: str | None = None,
             registered_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make(env_id, **kwargs)``, gymnasium's errors turned into one-line UserErrors. ``entry_point`` (as a
    dataset's env spec records it, ``"module:Class"``) registers ``env_id`` first, with ``registered_kwargs``,
    where nothing registered it: an env of the user's own module, whose dataset was recorded where that module had
    registered it (before ale-py is looked for: its legacy ids, e.g. ``Pong-v0``, must not take the id's place)."""
    if entry_point is not None and ":" not in env_id and env_id not in gym.registry:
        gym.register(env_id, entry_point=entry_point, kwargs=dict(registered_kwargs or {}))
    register_ale_if_needed(env_id)
    # SDL (pygame's renderer: classic control, Box2D) otherwise takes over SIGINT and SIGTERM at the first render,
    # turning them into quit events that nothing reads: `scancel` or a job's time limit no longer stopped collect
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # Headless: pygame renderers (classic control, Box2D) would print an SDL display error on stderr, and
        # MuJoCo's default (GLFW) needs a display: without one its first render() fails with "an OpenGL platform
        # library has not been loaded". EGL renders off-screen (Gymnasium reads MUJOCO_GL when it makes a renderer).
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("MUJOCO_GL", "egl")
    # "module:Env-vN" ids register themselves when gym.make imports the module.
    if ":" not in env_id and env_id not in gym.registry:
        # case-insensitive, and only genuinely close ids (the default cutoff 0.6 offers 'Hopper-v5' for 'Nope-v9')
        by_lower = {name.lower(): name for name in gym.registry}
        close = difflib.get_close_matches(env_id.lower(), list(by_lower), n=1, cutoff=0.8)
        hint = (f"; did you mean {by_lower[close[0]]!r}?" if close else
                " (an env another package registers: import that package first, or name the env "
                "'module:EnvName-vN')")
        raise UserError(f"unknown Gymnasium env id {env_id!r}{hint}")
    try:
        with warnings.catch_warnings():
            # gymnasium only warns when render_mode is unsupported; PixelEnv checks it itself.
            warnings.filterwarnings("ignore", message=".*render_mode.*")
            return gym.make(env_id, **kwargs)
    except ModuleNotFoundError as e:  # a "module:Env-vN" id whose module does not exist
        raise UserError(f"cannot make env {env_id!r}: {str(e).splitlines()[0]}") from e
    except gym.error.DependencyNotInstalled as e:
        raise UserError(f"env {env_id!r} needs a missing dependency: {str(e).splitlines()[0]}") from e
    except gym.error.Error as e:
        raise UserError(f"cannot make env {env_id!r}: {str(e).splitlines()[0]}") from e
    except TypeError as e:
        if "unexpected keyword argument 'render_mode'" in str(e):
            raise UserError(
                f"env {env_id!r} cannot render 'rgb_array' frames (no render_mode argument)"
            ) from e
        raise UserError(f"cannot make env {env_id!r} with kwargs {kwargs}: {str(e).splitlines()[0]}") from e


def _make_inner_env(env_id: str, env_kwargs: dict[str, Any], entry_point: str | None = None,
                    registered_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make(env_id, render_mode="rgb_array")``, gymnasium's errors turned into one-line UserErrors."""
    if "render_mode" in env_kwargs:
        raise UserError("env_kwargs must not set render_mode: PixelEnv always renders 'rgb_array'")
    env = make_env(env_id, {"render_mode": "rgb_array", **env_kwargs}, entry_point, registered_kwargs)
    render_modes = env.unwrapped.metadata.get("render_modes") or []
    if "rgb_array" not in render_modes or env.unwrapped.render_mode != "rgb_array":
        env.close()
        raise UserError(
            f"env {env_id!r} cannot render 'rgb_array' frames (render_modes: {list(render_modes)})"
        )
    return env


def recorded_wrappers(spec: Any) -> list[dict[str, Any]]:
    """The wrappers a Gymnasium ``EnvSpec`` records beyond ``gym.make``'s own (``additional_wrappers``: those
    applied to the made env, e.g. by the code that recorded a dataset), as :func:`wrap` takes them."""
    return [{"entry_point": w.entry_point, "kwargs": dict(w.kwargs or {})}
            for w in getattr(spec, "additional_wrappers", None) or ()]


def wrap(env: gym.Env, wrappers: list[dict[str, Any]]) -> gym.Env:
    """``env`` inside each wrapper of ``wrappers`` (entry point and JSON kwargs), innermost first. A kwarg that
    JSON turned from a tuple into a list is given as a tuple again (``ResizeObservation`` takes only tuples)."""
    from gymnasium.envs.registration import load_env_creator

    for w in wrappers:
        if not isinstance(w, dict) or not isinstance(w.get("entry_point"), str):
            raise UserError(f"a wrapper is {{'entry_point': 'module:Class', 'kwargs': {{...}}}}, got {w!r}")
        try:
            wrapper: Callable[..., gym.Env] = load_env_creator(w["entry_point"])  # type: ignore[assignment]
        except (ImportError, AttributeError, ValueError) as e:
            raise UserError(f"cannot load wrapper {w['entry_point']!r}: {e}") from e
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in (w.get("kwargs") or {}).items()}
        try:
            env = wrapper(env, **kwargs)
        except (TypeError, ValueError, AssertionError, gym.error.Error) as e:
            raise UserError(f"cannot wrap the env in {w['entry_point']!r} with kwargs {kwargs}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return env


def resize_frame(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB(A) or grey (``(H, W)`` or ``(H, W, 1)``) image to a ``(size, size, 3)`` uint8 frame with area
    averaging.

    >>> resize_frame(np.zeros((400, 600, 3), np.uint8), 64).shape
    (64, 64, 3)
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    # INTER_AREA averages every source pixel (anti-aliased); other modes drop thin lines like CartPole's pole.
    frame = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame, dtype=np.uint8)


class PixelEnv(gym.Env[np.ndarray, Any]):
    """A Gymnasium env observed through its ``rgb_array`` renders, resized to ``size x size`` uint8 frames.

    The inner env's own observation is passed on in ``info["state"]`` (a state-based policy can then drive
    pixel collection). ``wrappers`` (``[{"entry_point": "module:Class", "kwargs": {...}}]``, as a Minari dataset
    records ``env_spec.additional_wrappers``) wrap the inner env in that order, e.g. an action rescaling. With
    ``frame_skip=K`` each action is repeated K times, rewards are summed and repetition stops at termination or
    truncation. Episode length limits are the inner env's. ``entry_point`` (``"module:Class"``) registers
    ``env_id`` where nothing registered it, with ``registered_kwargs`` (:func:`make_env`), so that the spec of a
    dataset rendered from a user's env makes that env again wherever its module can be imported.

    Example:
        >>> env = gym.make("diffusion_world/Pixels-v0", env_id="CartPole-v1", size=64)
        >>> frame, info = env.reset(seed=0)
        >>> frame.shape, frame.dtype, info["state"].shape
        ((64, 64, 3), dtype('uint8'), (4,))
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        env_id: str,
        size: int = 64,
        frame_skip: int = 1,
        env_kwargs: dict[str, Any] | None = None,
        render_mode: str | None = "rgb_array",
        wrappers: list[dict[str, Any]] | None = None,
        entry_point: str | None = None,
        registered_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(env_id, str) or not env_id:
            raise UserError(f"env_id must be a Gymnasium env id string, got {env_id!r}")
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < MIN_FRAME_SIZE:
            raise UserError(f"frame size must be an integer >= {MIN_FRAME_SIZE}, got {size!r}")
        if isinstance(frame_skip, bool) or not isinstance(frame_skip, int | np.integer) or frame_skip < 1:
            raise UserError(f"frame_skip must be an integer >= 1, got {frame_skip!r}")
        if env_kwargs is not None and not isinstance(env_kwargs, dict):
            raise UserError(f"env_kwargs must be a dict, got {type(env_kwargs).__name__}")
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"PixelEnv only supports render_mode 'rgb_array', got {render_mode!r}")
        self.env_id = env_id
        self.size = int(size)
        self.frame_skip = int(frame_skip)
        self.env_kwargs = dict(env_kwargs or {})
        self.render_mode = render_mode
        self.wrappers = [dict(w) for w in wrappers or []]
        self.inner = wrap(_make_inner_env(env_id, self.env_kwargs, entry_point, registered_kwargs), self.wrappers)
        self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)
        self.action_space = self.inner.action_space
        fps = self.inner.unwrapped.metadata.get("render_fps") or 30
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": max(1, round(fps / self.frame_skip))}
        self._frame: np.ndarray | None = None

    def _observe(self, observation: Any = None) -> np.ndarray:
        image = self._rendered_into(observation)
        if image is None:
            image = self.inner.render()
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
            raise UserError(f"env {self.env_id!r} did not return an rgb_array frame from render()")
        self._frame = resize_frame(image, self.size)
        return self._frame

    def _rendered_into(self, observation: Any) -> Any:
        """The frame that the inner env's outermost wrapper, ``AddRenderObservation`` (a dataset recorded through
        it), rendered into ``observation`` this step; None where there is none. Rendering once more would render
        twice per step, which changes what some envs draw next (LunarLander's exhaust particles fade at every
        ``render()``): the replayed frames would then differ from the recorded ones."""
        if observation is None or not isinstance(self.inner, gym.wrappers.AddRenderObservation):
            return None
        kwargs = getattr(self.inner, "_saved_kwargs", {})
        if kwargs.get("render_only", True):
            return observation
        return observation.get(kwargs.get("render_key", "pixels")) if isinstance(observation, dict) else None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        state, info = self.inner.reset(seed=seed, options=options)
        info = dict(info)
        info["state"] = state
        return self._observe(state), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        total_reward = 0.0
        terminated = truncated = False
        for _ in range(self.frame_skip):
            state, reward, terminated, truncated, info = self.inner.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        info = dict(info)
        info["state"] = state
        return self._observe(state), total_reward, bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        """The current observation frame (``None`` before the first reset)."""
        return None if self._frame is None else self._frame.copy()

    def close(self) -> None:
        if hasattr(self, "inner"):
            self.inner.close()
        super().close()

    # Atari tooling (SB3's FireResetEnv, NoopResetEnv, EpisodicLifeEnv) reads these off ``env.unwrapped``, which is
    # this env: the inner ALE env's, where it has them
    def get_action_meanings(self) -> list[str]:
        inner = self.inner.unwrapped
        if not hasattr(inner, "get_action_meanings"):
            raise AttributeError(f"{self.env_id} has no action meanings (get_action_meanings is an ALE env's)")
        return list(inner.get_action_meanings())

    @property
    def ale(self) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None or not hasattr(inner.unwrapped, "ale"):
            raise AttributeError(f"{self.__dict__.get('env_id')} is not an ALE env: no ale interface")
        return inner.unwrapped.ale


class ResizeFrames(gym.ObservationWrapper[np.ndarray, Any, np.ndarray], gym.utils.RecordConstructorArgs):
    """An env with uint8 image observations (grey, RGB or RGBA) seen as ``(size, size, 3)`` frames resized by
    :func:`resize_frame`: the real env of a world model trained on a dataset's frames resized the same way
    (``train --frame-size``)."""

    def __init__(self, env: gym.Env, size: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, size=size)  # env.spec can remake it
        gym.ObservationWrapper.__init__(self, env)
        self.size = int(size)
        self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return resize_frame(np.asarray(observation), self.size)


def make_pixel_env(env_id: str, size: int = 64, frame_skip: int = 1, wrappers: list[dict[str, Any]] | None = None,
                   entry_point: str | None = None, registered_kwargs: dict[str, Any] | None = None,
                   **env_kwargs: Any) -> gym.Env:
    """``gym.make`` the registered pixel env (the way every diffusion_world component should build one);
    ``wrappers``, ``entry_point`` and ``registered_kwargs`` (register ``env_id`` where nothing did, see
    :func:`make_env`) as :class:`PixelEnv` takes them.

    Example:
        >>> env = make_pixel_env("LunarLander-v3", size=64, frame_skip=2, continuous=True)
        >>> env.action_space.shape
        (2,)
    """
    kwargs: dict[str, Any] = {"env_id": env_id, "size": size, "frame_skip": frame_skip}
    if env_kwargs:
        kwargs["env_kwargs"] = env_kwargs
    if wrappers:
        kwargs["wrappers"] = wrappers
    if entry_point:
        kwargs["entry_point"] = entry_point
    if registered_kwargs:
        kwargs["registered_kwargs"] = registered_kwargs
    return gym.make(PIXEL_ENV_ID, **kwargs)
