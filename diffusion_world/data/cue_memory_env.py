"""CueMemory: a pixel env that can only be predicted by remembering its first frame (the memory benchmark).

An episode of ``n + 1`` steps, ``n + 2`` frames::

    frame 0        the cue: the frame (all but the timer rows, the "patch") in one of K colours, chosen at reset
    frames 1..n    the distractor: a neutral grey frame, the cue gone; a small black square moved by the actions
    frame n+1      the cue colour reappears in the patch; the episode terminates

A timer in the bottom rows lights one pixel per remaining step (``n + 1`` at reset, 0 at the reappearance), so
*when* the colour comes back is visible in every frame: only *which* colour needs memory. A world model that sees
the cue frame through its context window can predict the last frame; one with a shorter window is at chance, 1/K.

The frames are drawn at ``frame_size x frame_size`` directly (observation and ``render()`` alike); collect them
through :class:`~diffusion_world.data.pixel_env.PixelEnv` with ``size=frame_size``, so its resize is the identity.
(The kwarg is not called ``size``: ``make_pixel_env(env_id, size=..., **env_kwargs)`` owns that name.)

Example:
    >>> env = CueMemoryEnv(n=24, num_colours=4, frame_size=16)
    >>> frame, info = env.reset(seed=0)
    >>> frame.shape, info["cue"] in range(4)
    ((16, 16, 3), True)
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from diffusion_world.errors import UserError
from diffusion_world.registration import CUE_MEMORY_ENV_ID  # registered when diffusion_world is imported

__all__ = ["CUE_MEMORY_ENV_ID", "CueMemoryEnv", "nearest_colour", "patch_box"]

# Corners of the RGB cube, the first four a regular tetrahedron (every pair differs by 205 in two channels): the
# nearest palette colour of a patch mean is unambiguous. The grey background is the cube's centre.
PALETTE = np.array([
    [230, 25, 25],  # red
    [25, 230, 25],  # green
    [25, 25, 230],  # blue
    [230, 230, 230],  # white
    [230, 230, 25],  # yellow
    [25, 230, 230],  # cyan
    [230, 25, 230],  # magenta
    [25, 25, 25],  # black
], dtype=np.uint8)
COLOUR_NAMES = ("red", "green", "blue", "white", "yellow", "cyan", "magenta", "black")
BACKGROUND = np.array([128, 128, 128], dtype=np.uint8)
AGENT_COLOUR = np.array([0, 0, 0], dtype=np.uint8)
TIMER_COLOUR = np.array([0, 0, 0], dtype=np.uint8)
TIMER_OFF_COLOUR = BACKGROUND
# Discrete actions: 0 stay, 1 up, 2 down, 3 left, 4 right (moves of the distractor square, in pixels).
ACTION_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)


def patch_box(size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the cue patch: the whole frame above the timer rows."""
    return 0, size - timer_rows(size), 0, size


def timer_rows(size: int) -> int:
    """Rows at the bottom of the frame used by the timer."""
    return max(1, size // 8)


def nearest_colour(frames: np.ndarray, num_colours: int) -> np.ndarray:
    """Index of the palette colour nearest (RGB distance) to the mean colour of the cue patch of each frame.

    frames: (..., size, size, 3) uint8 -> (...,) int64.

    >>> env = CueMemoryEnv(n=3, frame_size=16)
    >>> frame, info = env.reset(seed=1)
    >>> int(nearest_colour(frame, 4)) == info["cue"]
    True
    """
    size = frames.shape[-2]
    top, bottom, left, right = patch_box(size)
    mean = frames[..., top:bottom, left:right, :].astype(np.float64).mean(axis=(-3, -2))  # (..., 3)
    dist = np.linalg.norm(mean[..., None, :] - PALETTE[:num_colours].astype(np.float64), axis=-1)
    return dist.argmin(axis=-1)


class CueMemoryEnv(gym.Env[np.ndarray, np.int64]):
    """Remember a colour cue over ``n`` distractor steps; it reappears at step ``n + 1`` (see module docstring).

    Observations are ``(frame_size, frame_size, 3)`` uint8 frames; actions ``Discrete(5)`` move the distractor square
    (stay, up, down, left, right). Rewards are 0. The episode terminates at step ``n + 1``, on the frame that
    shows the cue colour again. ``info`` holds ``cue`` (the colour index), ``t`` (the step) and ``n``.

    Example:
        >>> env = CueMemoryEnv(n=2, num_colours=4, frame_size=16)
        >>> frame, info = env.reset(seed=0)
        >>> _ = env.step(0); _ = env.step(0)
        >>> frame, reward, terminated, truncated, info = env.step(0)
        >>> terminated, int(nearest_colour(frame, 4)) == info["cue"]
        (True, True)
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, n: int = 24, num_colours: int = 4, frame_size: int = 16,
                 render_mode: str | None = None) -> None:
        size = frame_size
        for name, value, low in (("n", n, 1), ("num_colours", num_colours, 2), ("frame_size", size, 8)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise UserError(f"CueMemoryEnv {name} must be an integer >= {low}, got {value!r}")
        if num_colours > len(PALETTE):
            raise UserError(f"CueMemoryEnv num_colours must be <= {len(PALETTE)}, got {num_colours}")
        if n + 1 > timer_rows(size) * size:
            raise UserError(f"CueMemoryEnv n={n} does not fit the timer of a {size}x{size} frame "
                            f"(n <= {timer_rows(size) * size - 1})")
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"CueMemoryEnv only renders 'rgb_array', got {render_mode!r}")
        self.n, self.num_colours, self.frame_size = int(n), int(num_colours), int(size)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (self.frame_size, self.frame_size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(ACTION_MOVES))
        self.agent_size = max(1, self.frame_size // 8)
        self._cue = 0
        self._t = 0
        self._agent = np.zeros(2, dtype=np.int64)
        self._frame: np.ndarray | None = None

    # ---- drawing

    def _draw(self) -> np.ndarray:
        s, a = self.frame_size, self.agent_size
        frame = np.empty((s, s, 3), dtype=np.uint8)
        frame[:] = BACKGROUND
        if self._t == 0 or self._t == self.n + 1:  # the cue, then its reappearance
            top, bottom, left, right = patch_box(s)
            frame[top:bottom, left:right] = PALETTE[self._cue]
        y, x = self._agent
        frame[y: y + a, x: x + a] = AGENT_COLOUR
        rows = timer_rows(s)
        timer = np.empty((rows * s, 3), dtype=np.uint8)  # row-major cells, one per remaining step
        timer[:] = TIMER_OFF_COLOUR
        timer[: self.n + 1 - self._t] = TIMER_COLOUR
        frame[s - rows:] = timer.reshape(rows, s, 3)
        self._frame = frame
        return frame.copy()

    def _info(self) -> dict[str, Any]:
        return {"cue": self._cue, "t": self._t, "n": self.n}

    # ---- the Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(self.num_colours))
        self._t = 0
        # The square moves in the area above the timer (drawn on top of the cue colour).
        high = self.frame_size - timer_rows(self.frame_size) - self.agent_size + 1
        self._agent = self.np_random.integers(0, high, size=2).astype(np.int64)
        return self._draw(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._frame is None:
            raise RuntimeError("CueMemoryEnv.step() before reset()")
        if self._t > self.n:
            raise RuntimeError("CueMemoryEnv.step() after the episode terminated; call reset()")
        if not self.action_space.contains(action):
            raise UserError(f"invalid CueMemoryEnv action {action!r}: expected an integer in [0, 5)")
        high = self.frame_size - timer_rows(self.frame_size) - self.agent_size
        self._agent = np.clip(self._agent + ACTION_MOVES[int(action)], 0, high)
        self._t += 1
        terminated = self._t == self.n + 1
        return self._draw(), 0.0, terminated, False, self._info()

    def render(self) -> np.ndarray | None:
        """The current frame (``None`` before the first reset)."""
        return None if self._frame is None else self._frame.copy()

