"""The batched imagination core shared by the Gymnasium env, the Gymnasium vector env and the SB3 ``VecEnv``.

``ImaginationCore`` runs N imagined rollouts of one world model in one denoiser batch. Each row has its own
context (a window of real frames), its own ``torch.Generator`` (the sampler's noise), its own step counter and
frame stack. Resetting rows warms up a fresh state for those rows only and copies it into the batch state
(``InferenceState.load_rows``): the other rows are never touched, so rows reset independently.

Seeding: a row reset draws from the row's ``np.random.Generator`` first the context (when none is given), then
the seed of the row's ``torch.Generator``. The same generator state and the same actions give the same frames.

Frame stacking: with ``frame_stack=k`` an observation is the last k frames concatenated on the channel axis,
oldest first, ``(H, W, 3k)`` uint8 (the channel-last layout SB3's ``VecFrameStack`` uses). At reset the stack
holds the last k context frames (the first one repeated when the context is shorter).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils import seeding

from diffusion_world.checkpoint import WorldModel, check_device, load_world_model
from diffusion_world.data.pixel_env import recorded_env_difference, recorded_render_fps, recorded_time_limit
from diffusion_world.diffusion.sampler import (
    SamplerConfig,
    edm_sigmas,
    frames_to_x,
    sample_next_frame,
    symexp,
    warmup,
    x_to_frames,
)
from diffusion_world.errors import UserError
from diffusion_world.model.config import action_space_from_dict, action_space_to_dict
from diffusion_world.precision import check_precision, inference_autocast, warn_if_emulated

RESET_MODES = ("episode_start", "anywhere")
TERMINATION_MODES = ("threshold", "sample")
CONTEXT_SOURCES = ("auto", "dataset", "checkpoint")
DEFAULT_CONTEXT_FRAMES = 4
DEFAULT_HORIZON = 1000


class InvalidActionError(UserError, gym.error.InvalidAction):
    """An action outside the action space, or of the wrong shape or type. Nothing was stepped."""


class ResetNeededError(UserError, gym.error.ResetNeeded):
    """``step`` (or ``render``) before the first ``reset``."""


@dataclass
class Context:
    """A window of real frames to start a rollout from.

    ``frames`` (L, H, W, 3) uint8; ``actions`` (L,) int64 or (L, *shape) float32, the action that *led to* each
    frame; ``has_action`` (L,) bool, False where there is none (an episode's first frame).
    """

    frames: np.ndarray
    actions: np.ndarray
    has_action: np.ndarray

    def __len__(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Where reset contexts come from


class DatasetContexts:
    """Context windows drawn from a dataset's ``FrameCache``.

    A window never crosses an episode boundary and never ends on an episode's last frame (a terminal state has
    no next frame), unless no episode is long enough for that; nor does it reach frames recorded after a
    termination (``FrameCache.live_lengths``).
    """

    def __init__(self, cache: Any, length: int) -> None:
        self.cache = cache
        self.length = length
        self.description = f"dataset {cache.dataset_id!r}"
        starts, lengths = cache.episode_starts, cache.live_lengths
        need = length + 1 if (lengths >= length + 1).any() else length
        eligible = lengths >= need
        if not eligible.any():
            cut = " up to its first terminal frame" if (lengths < cache.episode_lengths).any() else ""
            raise UserError(f"no episode of dataset {cache.dataset_id!r} has context_frames={length} frames "
                            f"(longest{cut}: {int(lengths.max())}); use a smaller context_frames")
        self.episode_start_windows = starts[eligible].astype(np.int64)
        counts = lengths[eligible] - need + 1
        offsets = np.cumsum(counts) - counts
        # concat(arange(start_e, start_e + count_e)) without a loop over episodes
        self.anywhere_windows = (np.repeat(starts[eligible] - offsets, counts) + np.arange(counts.sum())).astype(
            np.int64)

    def draw(self, rng: np.random.Generator, reset_mode: str) -> Context:
        windows = self.episode_start_windows if reset_mode == "episode_start" else self.anywhere_windows
        start = int(windows[rng.integers(len(windows))])
        window = slice(start, start + self.length)
        return Context(np.array(self.cache.frames[window]), np.array(self.cache.prev_actions[window]),
                       np.array(self.cache.has_prev_action[window]))


class CheckpointContexts:
    """Context windows cut from the real episode starts stored in the checkpoint (``contexts``)."""

    def __init__(self, contexts: dict[str, Any], length: int, frame_size: tuple[int, int]) -> None:
        if "frames" not in contexts or "actions" not in contexts:
            raise UserError("the checkpoint stores no reset contexts and no dataset is available")
        frames = np.asarray(torch.as_tensor(contexts["frames"]).cpu().numpy())
        if frames.ndim != 5 or frames.shape[2:] != (*frame_size, 3) or frames.dtype != np.uint8 or not len(frames):
            raise UserError(f"checkpoint contexts have frames of shape {frames.shape} ({frames.dtype}); "
                            f"expected (N, L, {frame_size[0]}, {frame_size[1]}, 3) uint8")
        if frames.shape[1] < length:
            raise UserError(f"the checkpoint's contexts have {frames.shape[1]} frames, fewer than "
                            f"context_frames={length}; give a dataset_id or a smaller context_frames")
        self.frames = frames
        self.actions = np.asarray(torch.as_tensor(contexts["actions"]).cpu().numpy())
        if "has_action" in contexts:
            self.has_action = np.asarray(torch.as_tensor(contexts["has_action"]).cpu().numpy(), dtype=bool)
        else:  # episode starts: the first frame has no action
            self.has_action = np.ones(frames.shape[:2], dtype=bool)
            self.has_action[:, 0] = False
        self.length = length
        self.description = f"{len(frames)} contexts stored in the checkpoint"

    def draw(self, rng: np.random.Generator, reset_mode: str) -> Context:
        n = int(rng.integers(len(self.frames)))
        offset = 0 if reset_mode == "episode_start" else int(rng.integers(self.frames.shape[1] - self.length + 1))
        window = slice(offset, offset + self.length)
        return Context(self.frames[n, window].copy(), self.actions[n, window].copy(),
                       self.has_action[n, window].copy())


def _same_action_space(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`action_space_to_dict` descriptions are one space: Discrete ``n`` (a non-zero start
    is refused when described), Box shape and bounds (None: infinite; float32 rounding tolerated)."""
    if a.get("type") != b.get("type"):
        return False
    if a["type"] == "discrete":
        return int(a["n"]) == int(b["n"]) and int(a.get("start", 0)) == int(b.get("start", 0))
    if list(a["shape"]) != list(b["shape"]):
        return False

    def bound(d: dict[str, Any], key: str, infinity: float) -> np.ndarray:
        return np.array([infinity if v is None else v for v in d[key]], dtype=np.float64)

    return all(np.allclose(bound(a, key, inf), bound(b, key, inf), rtol=1e-6, atol=0)
               for key, inf in (("low", -np.inf), ("high", np.inf)) if key in a and key in b)


def check_dataset_fits(cache: Any, world_model: WorldModel) -> None:
    """A clear :class:`UserError` when a dataset's frames or actions (its frame cache) are not those the world
    model was trained on: its imagination could not start from, or replay, that dataset's episodes. A warning
    where it was recorded in another env, or at another pixel-env frame skip (:func:`recorded_env_difference`)."""
    dataset_id = cache.dataset_id
    model_size = tuple(world_model.config.frame_size)
    if tuple(cache.frame_size) != model_size:
        raise UserError(f"dataset {dataset_id!r} has {cache.frame_size[0]}x{cache.frame_size[1]} frames but the "
                        f"world model {world_model.path} generates {model_size[0]}x{model_size[1]} frames")
    space = action_space_to_dict(cache.action_space)
    if not _same_action_space(space, world_model.config.action_space):
        raise UserError(f"dataset {dataset_id!r} has action space {cache.action_space} but the world model "
                        f"{world_model.path} was trained with "
                        f"{action_space_from_dict(world_model.config.action_space)}")
    own = world_model.dataset.get("env_spec")
    difference = recorded_env_difference(cache.env_spec, own) if cache.env_spec and own else None
    if difference:
        warnings.warn(f"dataset {dataset_id!r} was recorded in another env than the world model's training data "
                      f"({difference}): its episodes (reset contexts, held-out windows) follow other dynamics or "
                      "another time scale than the model learnt", UserWarning, stacklevel=3)


def open_dataset_for(dataset_id: str, world_model: WorldModel, progress: bool = True) -> Any:
    """A dataset's ``FrameCache`` as the world model sees it (its frames resized as in training, when they were),
    after checking that its frames and actions fit the model."""
    from diffusion_world.data.dataset import FrameCache

    cache = FrameCache.open(dataset_id, progress=progress, frame_size=world_model.dataset.get("resize"))
    check_dataset_fits(cache, world_model)
    return cache


def open_dataset_contexts(dataset_id: str, world_model: WorldModel, length: int) -> DatasetContexts:
    """A dataset's contexts, after checking its frames and actions fit the world model."""
    return DatasetContexts(open_dataset_for(dataset_id, world_model), length)


# ----------------------------------------------------------------------------------------------------------
# The core


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


RESET_OPTIONS = ("context", "actions", "has_action")


def warn_unknown_options(options: dict[str, Any] | None, extra: Sequence[str] = ()) -> None:
    """Warn about reset options the imagined envs do not know: a misspelt ``"context"`` would otherwise draw a
    random context without a word."""
    unknown = sorted(set(options or {}) - set(RESET_OPTIONS) - set(extra), key=str)
    if unknown:
        warnings.warn(f"reset options {unknown} are not used by the imagined env (it reads {list(RESET_OPTIONS)}"
                      f"{' and ' + str(list(extra)) if extra else ''})", UserWarning, stacklevel=3)


@dataclass
class StepResult:
    """What one batched step produced: frames (N, H, W, 3) uint8, rewards (N,) float64, terminated and
    truncated (N,) bool, and the predicted termination probability (N,) float32 that ``terminated`` came from."""

    frames: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    termination_probability: np.ndarray


def warn_outside_context_noise(wm: WorldModel, sampler: SamplerConfig, sigma_ctx: float) -> None:
    """The caches hold frames at the noise level they entered with: the sampler's last one for generated frames
    (sigma_min; sigma_max with one step), ``sigma_ctx`` for real context frames, ``history_sigma`` for history
    guidance's second set. The clean stream learnt to read frames only at the context noise levels of its
    training: warn about others."""
    if wm.context_noise_range is None:
        return
    lo, hi = wm.context_noise_range
    last = float(edm_sigmas(sampler)[-2])  # the last denoiser call's, whose activations the caches keep
    levels = {"the sampler's last noise level": last, "sigma_ctx": sigma_ctx,
              **({"history_sigma": sampler.history_sigma} if sampler.guided else {})}
    outside = [f"{name} {value:g}" for name, value in levels.items() if not lo * (1 - 1e-6) <= value <= hi * (1 + 1e-6)]
    if outside:
        warnings.warn(f"{', '.join(outside)} outside the context noise the model was trained on ({lo:g} to {hi:g}, "
                      "LossConfig sigma_ctx_min / max): frames enter the caches at noise levels it never learnt to "
                      "read", stacklevel=3)


class ImaginationCore:
    """N imagined envs of one world model, stepped in one denoiser batch and reset row by row.

    Args:
        world_model: a checkpoint path, a shipped name (``"cartpole"``) or a loaded ``WorldModel``.
        num_envs: N, the number of rows.
        dataset_id: Minari dataset to draw reset contexts from (default: the checkpoint's).
        context_source: ``"auto"`` (the dataset when it is on this machine, else the contexts stored in the
            checkpoint), ``"dataset"`` or ``"checkpoint"``.
        context_frames: real frames warmed up at reset (default: the checkpoint's ``imagination`` setting, else 4).
        horizon: steps after which an episode is truncated (default: the checkpoint's, else the real env's time
            limit, as its dataset's env spec records or registers it, else 1000).
        sampler_steps: denoiser calls per step, K (default: the checkpoint's, else 3). K = 1 commits its noisy
            sigma_max call to the caches; use K >= 2.
        history_guidance: w of :class:`~diffusion_world.diffusion.sampler.SamplerConfig`'s history guidance
            (default: the checkpoint's, else 1 = off): each denoiser call is pushed away from the prediction made
            with a noisier past. w > 1 strengthens the imagined dynamics; a step costs about twice as much.
        frame_stack: frames per observation, stacked on the channel axis.
        device: torch device of the model.
        reset_mode: ``"episode_start"`` (contexts are episode starts) or ``"anywhere"`` (any window).
        termination_threshold: with ``termination="threshold"``, an episode terminates when the predicted
            probability (calibrated: :meth:`WorldModel.termination_probability`) exceeds it.
        termination: ``"threshold"`` (deterministic given the frame) or ``"sample"``: each step, each row
            terminates with the predicted probability, drawn from the row's ``torch.Generator`` after the frame's
            noise (as DIAMOND samples its end flag). Sampling ends episodes that linger on frames the model finds
            somewhat terminal, which a threshold never ends.
        precision: ``"fp32"`` (default), ``"bf16"`` (bf16 autocast of the denoiser calls: on CPUs with AMX /
            AVX512-BF16 and on CUDA several times faster convolutions, on other CPUs emulated and several times
            slower, with a warning; frames differ from fp32's by rounding, which an autoregressive rollout carries
            on) or ``"auto"`` (bf16 where it is native, as training's default).

    Example::

        core = ImaginationCore("runs/cartpole/checkpoint.pt", num_envs=8)
        core.reset_rows(range(8), [np.random.default_rng(i) for i in range(8)])
        result = core.step(core.check_actions(np.zeros(8, dtype=np.int64)))
        observations = core.observations()  # (8, 64, 64, 3) uint8
    """

    def __init__(self, world_model: str | os.PathLike | WorldModel = "cartpole", num_envs: int = 1, *,
                 dataset_id: str | None = None, context_source: str = "auto", context_frames: int | None = None,
                 horizon: int | None = None, sampler_steps: int | None = None, frame_stack: int = 1,
                 device: str = "cpu", reset_mode: str = "episode_start",
                 termination_threshold: float = 0.5, termination: str = "threshold",
                 history_guidance: float | None = None, precision: str = "fp32") -> None:
        self.num_envs = positive_int("num_envs", num_envs)
        check_precision(precision)
        if reset_mode not in RESET_MODES:
            raise UserError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
        if termination not in TERMINATION_MODES:
            raise UserError(f"termination must be one of {TERMINATION_MODES}, got {termination!r}")
        if context_source not in CONTEXT_SOURCES:
            raise UserError(f"context_source must be one of {CONTEXT_SOURCES}, got {context_source!r}")
        if context_source == "checkpoint" and dataset_id is not None:  # one of them would be ignored
            raise UserError(f"dataset_id={dataset_id!r} names reset contexts from a dataset, context_source="
                            "'checkpoint' those stored in the checkpoint: give one of them")
        th = termination_threshold  # numpy floats too
        if isinstance(th, bool) or not isinstance(th, int | float | np.floating) or not 0.0 <= th <= 1.0:
            raise UserError(f"termination_threshold must be a number in [0, 1], got {termination_threshold!r}")
        self.device = check_device(device)
        self.precision = precision
        warn_if_emulated(precision, self.device)
        self.world_model = (world_model if isinstance(world_model, WorldModel)
                            else load_world_model(world_model, device=self.device))
        self.model = self.world_model.model.to(self.device)
        defaults = self.world_model.imagination
        self.context_frames = positive_int("context_frames", context_frames if context_frames is not None
                                            else defaults.get("context_frames", DEFAULT_CONTEXT_FRAMES))
        self.horizon = positive_int("horizon", horizon if horizon is not None else default_horizon(self.world_model))
        self.frame_stack = positive_int("frame_stack", frame_stack)
        self.reset_mode = reset_mode
        self.termination_threshold = float(termination_threshold)
        self.termination = termination
        self.sampler = self.world_model.sampler_config(sampler_steps, history_guidance)
        # frames per second of the real env the model learned (a video of imagined play runs at its speed)
        self.render_fps = recorded_render_fps(self.world_model.dataset.get("env_spec"))
        self.sigmas = edm_sigmas(self.sampler, self.device)
        # Context frames enter the caches at the noise level of the sampler's last call, the one whose
        # activations become the cache entries of generated frames.
        self.sigma_ctx = float(defaults.get("sigma_ctx", self.sampler.sigma_min))
        warn_outside_context_noise(self.world_model, self.sampler, self.sigma_ctx)

        cfg = self.world_model.config
        self.frame_size: tuple[int, int] = (int(cfg.frame_size[0]), int(cfg.frame_size[1]))
        H, W = self.frame_size
        self.action_space = action_space_from_dict(cfg.action_space)
        self.observation_space = gym.spaces.Box(0, 255, (H, W, 3 * self.frame_stack), np.uint8)
        self.contexts = self._open_contexts(dataset_id, context_source)

        N = self.num_envs
        self.state = self.model.new_state(N, self.device)
        self.generators = [torch.Generator() for _ in range(N)]
        self.row_rngs: list[np.random.Generator | None] = [None] * N  # per-row numpy RNG (Gymnasium seeding)
        self.row_seeds: list[int] = [-1] * N  # the seed of each (-1: a generator set directly, as Gymnasium's)
        self.stacks = np.zeros((N, self.frame_stack, H, W, 3), dtype=np.uint8)  # last frames, oldest first
        self.steps = np.zeros(N, dtype=np.int64)  # env steps since each row's reset
        self.needs_reset = np.ones(N, dtype=bool)

    def set_row_rngs(self, name: str, values: Any) -> None:
        """``set_attr("np_random", ...)`` of the vector envs, as a ``SyncVectorEnv`` sets its sub-envs': one
        generator for every row, or one each; a generator set directly has seed -1."""
        N = self.num_envs
        values = list(values) if isinstance(values, list | tuple) else [values] * N
        if len(values) != N:
            raise UserError(f"set_attr({name!r}) got {len(values)} values for {N} envs")
        for i, value in enumerate(values):
            self.set_row_rng(i, name, value)

    def set_row_rng(self, i: int, name: str, value: Any) -> None:
        """Row i's generator (``name="np_random"``; its seed then reads -1). ``np_random_seed`` is read-only, as
        Gymnasium's: seed with ``reset(seed=...)``."""
        if name != "np_random":
            raise UserError(f"{name} is read-only, as a Gymnasium env's: seed with reset(seed=...), or set np_random")
        if not isinstance(value, np.random.Generator):
            raise UserError(f"set_attr('np_random') needs numpy Generators, got {type(value).__name__}")
        self.row_rngs[i], self.row_seeds[i] = value, -1

    def row_rng(self, i: int | np.integer, seed: int | None) -> np.random.Generator:
        """Row i's numpy generator: (re)seeded when ``seed`` is given or on first use, else carried on."""
        rng = self.row_rngs[i]
        if seed is not None or rng is None:
            rng, self.row_seeds[i] = seeding.np_random(seed)
            self.row_rngs[i] = rng
        return rng

    def _open_contexts(self, dataset_id: str | None, source: str) -> DatasetContexts | CheckpointContexts:
        wm = self.world_model
        ckpt_id = wm.dataset.get("dataset_id")
        if source == "checkpoint":
            return CheckpointContexts(wm.contexts, self.context_frames, self.frame_size)
        if dataset_id is None and ckpt_id is None and source == "dataset":
            raise UserError(f"the world model {wm.path} records no dataset_id: pass dataset_id")
        if dataset_id is not None or source == "dataset":
            return open_dataset_contexts(str(dataset_id or ckpt_id), wm, self.context_frames)
        # auto, no explicit dataset: the checkpoint's dataset if it is on this machine (a dataset that is here
        # but does not fit the model is an error, not a reason to fall back), else the stored contexts
        from diffusion_world.data.dataset import minari_datasets_root

        if ckpt_id is not None and (minari_datasets_root() / ckpt_id / "data").is_dir():
            return open_dataset_contexts(ckpt_id, wm, self.context_frames)
        if not wm.contexts:
            where = f"dataset {ckpt_id!r} is not on this machine" if ckpt_id else "the checkpoint records no dataset"
            raise UserError(f"no reset contexts for {wm.path}: {where} and the checkpoint stores no contexts "
                            "(pass dataset_id)")
        return CheckpointContexts(wm.contexts, self.context_frames, self.frame_size)

    # ---- actions

    def _invalid(self, action: Any, why: str) -> InvalidActionError:
        text = repr(action)
        if len(text) > 80:
            text = text[:77] + "..."
        each = f"each of the {self.num_envs} envs' action space" if self.num_envs > 1 else "action space"
        return InvalidActionError(f"invalid action {text}: {why} ({each} {self.action_space})")

    def check_actions(self, actions: Any, batch: bool = True) -> np.ndarray:
        """Validate a batch (N,) / (N, *shape) of actions (or one action with ``batch=False``) and return it as
        int64 / float32. Raises :class:`InvalidActionError` (nothing is stepped) when it does not fit. Box actions
        outside the bounds are clipped to them, as Pendulum and LunarLander do (the model saw no others), so that
        a planner's Gaussian samples or an unclipped policy step as they would in such a real env."""
        lead = (self.num_envs,) if batch else ()
        space = self.action_space
        try:
            a = np.asarray(actions)
        except Exception as e:  # ragged lists and the like
            raise self._invalid(actions, f"not an array ({e})") from e
        if isinstance(space, gym.spaces.Discrete):
            if a.shape != lead:
                raise self._invalid(actions, f"expected shape {lead}, got {a.shape}")
            if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
                raise self._invalid(actions, f"expected an integer, got dtype {a.dtype}")
            if (a < 0).any() or (a >= space.n).any():
                raise self._invalid(actions, f"expected an integer in [0, {int(space.n)})")
            return a.astype(np.int64)
        assert isinstance(space, gym.spaces.Box)
        shape = (*lead, *space.shape)
        if a.shape != shape:
            raise self._invalid(actions, f"expected shape {shape}, got {a.shape}")
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise self._invalid(actions, f"expected numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise self._invalid(actions, "not finite")
        return np.clip(a, space.low.astype(np.float64), space.high.astype(np.float64)).astype(np.float32)

    def context_from_options(self, options: dict[str, Any] | None) -> Context | None:
        """``options={"context": frames (L, H, W, 3) uint8, "actions": ...}`` -> a :class:`Context` (None when
        the options hold no context). ``actions`` has L-1 entries (the actions between the frames) or L (the
        action that led to each frame; then ``has_action`` (L,) bool may say which exist). No actions: none."""
        warn_unknown_options(options)
        if not options or options.get("context") is None:
            return None
        frames = np.asarray(options["context"])
        H, W = self.frame_size
        if frames.ndim != 4 or frames.shape[1:] != (H, W, 3) or frames.dtype != np.uint8 or len(frames) < 1:
            raise UserError(f"options['context'] must be uint8 frames of shape (L, {H}, {W}, 3), "
                            f"got {frames.dtype} {frames.shape}")
        L = len(frames)
        has_action = np.zeros(L, dtype=bool)
        empty_shape = tuple(self.action_space.shape or ())
        dtype = np.int64 if isinstance(self.action_space, gym.spaces.Discrete) else np.float32
        actions = np.zeros((L, *empty_shape), dtype=dtype)
        given = options.get("actions")
        if given is not None:
            given_arr = np.asarray(given)
            n = given_arr.shape[0] if given_arr.ndim else -1
            if n == L - 1:
                if L > 1:
                    actions[1:] = self._check_seq(given_arr)
                    has_action[1:] = True
            elif n == L:
                actions[:] = self._check_seq(given_arr)
                has = options.get("has_action")
                if has is not None and np.size(has) != L:
                    raise UserError(f"options['has_action'] must have {L} entries (one per context frame), got "
                                    f"{np.size(has)}")
                has_action[:] = True if has is None else np.asarray(has, dtype=bool).reshape(L)
            else:
                raise UserError(f"options['actions'] must have {L - 1} (between frames) or {L} (leading to each "
                                f"frame) entries for a context of {L} frames, got shape {given_arr.shape}")
        return Context(frames.copy(), actions, has_action)

    def _check_seq(self, actions: np.ndarray) -> np.ndarray:
        return np.stack([self.check_actions(a, batch=False) for a in actions]) if len(actions) else actions

    # ---- reset and step

    def reset_rows(self, rows: Sequence[int] | np.ndarray, rngs: Sequence[np.random.Generator],
                   contexts: Sequence[Context | None] | None = None) -> None:
        """Start new rollouts in ``rows``: each row draws its context (unless given) and its sampler seed from
        its generator in ``rngs``, then all those rows are warmed up together; other rows are untouched."""
        rows = [int(r) for r in rows]
        if not rows:
            return
        contexts = list(contexts) if contexts is not None else [None] * len(rows)
        drawn: list[Context] = []
        for row, rng, ctx in zip(rows, rngs, contexts):
            ctx = ctx if ctx is not None else self.contexts.draw(rng, self.reset_mode)
            self.generators[row].manual_seed(int(rng.integers(0, 2**63 - 1)))
            drawn.append(ctx)
        by_length: dict[int, list[int]] = {}
        for j, ctx in enumerate(drawn):
            by_length.setdefault(len(ctx), []).append(j)
        with torch.no_grad(), self.autocast():
            for group in by_length.values():  # one warm-up pass per context length
                frames = np.stack([drawn[j].frames for j in group])  # (g, L, H, W, 3)
                x = frames_to_x(frames).to(self.device)  # (g, L, 3, H, W)
                actions = torch.as_tensor(np.stack([drawn[j].actions for j in group])).to(self.device)
                has_action = torch.as_tensor(np.stack([drawn[j].has_action for j in group])).to(self.device)
                sub = self.model.new_state(len(group), self.device)
                warmup(self.model, sub, x, self.sigma_ctx, actions, has_action,
                       [self.generators[rows[j]] for j in group], self.sampler)
                self.state.load_rows(torch.tensor([rows[j] for j in group], device=self.device), sub)
        k = self.frame_stack
        for row, ctx in zip(rows, drawn):
            last = ctx.frames[-k:]
            pad = np.repeat(last[:1], k - len(last), axis=0)  # a context shorter than the stack
            self.stacks[row] = np.concatenate([pad, last])
        self.steps[rows] = 0
        self.needs_reset[rows] = False

    @torch.no_grad()
    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """One imagined step of every row with already validated actions (:meth:`check_actions`).

        ``active`` (N,) bool: rows about to be reset anyway (False) are computed with the batch but get no
        action; their results are meaningless and their next reset overwrites them.
        """
        N = self.num_envs
        has_action = torch.ones(N, dtype=torch.bool) if active is None else torch.as_tensor(active, dtype=torch.bool)
        with self.autocast():
            x, reward, termination_logit = sample_next_frame(
                self.model, self.state, torch.as_tensor(actions).to(self.device), has_action.to(self.device),
                self.generators, self.sampler, self.sigmas)
            p_terminal = self.world_model.termination_probability(termination_logit.float(), x.float())
        frames = x_to_frames(x).cpu().numpy()  # (N, H, W, 3)
        rewards = self.world_model.clip_rewards(symexp(reward.float())).cpu().numpy().astype(np.float64)
        probability = p_terminal.float().cpu().numpy()
        if self.termination == "sample":
            draws = np.array([torch.rand((), generator=g).item() for g in self.generators])
            terminated = draws < probability
        else:
            terminated = probability > self.termination_threshold
        self.steps += 1
        truncated = self.steps >= self.horizon
        self.stacks[:, :-1] = self.stacks[:, 1:]
        self.stacks[:, -1] = frames
        return StepResult(frames, rewards, terminated, truncated, probability)

    def autocast(self) -> torch.autocast:
        """bf16 autocast of the model's calls when ``precision`` asks for it (a no-op context otherwise)."""
        return inference_autocast(self.precision, self.device)

    def observations(self, rows: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """The current observations of ``rows`` (default: all), a new array (n, H, W, 3 * frame_stack)."""
        stacks = self.stacks[slice(None) if rows is None else rows]  # (n, k, H, W, 3)
        n, k, H, W, C = stacks.shape
        return stacks.transpose(0, 2, 3, 1, 4).reshape(n, H, W, k * C).copy()  # never a view of the stacks

    def last_frames(self) -> np.ndarray:
        """The newest frame of every row, (N, H, W, 3) uint8 (a copy)."""
        return self.stacks[:, -1].copy()


# the kwargs an imagined env passes on to its ImaginationCore
CORE_KWARGS = frozenset(inspect.signature(ImaginationCore.__init__).parameters) - {"self", "world_model", "num_envs"}


def make_core(owner: str, world_model: Any, num_envs: int, kwargs: dict[str, Any]) -> ImaginationCore:
    """``ImaginationCore(world_model, num_envs, **kwargs)``; a misspelled kwarg is named with ``owner``, the class
    the user called, and the kwargs it takes (not as a TypeError of ``ImaginationCore.__init__``)."""
    check_kwargs(owner, kwargs, CORE_KWARGS)
    return ImaginationCore(world_model, num_envs, **kwargs)


def check_kwargs(owner: str, kwargs: dict[str, Any], accepted: frozenset[str]) -> None:
    """A UserError naming the kwargs of ``kwargs`` that ``owner`` does not take (with the closest accepted one
    where one is close), and the ones it takes."""
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, accepted, 1))
                 else repr(k) for k in unknown]
        raise UserError(f"{owner} got unexpected kwargs {', '.join(hints)}; the imagined env takes "
                        f"{sorted(accepted)}")


def default_horizon(wm: WorldModel) -> int:
    """The steps an imagined episode of ``wm`` lasts unless told otherwise: its card's ``[imagination] horizon``,
    else the real env's time limit, else ``DEFAULT_HORIZON``."""
    horizon = wm.imagination.get("horizon")
    if horizon is None:
        horizon = recorded_time_limit(wm.dataset.get("env_spec")) or DEFAULT_HORIZON
    return int(horizon)


class RecordedSpec:
    """An env whose ``spec`` (set by ``gym.make`` / ``gym.make_vec`` after construction) records a path-like
    ``world_model`` as a string, so that ``spec.to_json()`` works and ``gym.make(spec)`` makes the same env, and
    gives ``max_episode_steps`` as the env's ``horizon`` (the env truncates itself there), for what reads it
    (``TimeAwareObservation``, sb3-contrib's ``TimeFeatureWrapper``). A ``TimeLimit`` from
    ``gym.make(..., max_episode_steps=N)`` wraps the env and states its own N."""

    _recorded_spec: EnvSpec | None = None
    core: ImaginationCore

    @property
    def spec(self) -> EnvSpec | None:
        return self._recorded_spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        if value is not None and isinstance(value.kwargs.get("world_model"), os.PathLike):
            value = dataclasses.replace(value, kwargs={**value.kwargs,
                                                       "world_model": os.fspath(value.kwargs["world_model"])})
        if value is not None and value.max_episode_steps is None:
            value = dataclasses.replace(value, max_episode_steps=self.core.horizon)
        self._recorded_spec = value


def stack_frames(frames: Sequence[np.ndarray]) -> np.ndarray:
    """k frames (H, W, 3), oldest first -> one observation (H, W, 3k), the layout of :class:`ImaginationCore`."""
    return np.concatenate(list(frames), axis=-1)
