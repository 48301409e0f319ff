"""Collect pixel trajectories of a real env into a local Minari dataset (lossless, chunked, atomic).

Episodes are built as ``minari.data_collector.EpisodeBuffer`` objects and written with
``minari.create_dataset_from_buffers`` / ``MinariDataset.update_dataset_from_buffer`` (Minari's
``DataCollector`` needs jax). Everything is written into a hidden temporary directory under the Minari root
and renamed into place at the end, so an interrupted collection leaves either nothing or a complete dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import minari
import numpy as np
from gymnasium.envs.registration import EnvSpec
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_dataset import DATASET_ID_RE
from minari.namespace import create_namespace, list_local_namespaces
from minari.storage import get_dataset_path
from tqdm.auto import tqdm

from diffusion_world.data.dataset import (
    jpeg_decoded_from,
    load_minari,
    lossy_frames,
    minari_datasets_root,
    validate_dataset_id,
)
from diffusion_world.data.pixel_env import (
    MIN_FRAME_SIZE,
    PixelEnv,
    make_pixel_env,
    own_env_registration,
    record_time_limit,
    recorded_wrappers,
    registered_spec,
)
from diffusion_world.errors import UserError, writable_dir
from diffusion_world.files import scratch_dir
from diffusion_world.registration import PIXEL_ENV_ID

# (frame, info) -> action. ``info["state"]`` is the inner env's own observation.
Policy = Callable[[np.ndarray, dict[str, Any]], Any]

DEFAULT_CHUNK_STEPS = 5000
# Lossless HDF5 filter applied to stored frames; gzip is the one every HDF5 reader has built in.
FRAME_COMPRESSION = "gzip"
FRAME_COMPRESSION_LEVEL = 4


def dataset_path(dataset_id: str) -> Path:
    """Where Minari keeps ``dataset_id``: ``$MINARI_DATASETS_PATH/<id>`` (default ``~/.minari/datasets``), as an
    absolute path (Minari mis-joins paths under a relative root)."""
    return Path(get_dataset_path(dataset_id)).absolute()


def check_wrappers(wrappers: Any) -> None:
    """A clear :class:`UserError` for a wrapper list that is not ``[{"entry_point": "module:Class", "kwargs":
    {...}}, ...]`` with JSON kwargs (they are recorded in the dataset's env spec)."""
    if not isinstance(wrappers, list):
        raise UserError(f"wrappers must be a list of {{entry_point, kwargs}} tables, got {wrappers!r}")
    for w in wrappers:
        if not (isinstance(w, dict) and isinstance(w.get("entry_point"), str) and ":" in w["entry_point"]
                and set(w) <= {"entry_point", "kwargs"} and isinstance(w.get("kwargs", {}), dict)):
            raise UserError(f"a wrapper is {{entry_point = \"module:Class\", kwargs = {{...}}}}, got {w!r}")
        try:
            json.dumps(w)
        except TypeError as e:
            raise UserError(f"wrapper kwargs must be JSON-serialisable: {e}") from e


def check_new_dataset_id(dataset_id: str) -> None:
    """A clear :class:`UserError`, before any work, for an id a new dataset cannot take: bad syntax, taken, inside
    another dataset's folder (Minari would not list it), or a Minari root that cannot be written."""
    validate_dataset_id(dataset_id)
    writable_dir(minari_datasets_root(), "the Minari datasets folder (MINARI_DATASETS_PATH)")
    path = dataset_path(dataset_id)
    if path.exists():
        raise UserError(f"dataset {dataset_id!r} already exists at {path}; choose another id/version")
    root = dataset_path("")
    for parent in path.relative_to(root).parents:
        if parent != Path(".") and (root / parent / "data").is_dir():
            raise UserError(f"dataset id {dataset_id!r} would put it inside the dataset {parent.as_posix()!r}, "
                            "where Minari would not find it; choose another id")


# --- policies -----------------------------------------------------------------------------------------------

SB3_ALGORITHMS = ("PPO", "A2C", "DQN", "SAC", "TD3", "DDPG")


def load_sb3_model(path: str | os.PathLike) -> Any:
    """Load an SB3 model zip without knowing its algorithm (tried in turn, the one named in the zip first).

    Example:
        >>> model = load_sb3_model("ppo_cartpole.zip")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file() and Path(f"{path}.zip").is_file():
        path = Path(f"{path}.zip")
    if not path.is_file():
        raise UserError(f"policy file not found: {str(path)!r} (use 'random' or a path to an SB3 model .zip)")
    import stable_baselines3

    names = list(SB3_ALGORITHMS)
    try:
        # The pickled policy class records its module ("stable_baselines3.dqn.policies"): try that one first.
        with zipfile.ZipFile(path) as archive:
            data = archive.read("data").decode("utf-8", errors="replace")
        names.sort(key=lambda name: f"stable_baselines3.{name.lower()}." not in data)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"policy file {str(path)!r} is not an SB3 model zip") from e
    errors = []
    for name in names:
        try:
            return getattr(stable_baselines3, name).load(path, device="cpu")
        except Exception as e:  # any failure means "not this algorithm"
            errors.append(f"{name}: {type(e).__name__}")
    raise UserError(f"could not load {str(path)!r} as an SB3 model ({', '.join(errors)})")


def _as_action(action: Any, space: gym.Space) -> Any:
    if isinstance(space, gym.spaces.Discrete):
        return int(np.asarray(action).reshape(()))
    return np.asarray(action, dtype=space.dtype).reshape(space.shape)


def _same_space(a: gym.Space, b: gym.Space) -> bool:
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        return a.shape == b.shape
    return a == b


def make_policy(policy: str, env: gym.Env, epsilon: float = 0.0, seed: int = 0) -> Policy:
    """A collection policy: ``"random"`` or an SB3 model path, mixed with random actions w.p. ``epsilon``.

    An SB3 model whose observation space matches the inner env's state space is fed ``info["state"]``; one
    that matches the frames (HWC, or CHW as SB3's ``CnnPolicy`` stores it) is fed the frame, and one that watches
    the last k frames stacked on the channel axis (an agent trained in imagination with ``frame_stack=k``) is
    fed them as the imagined and real envs stack them, the first frame of an episode repeated. Such a policy
    has a ``reset()`` to call at each episode start.

    Example:
        >>> env = make_pixel_env("CartPole-v1", size=32)
        >>> act = make_policy("random", env, seed=0)
        >>> frame, info = env.reset(seed=0)
        >>> env.action_space.contains(act(frame, info))
        True
    """
    space = env.action_space
    space.seed(seed)
    if policy == "random":
        return lambda frame, info: space.sample()

    model = load_sb3_model(policy)
    if not _same_space(model.action_space, space):
        raise UserError(
            f"policy {policy!r} acts in {model.action_space}, but the env's action space is {space}"
        )
    pixel_env = env.unwrapped
    assert isinstance(pixel_env, PixelEnv), "make_policy needs a PixelEnv (make_pixel_env)"
    state_space = pixel_env.inner.observation_space
    frame_shape = (pixel_env.size, pixel_env.size, 3)
    model_space = model.observation_space
    use_state, stack = _same_space(model_space, state_space), 1
    if not use_state:
        from diffusion_world.envs.sb3_vec_env import agent_frame_stack

        stack = agent_frame_stack(model_space, frame_shape[:2]) or 0
        if not stack or not isinstance(model_space, gym.spaces.Box):
            raise UserError(
                f"policy {policy!r} observes {model_space}, which matches neither the env state {state_space} "
                f"nor its {frame_shape} frames (or a stack of them)"
            )
    import torch

    torch.manual_seed(seed)  # SB3's stochastic predict draws from torch's global generator
    return _SB3Policy(model, space, use_state, stack, epsilon, seed)


class _SB3Policy:
    """An SB3 agent acting on the state or on the last ``stack`` frames, with ε-random actions (the frames are
    stacked on every step, also those where a random action is taken)."""

    def __init__(self, model: Any, space: gym.Space, use_state: bool, stack: int, epsilon: float, seed: int) -> None:
        self.model, self.space, self.use_state, self.epsilon = model, space, use_state, epsilon
        self.frames: deque[np.ndarray] = deque(maxlen=stack)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.frames.clear()

    def __call__(self, frame: np.ndarray, info: dict[str, Any]) -> Any:
        if self.use_state:
            obs = info["state"]
        else:
            self.frames.extend([frame] * (self.frames.maxlen or 1) if not self.frames else [frame])
            obs = np.concatenate(list(self.frames), axis=-1)
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return self.space.sample()
        action, _ = self.model.predict(obs, deterministic=False)
        return _as_action(action, self.space)


# --- writing ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def minari_root(root: str | os.PathLike) -> Iterator[None]:
    """Point Minari (and :class:`~diffusion_world.data.dataset.FrameCache`) at another datasets root for the
    duration: their functions read MINARI_DATASETS_PATH. The root is made absolute (Minari mis-joins paths under
    a relative one)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).absolute())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _compress_frames(hdf5_path: Path) -> None:
    """Rewrite Minari's HDF5 file with a lossless gzip filter on frames and the compact HDF5 1.10 layout.

    Minari writes raw, unfiltered chunks (12 kB per 64x64 frame); rendered frames are mostly flat colour.
    Measured on CartPole 64x64 (benchmarks/data_pipeline.py): 123 MB -> 4.4 MB per 10k frames, smaller than
    Minari's lossy JPEG (15.6 MB). h5py decompresses transparently, so Minari reads the file as before and can
    still append to it (every dataset keeps an unlimited first axis).
    """
    tmp_path = hdf5_path.with_suffix(".compressing")

    def copy(src: h5py.Group, dst: h5py.Group) -> None:
        dst.attrs.update(dict(src.attrs))
        for name, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(name, track_order=True))
            elif item.ndim == 0 or item.dtype.kind not in "biuf" or len(item) == 0:
                src.copy(item, dst, name=name)
            elif item.dtype == np.uint8 and item.ndim == 4:  # (T, H, W, C) frames
                dst.create_dataset(
                    name,
                    data=item[()],
                    chunks=(min(len(item), 16), *item.shape[1:]),
                    maxshape=(None, *item.shape[1:]),
                    compression=FRAME_COMPRESSION,
                    compression_opts=FRAME_COMPRESSION_LEVEL,
                )
            else:
                dst.create_dataset(name, data=item[()], chunks=True, maxshape=(None, *item.shape[1:]))

    with (
        h5py.File(hdf5_path, "r") as src,
        h5py.File(tmp_path, "w", libver=("v110", "latest"), track_order=True) as dst,
    ):
        copy(src, dst)
    os.replace(tmp_path, hdf5_path)


def _episode_buffer(
    seed: int,
    frames: list[np.ndarray],
    actions: list[Any],
    rewards: list[float],
    terms: list[bool],
    truncs: list[bool],
    action_space: gym.Space,
) -> EpisodeBuffer:
    dtype = np.int64 if isinstance(action_space, gym.spaces.Discrete) else action_space.dtype
    return EpisodeBuffer(
        seed=seed,
        observations=np.stack(frames),
        actions=np.asarray(actions, dtype=dtype),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terms, dtype=bool),
        truncations=np.asarray(truncs, dtype=bool),
        infos={},  # an empty infos group, as DataCollector writes one: without it Minari reads infos as None
    )


def _step_after_termination(env: gym.Env, env_id: str, action: Any) -> tuple[np.ndarray, float, dict[str, Any]]:
    """One ``env.step`` past the episode's termination (Gymnasium warns about that; here it is the point)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frame, reward, _, _, info = env.step(action)
        except Exception as e:  # an env that refuses: say which option asked for it
            raise UserError(f"{env_id} cannot step after its episode terminated ({type(e).__name__}: {e}); "
                            "post_terminal_steps needs an env that can (CartPole can)") from e
    return frame, float(reward), info


def _dir_size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _AtomicDatasetWriter:
    """Writes a Minari dataset chunk by chunk into a hidden temporary root, then renames it into place.

    A context manager: leaving it without :meth:`commit` (an exception, Ctrl-C) deletes everything written.
    The temporary root sits in the Minari root, so the final rename stays on one filesystem (atomic); its name
    starts with a dot, so ``minari.list_local_datasets`` never lists it.
    """

    def __init__(self, dataset_id: str, env: gym.Env, lossless: bool, extra_metadata: dict[str, Any] | None = None,
                 **metadata: Any) -> None:
        self.dataset_id = dataset_id
        self.env = env
        self.lossless = lossless
        self.metadata = metadata  # Minari's own fields (create_dataset_from_buffers)
        self.extra_metadata = extra_metadata or {}  # diffusion_world's, written at commit
        self.final_path = dataset_path(dataset_id)
        self.dataset: minari.MinariDataset | None = None
        self._scratch = contextlib.ExitStack()

    def __enter__(self) -> _AtomicDatasetWriter:
        # a folder of its own, removed at the end (or by the next writer, if this process is killed)
        self.tmp_root = self._scratch.enter_context(scratch_dir(dataset_path(""), ".diffusion_world-collect-"))
        return self

    def __exit__(self, *exc: object) -> None:
        self._scratch.close()

    def add(self, buffers: list[EpisodeBuffer]) -> None:
        if not buffers:
            return
        if self.dataset is not None:
            self.dataset.update_dataset_from_buffer(buffers)
            return
        # create_dataset_from_buffers writes under MINARI_DATASETS_PATH: point it at the temporary root.
        with minari_root(self.tmp_root), warnings.catch_warnings():
            # Minari warns about every optional field left unset (code permalink, eval env, ...).
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            self.dataset = minari.create_dataset_from_buffers(
                self.dataset_id,
                buffers,
                env=self.env,
                data_format="hdf5",
                jpeg_encoding=not self.lossless,
                **self.metadata,
            )

    def commit(self) -> Path:
        """Finish the file (compression), create the namespace if new, and rename the dataset into place."""
        assert self.dataset is not None, "no episode was written"
        tmp_dataset_dir = self.tmp_root / self.dataset_id
        if self.lossless:
            _compress_frames(tmp_dataset_dir / "data" / "main_data.hdf5")
            self.dataset.storage.update_metadata({"dataset_size": self.dataset.storage.get_size()})
        if self.extra_metadata:
            self.dataset.storage.update_metadata(self.extra_metadata)
        match = DATASET_ID_RE.fullmatch(self.dataset_id)
        namespace = match.group("namespace") if match else None
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace)
        try:
            os.rename(tmp_dataset_dir, self.final_path)
        except OSError as e:
            raise UserError(
                f"dataset {self.dataset_id!r} appeared at {self.final_path} during collection"
            ) from e
        return self.final_path


def collect(
    env_id: str,
    dataset_id: str,
    steps: int,
    size: int = 64,
    frame_skip: int = 1,
    policy: str = "random",
    epsilon: float = 0.0,
    seed: int = 0,
    lossless: bool = True,
    chunk_steps: int = DEFAULT_CHUNK_STEPS,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
    post_terminal_steps: int = 0,
    wrappers: list[dict[str, Any]] | None = None,
) -> minari.MinariDataset:
    """Collect ``steps`` env steps of pixel observations into a new local Minari dataset and return it.

    Episode ``i`` resets with seed ``seed + i`` (recorded in the dataset). The last episode is cut at the step
    budget and marked truncated. Memory holds at most ``chunk_steps`` steps plus one episode.
    ``lossless=False`` lets Minari JPEG-encode frames (only frames of at least 32x32). ``progress`` shows a
    bar and prints a summary.

    ``post_terminal_steps`` > 0 keeps stepping the env (with the same policy) that many steps after each
    termination, within the step budget, and records those frames as terminal too: the episode's terminations
    read False up to its first termination and True from there on (an absorbing terminal state). A world model
    trained on them learns what follows a failure (CartPole: the pole keeps falling) and that it stays terminal,
    instead of having to invent frames it never saw once an imagined episode misses its end. The env must
    allow ``step`` after a termination (CartPole does; its rewards there are 0). Training, reset contexts and
    the termination benchmark use each episode up to its first terminal frame where they need "the" end.

    ``wrappers`` (``[{"entry_point": "module:Class", "kwargs": {...}}]``) wrap the env before it is rendered, in
    that order, and are recorded with the dataset (the real env of a model trained on it has them too): e.g.
    Gymnasium's ``AtariPreprocessing`` with ``terminal_on_life_loss=True`` for episodes that end with each life.
    Frames are still the env's renders.

    Example:
        >>> ds = collect("CartPole-v1", "me/cartpole-pixels-v0", steps=1000, size=64)  # doctest: +SKIP
        >>> env = ds.recover_environment()  # the same PixelEnv, kwargs included  # doctest: +SKIP
    """
    # Validate everything cheap before creating the env (which may take seconds, e.g. Atari).
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_FRAME_SIZE:
        raise UserError(f"frame size must be an integer >= {MIN_FRAME_SIZE}, got {size!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0.0 <= epsilon <= 1.0:
        raise UserError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
        raise UserError(f"chunk_steps must be an integer >= 1, got {chunk_steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:  # Gymnasium's reset seeds are >= 0
        raise UserError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(post_terminal_steps, bool) or not isinstance(post_terminal_steps, int) or post_terminal_steps < 0:
        raise UserError(f"post_terminal_steps must be an integer >= 0, got {post_terminal_steps!r}")
    try:
        json.dumps(env_kwargs or {})
    except TypeError as e:
        # The env spec goes into the dataset as JSON; recover_environment() needs it back.
        raise UserError(f"env_kwargs must be JSON-serialisable: {e}") from e
    check_wrappers(wrappers or [])
    check_new_dataset_id(dataset_id)
    if policy != "random" and not (Path(policy).is_file() or Path(f"{policy}.zip").is_file()):
        raise UserError(f"policy file not found: {policy!r} (use 'random' or a path to an SB3 model .zip)")

    from diffusion_world import __version__

    algorithm = "random" if policy == "random" else f"sb3:{Path(policy).name}"
    if epsilon and policy != "random":
        algorithm += f"+epsilon={epsilon}"
    kwargs = dict(env_kwargs or {})
    own_skip = _own_frame_skip(env_id, kwargs, wrappers or [])
    if frame_skip > 1 and own_skip is not None:
        spans = (f"{own_skip * frame_skip} frames" if isinstance(own_skip, int)
                 else f"{frame_skip} times a random {own_skip[0]}-{own_skip[1] - 1} frames")
        warnings.warn(f"the env repeats each action itself ({own_skip}), and frame_skip={frame_skip} repeats each "
                      f"step again: a recorded step spans {spans} (ALE's frameskip is usually the only one: leave "
                      "frame_skip at 1)", stacklevel=2)
    life_loss = [w["entry_point"] for w in wrappers or [] if str(w.get("entry_point", "")).endswith(":EpisodicLifeEnv")
                 or (w.get("kwargs") or {}).get("terminal_on_life_loss")]
    if post_terminal_steps and life_loss:
        warnings.warn(f"post_terminal_steps={post_terminal_steps} with episodes that end at a lost life "
                      f"({life_loss}): play goes on after such an end, and those frames would be recorded as an "
                      "absorbing terminal state", stacklevel=2)
    if "obs_type" in kwargs:
        warnings.warn(f"obs_type={kwargs['obs_type']!r} does not change the recorded frames: collect records the "
                      "env's rgb_array renders, resized to size x size (the world model sees RGB frames); obs_type "
                      "only changes the env state stored with them", stacklevel=2)
    # the dataset records the env's time limit (the registry may not know it later: a "module:Env-vN" env)
    # and the entry point and registered kwargs of an env that a fresh process may not know by its id (one the
    # user's code registered)
    entry_point, registered_kwargs = own_env_registration(env_id)
    env = record_time_limit(make_pixel_env(env_id, size=size, frame_skip=frame_skip, wrappers=wrappers or None,
                                           entry_point=entry_point, registered_kwargs=registered_kwargs or None,
                                           **kwargs))
    started = time.perf_counter()
    num_episodes = 0
    try:
        act = make_policy(policy, env, epsilon=float(epsilon), seed=seed)
        writer = _AtomicDatasetWriter(
            dataset_id,
            env,
            lossless,
            algorithm_name=algorithm,
            author="diffusion_world",
            description=(
                f"{size}x{size} RGB frames of {env_id} (frame_skip={frame_skip}, kwargs={env_kwargs or {}}), "
                f"policy {algorithm}, collected by diffusion_world. Episode i reset with seed {seed}+i."
                + (f" After each termination the env ran {post_terminal_steps} more steps, recorded as terminal "
                   "(absorbing) states." if post_terminal_steps else "")
            ),
            requirements=[f"diffusion-world>={__version__}"],
            # machine-readable: each terminated episode goes on this many steps, all flagged terminated
            extra_metadata={"post_terminal_steps": post_terminal_steps} if post_terminal_steps else None,
        )
        bar = tqdm(total=steps, unit="step", desc=f"collect {env_id}", disable=not progress, smoothing=0.05)
        with writer, bar:
            buffers: list[EpisodeBuffer] = []
            buffered_steps = 0
            frame, info = env.reset(seed=seed)
            frames, actions, rewards, terms, truncs = [frame], [], [], [], []
            tail_left: int | None = None  # post-terminal steps still to record in this episode
            for step in range(steps):
                action = act(frame, info)
                if tail_left is None:
                    frame, reward, terminated, truncated, info = env.step(action)
                    if terminated and post_terminal_steps:
                        tail_left = post_terminal_steps
                else:
                    frame, reward, info = _step_after_termination(env, env_id, action)
                    terminated, truncated = True, False  # absorbing: the env's own flags mean nothing here
                    tail_left -= 1
                last_step = step == steps - 1
                frames.append(frame)
                actions.append(action)
                rewards.append(float(reward))
                terms.append(bool(terminated))
                # The step budget ends the last episode early: a truncation in Gymnasium's sense.
                truncs.append(bool(truncated) or (last_step and not terminated))
                bar.update(1)
                if not ((terminated and not tail_left) or truncated or last_step):
                    continue
                buffers.append(
                    _episode_buffer(
                        seed + num_episodes, frames, actions, rewards, terms, truncs, env.action_space
                    )
                )
                buffered_steps += len(actions)
                num_episodes += 1
                if buffered_steps >= chunk_steps:
                    writer.add(buffers)
                    buffers, buffered_steps = [], 0
                if not last_step:
                    frame, info = env.reset(seed=seed + num_episodes)
                    if hasattr(act, "reset"):  # a frame-stacking agent starts a new stack
                        act.reset()
                    frames, actions, rewards, terms, truncs = [frame], [], [], [], []
                    tail_left = None
            writer.add(buffers)
            final_path = writer.commit()
    finally:
        env.close()

    seconds = time.perf_counter() - started
    if progress:
        disk_mb = _dir_size_bytes(final_path / "data") / 1e6
        print(
            f"Collected {num_episodes} episodes, {steps} steps ({steps + num_episodes} frames, "
            f"{size}x{size}x3 uint8) of {env_id} with policy {algorithm} into Minari dataset {dataset_id!r} "
            f"at {final_path}: "
            f"{disk_mb:.1f} MB on disk ({'lossless' if lossless else 'JPEG'}), {steps / seconds:.0f} steps/s."
        )
    return minari.load_dataset(dataset_id)


def combine(dataset_ids: list[str], new_dataset_id: str) -> minari.MinariDataset:
    """Merge local Minari datasets of the same env into a new one, losslessly and atomically.

    ``minari.combine_datasets`` (Minari 0.5) re-encodes image observations as JPEG (on CartPole 64x64 frames it
    changes 13.8% of the pixel values, by up to 83 levels: ``benchmarks/data_pipeline.py``), and a world model
    trained on them learns the artefacts. This writes raw frames (gzip, as :func:`collect` does) into a hidden
    temporary root and renames the finished dataset into place. Episodes keep their order: all of the first
    dataset, then the next.

    Example:
        >>> combine(["me/cartpole-pixels-v0", "me/cartpole-random-v0"], "me/cartpole-mixed-v0")  # doctest: +SKIP
    """
    from minari.dataset.minari_storage import MinariStorage

    check_new_dataset_id(new_dataset_id)
    if len(dataset_ids) < 2:
        raise UserError(f"combine needs at least two datasets, got {dataset_ids!r}")
    repeated = sorted({d for d in dataset_ids if dataset_ids.count(d) > 1})
    if repeated:
        raise UserError(f"combine got {', '.join(map(repr, repeated))} more than once: its episodes would be "
                        "duplicated (and land in both training and validation)")
    local = set(minari.list_local_datasets())
    missing = [d for d in dataset_ids if d not in local]
    if missing:
        raise UserError(f"no local Minari dataset {missing} (local: {sorted(local)})")
    sources = [load_minari(d) for d in dataset_ids]
    for d, ds in zip(dataset_ids[1:], sources[1:]):
        if ds.observation_space != sources[0].observation_space or ds.action_space != sources[0].action_space:
            raise UserError(f"{d!r} has observation/action spaces {ds.observation_space} / {ds.action_space}, "
                            f"{dataset_ids[0]!r} has {sources[0].observation_space} / {sources[0].action_space}")
        difference = _env_spec_difference(sources[0].spec.env_spec, ds.spec.env_spec, dataset_ids[0], d)
        if difference is not None:
            raise UserError(f"cannot combine {dataset_ids}: env spec differs: {difference}")
    env_spec = _combined_env_spec([ds.spec.env_spec for ds in sources])
    with contextlib.ExitStack() as scratch:
        tmp_root = scratch.enter_context(scratch_dir(dataset_path(""), ".diffusion_world-combine-"))
        data_dir = tmp_root / new_dataset_id / "data"
        data_dir.mkdir(parents=True)
        storage = MinariStorage.new(data_dir, env_spec=env_spec, observation_space=sources[0].observation_space,
                                    action_space=sources[0].action_space, data_format="hdf5", jpeg_encoding=False)
        lossy = sorted({name for d, ds in zip(dataset_ids, sources) if lossy_frames(ds)
                        for name in jpeg_decoded_from(ds) or [d]})
        # which sources record absorbing post-terminal steps (collect --post-terminal-steps), by source
        post_terminal = {k: v for d, ds in zip(dataset_ids, sources)
                         for k, v in (ds.storage.metadata.get("post_terminal_steps_of")
                                      or ({d: ds.storage.metadata["post_terminal_steps"]}
                                          if ds.storage.metadata.get("post_terminal_steps") else {})).items()}
        if post_terminal:
            storage.update_metadata({"post_terminal_steps_of": post_terminal})
        storage.update_metadata({"dataset_id": new_dataset_id, "combined_datasets": list(dataset_ids),
                                 "minari_version": minari.__version__,
                                 **({"jpeg_decoded_from": lossy} if lossy else {})})
        with _InterruptSeen() as interrupt:  # a Ctrl-C inside h5py's object clean-up is otherwise swallowed
            for ds in sources:
                storage.update_from_storage(ds.storage)
                interrupt.check()
            # Minari 0.5 keeps reset seeds (and DataCollector's reward statistics) in episode metadata, which
            # update_from_storage does not carry over: every merged episode lost its seed
            metadata = [{k: _h5_attr(v) for k, v in m.items() if k not in ("id", "total_steps") and v is not None}
                        for ds in sources for m in ds.storage.get_episode_metadata(range(ds.storage.total_episodes))]
            storage.update_episode_metadata(metadata, range(len(metadata)))
            _compress_frames(data_dir / "main_data.hdf5")
            interrupt.check()

        # what the sources say about themselves (update_from_storage keeps only authors)
        def union(key: str) -> list[str]:
            return list(dict.fromkeys(str(v) for ds in sources for v in (
                ds.storage.metadata.get(key) if isinstance(ds.storage.metadata.get(key), list)
                else [ds.storage.metadata.get(key)]) if v))

        described = [f"{d}: {ds.storage.metadata['description']}" for d, ds in zip(dataset_ids, sources)
                     if ds.storage.metadata.get("description")]
        storage.update_metadata({k: v for k, v in {
            "algorithm_name": "; ".join(union("algorithm_name")), "requirements": union("requirements"),
            "description": (f"Combined by diffusion_world from {', '.join(dataset_ids)}. " + " ".join(described)),
        }.items() if v})
        storage.update_metadata({"dataset_size": storage.get_size()})
        match = DATASET_ID_RE.fullmatch(new_dataset_id)
        namespace = match.group("namespace") if match else None
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace)
        try:
            os.rename(tmp_root / new_dataset_id, dataset_path(new_dataset_id))
        except OSError as e:
            raise UserError(f"dataset {new_dataset_id!r} appeared at {dataset_path(new_dataset_id)} meanwhile") from e
    return minari.load_dataset(new_dataset_id)


def _h5_attr(value: Any) -> Any:
    """An episode metadata value as an HDF5 attribute takes it: a seed beyond int64 (DataCollector's unseeded
    resets draw uint64 seeds) as uint64."""
    if isinstance(value, int) and not isinstance(value, bool) and value > np.iinfo(np.int64).max:
        return np.uint64(value)
    return value


class _InterruptSeen:
    """Within it, SIGINT raises KeyboardInterrupt as usual and is also remembered: :meth:`check` raises it again
    where library code swallowed it (an exception raised in a weakref callback is only printed, "Exception ignored
    in ..."), so that Ctrl-C always stops."""

    def __enter__(self) -> _InterruptSeen:
        self.seen, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _own_frame_skip(env_id: str, env_kwargs: dict[str, Any], wrappers: list[dict[str, Any]]
                    ) -> int | tuple[int, int] | None:
    """How many frames the env repeats each action itself, where that is more than one: ALE's ``frameskip`` (given,
    or the id's registered default: 4 for ``ALE/*-v5``, a random 2-4 for ``*-v4``), or an
    ``AtariPreprocessing`` wrapper's ``frame_skip``; None where it does not."""
    skip: Any = env_kwargs.get("frameskip")
    if skip is None:
        try:
            skip = registered_spec(env_id).kwargs.get("frameskip")
        except Exception:  # an unknown id: making the env will say so
            skip = None
    # wrappers that repeat actions themselves: Gymnasium's AtariPreprocessing, SB3's AtariWrapper and MaxAndSkipEnv
    skipping = {":AtariPreprocessing": "frame_skip", ":AtariWrapper": "frame_skip", ":MaxAndSkipEnv": "skip"}
    for w in wrappers:
        key = next((k for suffix, k in skipping.items() if str(w.get("entry_point", "")).endswith(suffix)), None)
        inner = (w.get("kwargs") or {}).get(key, 4) if key else 1
        if not isinstance(inner, int) or inner <= 1:
            continue
        if isinstance(skip, list | tuple) and len(skip) == 2:  # a random skip, each repeated `inner` times
            skip = (int(skip[0]) * inner, (int(skip[1]) - 1) * inner + 1)
        else:
            skip = inner * (skip if isinstance(skip, int) and not isinstance(skip, bool) else 1)
    if isinstance(skip, list | tuple) and len(skip) == 2:
        return int(skip[0]), int(skip[1])
    return int(skip) if isinstance(skip, int) and not isinstance(skip, bool) and skip > 1 else None


def _env_spec_difference(a: EnvSpec | None, b: EnvSpec | None, name_a: str, name_b: str) -> str | None:
    """The first difference between two datasets' env specs, e.g. ``frame_skip 1 in 'me/a-v0' vs 2 in
    'me/b-v0'``; None if they match. ``max_episode_steps`` may differ (the combined dataset takes the larger), and
    a pixel env's ``entry_point`` and ``registered_kwargs`` may be recorded by one and not the other (datasets
    collected before they were recorded have none)."""
    if a is None or b is None:
        return None if a is b else f"{name_b if b is None else name_a!r} records no env spec"
    unset = object()
    # where the env is made (a dataset collected before it was recorded has none): compared only where both have it
    where = {"entry_point", "registered_kwargs"}
    for key in sorted(a.kwargs.keys() | b.kwargs.keys()):
        if key in where and (key not in a.kwargs or key not in b.kwargs):
            continue
        va, vb = a.kwargs.get(key, unset), b.kwargs.get(key, unset)
        if va != vb:
            return (f"{key} {'unset' if va is unset else repr(va)} in {name_a!r} vs "
                    f"{'unset' if vb is unset else repr(vb)} in {name_b!r}")
    for field in dataclasses.fields(a):
        va, vb = getattr(a, field.name), getattr(b, field.name)
        if field.name not in ("kwargs", "max_episode_steps") and va != vb:
            return f"{field.name} {va!r} in {name_a!r} vs {vb!r} in {name_b!r}"
    return None


def _combined_env_spec(specs: list[EnvSpec | None]) -> EnvSpec | None:
    """The env spec of datasets combined (their specs match, as :func:`_env_spec_difference` checks): the one
    that records where to make the env (``entry_point``) if any, with the larger time limit (None if any has none),
    as Minari's ``validate_datasets_to_combine`` gives it."""
    present = [s for s in specs if s is not None]
    if not present:
        return None
    base = next((s for s in present if "entry_point" in s.kwargs), present[0])
    limits = [s.max_episode_steps for s in present]
    known = [limit for limit in limits if limit is not None]
    return dataclasses.replace(base, max_episode_steps=max(known) if len(known) == len(limits) else None)


def _at(observations: Any, t: int) -> Any:
    """Step ``t`` of an episode's observations (an array, or a dict / tuple of them for composite spaces)."""
    if isinstance(observations, dict):
        return {k: _at(v, t) for k, v in observations.items()}
    if isinstance(observations, tuple | list):
        return tuple(_at(v, t) for v in observations)
    return observations[t]


def _is_image(x: np.ndarray) -> bool:
    return x.dtype == np.uint8 and x.ndim >= 2


def _states_match(recorded: Any, replayed: Any, atol: float, exact_images: bool = True) -> bool:
    """Whether a replayed observation is the recorded one (within ``atol``); images recorded lossily (JPEG,
    ``exact_images=False``) only by their shape."""
    if isinstance(recorded, dict):
        return isinstance(replayed, dict) and recorded.keys() == replayed.keys() and all(
            _states_match(recorded[k], replayed[k], atol, exact_images) for k in recorded)
    if isinstance(recorded, tuple):
        return isinstance(replayed, tuple) and len(recorded) == len(replayed) and all(
            _states_match(a, b, atol, exact_images) for a, b in zip(recorded, replayed))
    a, b = np.asarray(recorded), np.asarray(replayed)
    if a.shape != b.shape:
        return False
    return (not exact_images and _is_image(a)) or bool(
        np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=0, atol=atol))


def _leaves(x: Any) -> list[np.ndarray]:
    if isinstance(x, dict):
        return [leaf for v in x.values() for leaf in _leaves(v)]
    if isinstance(x, tuple | list):
        return [leaf for v in x for leaf in _leaves(v)]
    return [np.asarray(x)]


def _replay_episode(env: gym.Env, env_id: str, source_id: str, episode_id: int, seed: int, actions: np.ndarray,
                    observations: Any, atol: float, exact_images: bool = True) -> np.ndarray:
    """The frames of one recorded episode replayed in ``env`` (a ``PixelEnv``), each state checked against the
    recorded observation: (len(actions) + 1, H, W, 3) uint8."""
    frame, info = env.reset(seed=seed)
    frames = [frame]
    for t in range(len(actions) + 1):
        if t:
            frame, _, _, _, info = env.step(actions[t - 1])
            frames.append(frame)
        if not _states_match(_at(observations, t), info["state"], atol, exact_images):
            where = f"episode {episode_id} of {source_id!r} (reset seed {seed}) diverges from its recording at step {t}"
            recorded = _at(observations, t)
            has_state = any(not _is_image(leaf) for leaf in _leaves(recorded))
            if exact_images and has_state and _states_match(recorded, info["state"], atol, exact_images=False):
                raise UserError(f"{where}: its recorded images differ from the replayed ones while the rest of the "
                                f"observation matches: {env_id}'s render() here draws other frames than when it "
                                "was recorded (another version or render settings, or a render() that changes "
                                "with each call)")
            if not has_state:
                raise UserError(f"{where}: its recorded frames differ from the replayed ones; the observations are "
                                f"frames alone, so this may be {env_id} not reproducing the episode from the seed and "
                                "the actions (a stochastic env, another version of it) or its render() drawing other "
                                "frames than when it was recorded (render settings, a render() that changes with "
                                "each call)")
            raise UserError(
                f"{where}: {env_id} here does not reproduce it from the seed and the actions (a stochastic env, or "
                "another version of it than the one that recorded the dataset)")
    return np.stack(frames)


_worker_env: gym.Env | None = None  # one pixel env per render worker process


def _start_render_worker(env_id: str, size: int, env_kwargs: dict[str, Any], wrappers: list[dict[str, Any]],
                         entry_point: str | None = None) -> None:
    global _worker_env
    _worker_env = make_pixel_env(env_id, size=size, wrappers=wrappers, entry_point=entry_point, **env_kwargs)


def _replay_in_worker(job: tuple[Any, ...]) -> np.ndarray:
    assert _worker_env is not None
    with warnings.catch_warnings():  # as in the parent: stepping past a recorded termination warns
        warnings.filterwarnings("ignore", message=".*step.*terminated.*", category=UserWarning)
        return _replay_episode(_worker_env, *job)


def render_dataset(source_id: str, dataset_id: str, size: int = 64, lossless: bool = True,
                   chunk_steps: int = DEFAULT_CHUNK_STEPS, progress: bool = True, atol: float = 1e-4,
                   max_episodes: int | None = None, workers: int = 1) -> minari.MinariDataset:
    """Turn a local Minari dataset of *state* observations into a pixel dataset: each episode is replayed, from
    its recorded reset seed and with its recorded actions, in the env of the dataset's spec, rendered as
    :func:`collect` renders (``PixelEnv``, ``size x size`` frames). Rewards, terminations and truncations are
    the recorded ones.

    Most Minari datasets hold states, not images (MuJoCo, classic control, Box2D): this makes their expert
    and medium-policy episodes world-model data. A replay only reproduces the recording if the env is
    deterministic given its seed and is the version that recorded it, so every replayed state is compared with
    the recorded observation (``atol``), and the first divergence is an error naming the episode and step;
    an episode without a recorded seed cannot be replayed either. Written atomically and losslessly, as
    :func:`collect` writes. ``max_episodes`` renders only the first that many episodes (rendering can be slow:
    MuJoCo without a GPU renders through software OpenGL); ``workers`` > 1 replays episodes in that many
    processes, with the same result.

    Example:
        >>> render_dataset("mujoco/hopper/expert-v0", "me/hopper-pixels-v0", size=64)  # doctest: +SKIP
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_FRAME_SIZE:
        raise UserError(f"frame size must be an integer >= {MIN_FRAME_SIZE}, got {size!r}")
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
        raise UserError(f"chunk_steps must be an integer >= 1, got {chunk_steps!r}")
    if isinstance(atol, bool) or not isinstance(atol, int | float) or not atol >= 0:  # nan too
        raise UserError(f"atol must be a number >= 0, got {atol!r}")
    if max_episodes is not None and (isinstance(max_episodes, bool) or not isinstance(max_episodes, int)
                                     or max_episodes < 1):
        raise UserError(f"max_episodes must be an integer >= 1, got {max_episodes!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    check_new_dataset_id(dataset_id)
    local = set(minari.list_local_datasets())
    if source_id not in local:
        raise UserError(f"no local Minari dataset {source_id!r} (nothing is downloaded: `minari download "
                        f"{source_id}` first; local: {sorted(local)})")
    source = load_minari(source_id)
    spec = source.env_spec
    if spec is None:
        raise UserError(f"dataset {source_id!r} records no env spec: there is no env to replay it in")
    if spec.id == PIXEL_ENV_ID:
        raise UserError(f"dataset {source_id!r} already holds pixel frames (collected by diffusion_world)")
    env_kwargs = {k: v for k, v in dict(spec.kwargs).items() if k != "render_mode"}
    registered = gym.registry.get(spec.id)
    if spec.max_episode_steps is not None and (registered is None
                                               or registered.max_episode_steps != spec.max_episode_steps):
        env_kwargs["max_episode_steps"] = spec.max_episode_steps  # the recording's time limit, not the default
    # wrappers the recording env had (e.g. an action rescaling): the replay goes through the same ones
    wrappers = recorded_wrappers(spec)
    try:
        json.dumps([env_kwargs, wrappers])
    except TypeError as e:
        raise UserError(f"the env spec of {source_id!r} has kwargs that are not JSON-serialisable: {e}") from e
    indices = np.asarray(source.episode_indices, dtype=np.int64)[:max_episodes]
    metas = list(source.storage.get_episode_metadata(indices))
    unseeded = [int(i) for i, m in zip(indices, metas) if m.get("seed") is None]
    if unseeded:
        raise UserError(f"{len(unseeded)} of {len(indices)} episodes of {source_id!r} record no reset seed (first: "
                        f"episode {unseeded[0]}): they cannot be replayed")
    total_steps = int(sum(int(m["total_steps"]) for m in metas))
    # Minari JPEG-encodes image observations by default: recorded frames are then compared by shape only, and
    # the states beside them (a Dict observation) or nothing else check the replay
    exact_images = not getattr(source.storage, "jpeg_encoding", False)
    if not exact_images and all(_is_image(leaf) for leaf in _leaves(_at(next(source.iterate_episodes(indices[:1]))
                                                                          .observations, 0))):
        warnings.warn(f"{source_id!r} stores its observations as JPEG (lossy) images only: the replay cannot be "
                      "checked against them", stacklevel=2)

    from diffusion_world import __version__

    # an env that nothing registers here (a user's module, recorded where it had registered it): its entry point,
    # recorded in the new dataset too, so that its real env can be made again wherever the module imports
    entry_point = spec.entry_point if isinstance(spec.entry_point, str) and spec.id not in gym.registry else None
    env = record_time_limit(make_pixel_env(spec.id, size=size, wrappers=wrappers, entry_point=entry_point,
                                           **env_kwargs))
    started = time.perf_counter()
    try:
        writer = _AtomicDatasetWriter(
            dataset_id, env, lossless, algorithm_name=f"replay of {source_id}", author="diffusion_world",
            description=(f"{size}x{size} RGB frames of {spec.id} (kwargs={env_kwargs}"
                         + (f", wrappers {[w['entry_point'] for w in wrappers]}" if wrappers else "")
                         + f"): the episodes of {source_id} "
                         "replayed from their reset seeds with their recorded actions, rendered by diffusion_world."),
            requirements=[f"diffusion-world>={__version__}"])
        bar = tqdm(total=total_steps, unit="step", desc=f"render {source_id}", disable=not progress, smoothing=0.05)
        episodes = zip(metas, source.iterate_episodes(indices))
        with contextlib.ExitStack() as stack:
            stack.enter_context(writer)
            stack.enter_context(bar)
            stack.enter_context(warnings.catch_warnings())
            # a recording may go on past a termination (absorbing states); Gymnasium warns about that step
            warnings.filterwarnings("ignore", message=".*step.*terminated.*", category=UserWarning)
            pool = None
            if workers > 1:  # each worker process keeps one env (spawned: no forked threads or GL state)
                pool = stack.enter_context(ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_render_worker,
                    initargs=(spec.id, size, env_kwargs, wrappers, entry_point)))
            buffers: list[EpisodeBuffer] = []
            buffered_steps = 0
            while batch := list(itertools.islice(episodes, 4 * workers)):  # each episode read once
                jobs = [(spec.id, source_id, int(episode.id), int(meta["seed"]), episode.actions,
                         episode.observations, atol, exact_images) for meta, episode in batch]
                rendered = pool.map(_replay_in_worker, jobs) if pool else (_replay_episode(env, *j) for j in jobs)
                for (meta, episode), frames in zip(batch, rendered):  # in episode order
                    buffers.append(_episode_buffer(int(meta["seed"]), list(frames), list(episode.actions),
                                                   list(episode.rewards), list(episode.terminations),
                                                   list(episode.truncations), env.action_space))
                    bar.update(len(episode.actions))
                    buffered_steps += len(episode.actions)
                    if buffered_steps >= chunk_steps:
                        writer.add(buffers)
                        buffers, buffered_steps = [], 0
            writer.add(buffers)
            final_path = writer.commit()
    finally:
        env.close()
    if progress:
        seconds = time.perf_counter() - started
        print(f"Rendered {len(indices)} episodes, {total_steps} steps of {source_id!r} ({spec.id}) into "
              f"{size}x{size}x3 uint8 frames: Minari dataset {dataset_id!r} at {final_path}, "
              f"{_dir_size_bytes(final_path / 'data') / 1e6:.1f} MB on disk, {total_steps / seconds:.0f} steps/s.")
    return minari.load_dataset(dataset_id)


def collect_from_args(args: argparse.Namespace) -> minari.MinariDataset:
    """The ``diffusion-world collect`` command: flags override ``--card`` values, which override defaults."""
    env_cfg: dict[str, Any] = {}
    collect_cfg: dict[str, Any] = {}
    if getattr(args, "card", None):
        from diffusion_world.cards import load_card

        card = load_card(args.card)
        env_cfg, collect_cfg = dict(card.env), dict(card.collect)
    env_id = args.env_id or env_cfg.get("id")
    # Card env kwargs and wrappers belong to the card's env: drop them if --env picks another one.
    same_env = env_id == env_cfg.get("id")
    env_kwargs = env_cfg.get("env_kwargs", {}) if same_env else {}
    wrappers = env_cfg.get("wrappers", []) if same_env else []

    def pick(flag: Any, key: str, cfg: dict[str, Any], default: Any) -> Any:
        return flag if flag is not None else cfg.get(key, default)

    dataset_id = pick(args.dataset_id, "dataset_id", collect_cfg, None)
    steps = pick(args.steps, "steps", collect_cfg, None)
    for value, flag in ((env_id, "--env"), (dataset_id, "--dataset-id"), (steps, "--steps")):
        if value is None:
            raise UserError(f"{flag} is required (or give a --card that sets it)")
    assert env_id is not None
    return collect(
        env_id=env_id,
        dataset_id=dataset_id,
        steps=steps,
        size=pick(args.size, "size", env_cfg, 64),
        frame_skip=pick(args.frame_skip, "frame_skip", env_cfg, 1),
        policy=pick(args.policy, "policy", collect_cfg, "random"),
        epsilon=pick(args.epsilon, "epsilon", collect_cfg, 0.0),
        seed=pick(args.seed, "seed", collect_cfg, 0),
        lossless=False if args.jpeg else collect_cfg.get("lossless", True),
        chunk_steps=pick(getattr(args, "chunk_steps", None), "chunk_steps", collect_cfg, DEFAULT_CHUNK_STEPS),
        progress=not getattr(args, "quiet", False),
        env_kwargs=env_kwargs,
        post_terminal_steps=pick(getattr(args, "post_terminal_steps", None), "post_terminal_steps", collect_cfg, 0),
        wrappers=wrappers,
    )
