"""Training data: a Minari image dataset as one contiguous memory-mapped frame array, sampled in windows.

``FrameCache.open`` converts a dataset once into ``.npy`` files (frames memory-mapped, the rest small) next to
the dataset, keyed by a fingerprint of its files, and reopens them afterwards. Per-frame arrays are aligned
the way the model consumes them: frame ``i`` comes with the action that *led to it* and the reward/termination
of that transition (an episode's first frame has none). ``WindowSampler`` draws windows of ``seq_len`` frames
of one episode (optionally running past its end, padded and masked); a batch is one fancy-indexing gather, no
Python loop.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from minari.dataset.minari_dataset import DATASET_ID_RE
from minari.serialization import deserialize_space, serialize_space
from tqdm.auto import tqdm

from diffusion_world.data.pixel_env import MIN_FRAME_SIZE, recorded_wrappers, resize_frame
from diffusion_world.errors import UserError
from diffusion_world.files import scratch_dir
from diffusion_world.registration import PIXEL_ENV_ID

CACHE_DIR_NAME = "diffusion_world_cache"
# Bump when the cache layout or its alignment conventions change: old caches are then rebuilt.
# 2: env_spec records additional_wrappers; 3: lossy_frames (warned at every open); 4: env_spec records entry_point;
# 5: rewards and actions checked (a cache built before from a NaN reward would go on training on it)
CACHE_FORMAT_VERSION = 5
_ARRAYS = (
    "prev_actions",
    "has_prev_action",
    "rewards",
    "terminations",
    "truncations",
    "episode_starts",
    "episode_lengths",
    "episode_ids",
    "episode_seeds",
)


CACHE_ENV = "DIFFUSION_WORLD_CACHE_DIR"  # where frame caches go instead of next to their datasets


def user_cache_root() -> Path:
    """Where frame caches go when a dataset's own folder cannot be written (a shared, read-only dataset store):
    ``$XDG_CACHE_HOME/diffusion_world`` (default ``~/.cache/diffusion_world``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").absolute() / "diffusion_world"


def validate_dataset_id(dataset_id: str) -> None:
    """Check Minari's ``(NAMESPACE/)NAME-vN`` id format, version required (Minari cannot parse ids without).

    >>> validate_dataset_id("diffusion_world/cartpole-pixels-v0")
    """
    match = DATASET_ID_RE.fullmatch(dataset_id) if isinstance(dataset_id, str) else None
    if match is None or match.group("version") is None:
        raise UserError(
            f"invalid dataset id {dataset_id!r}: expected NAMESPACE/NAME-vN, e.g. 'me/cartpole-v0'"
        )


def minari_datasets_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets").absolute()


def _fingerprint(data_dir: Path) -> str:
    """Names, sizes and modification times of the dataset's files: any write to the dataset changes it."""
    digest = hashlib.sha256(f"format={CACHE_FORMAT_VERSION}".encode())
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(data_dir)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _check_image_space(dataset_id: str, space: gym.Space, frame_size: int | None = None) -> gym.spaces.Box:
    """The dataset's image space: (H, W, 3) uint8 as it is, or, when its frames are to be resized to
    ``frame_size``, any uint8 image (grey (H, W) or (H, W, 1), RGB, RGBA)."""
    shape = tuple(space.shape) if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 else ()
    rgb = len(shape) == 3 and shape[2] == 3
    image = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))
    if rgb if frame_size is None else image:
        assert isinstance(space, gym.spaces.Box)
        if not _full_uint8_range(space):  # e.g. a 0/1 mask: as frames it would be all but black
            raise UserError(f"dataset {dataset_id!r} has observation space {space}: its bounds are not 0 and 255, "
                            "so its values are not image levels; record frames scaled to 0-255")
        return space
    states = (f"; if it holds states, render them into frames: `diffusion-world render {dataset_id} --dataset-id NEW` "
              "(it replays each episode from its recorded reset seed: `diffusion-world info` says whether it can)")
    if _image_shaped(space):  # float images, e.g. in [0, 1]: not states to render
        states = "; its images are not uint8: record them as levels 0-255 in uint8 (e.g. a [0, 1] float x * 255)"
    elif isinstance(space, gym.spaces.Dict) and (keys := [k for k, v in space.spaces.items() if _image_shaped(v)]):
        states = (f"; its observations are a Dict with images under {keys}: diffusion_world trains on frames alone, "
                  f"so render its episodes into frames, `diffusion-world render {dataset_id} --dataset-id NEW` (it "
                  "replays each from its recorded reset seed, checking the states), or record a dataset whose "
                  "observations are those frames")
    shown = " ".join(str(space).split())  # a Box's bounds print on several lines: one-line messages
    if frame_size is None:
        hint = ("; resize its frames into N x N RGB frames with `diffusion-world train --frame-size N` "
                "([train] frame_size in a card)" if image else states)
        raise UserError(f"dataset {dataset_id!r} has observation space {shown}; diffusion_world needs image "
                        f"observations Box(0, 255, (H, W, 3), uint8){hint}")
    raise UserError(f"dataset {dataset_id!r} has observation space {shown}; resizing its frames needs uint8 images "
                    f"Box(0, 255, (H, W) or (H, W, C), uint8) with C = 1, 3 or 4{states}")


def _image_shaped(space: gym.Space) -> bool:
    """A Box of any dtype shaped as an image: (H, W) or (H, W, C) with C = 1, 3 or 4, H and W of 8 or more."""
    shape = tuple(space.shape) if isinstance(space, gym.spaces.Box) else ()
    return len(shape) in (2, 3) and min(shape[:2]) >= 8 and (len(shape) == 2 or shape[2] in (1, 3, 4))


def _full_uint8_range(space: gym.spaces.Box) -> bool:
    """Whether a uint8 Box spans the image levels 0-255 (as Minari's ``is_image_space`` requires)."""
    return bool(np.all(space.low == 0)) and bool(np.all(space.high == 255))


def _action_dtype(dataset_id: str, space: gym.Space) -> tuple[np.dtype, tuple[int, ...]]:
    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise UserError(f"dataset {dataset_id!r} has action space {space}: Discrete spaces with a non-zero start "
                            "are not supported (record the actions as 0 .. n-1)")
        return np.dtype(np.int64), ()
    if isinstance(space, gym.spaces.Box):
        if space.shape == ():
            raise UserError(f"dataset {dataset_id!r} has action space {space}: Box actions need at least one "
                            "dimension (record a scalar action as shape (1,))")
        return np.dtype(np.float32), tuple(space.shape)
    raise UserError(f"dataset {dataset_id!r} has action space {space}; only Discrete and Box are supported")


def _env_spec_dict(env_spec: Any) -> dict[str, Any] | None:
    """``{"id": ..., **kwargs}`` (plus ``max_episode_steps`` if set, ``additional_wrappers``, the wrappers the
    recording env had beyond ``gym.make``'s, if any, and the env's ``entry_point``, which makes it again where its
    id is not registered: an env of the user's own module), or None when not JSON-serialisable."""
    if env_spec is None:
        return None
    spec = {"id": env_spec.id, **dict(env_spec.kwargs)}
    if isinstance(env_spec.entry_point, str) and env_spec.id != PIXEL_ENV_ID:
        spec["entry_point"] = env_spec.entry_point
    if env_spec.max_episode_steps is not None:
        spec["max_episode_steps"] = env_spec.max_episode_steps
    if recorded_wrappers(env_spec):
        spec["additional_wrappers"] = recorded_wrappers(env_spec)
    try:
        json.dumps(spec)
    except TypeError:
        return None
    return spec


class FrameCache:
    """All episodes of a Minari image dataset as contiguous memory-mapped arrays (built once, then reopened).

    Layout: ``frames[i]`` is a ``(H, W, 3)`` uint8 frame; episode ``e`` owns frames
    ``episode_starts[e] : episode_starts[e] + episode_lengths[e]`` (an episode of L steps has L+1 frames).
    ``prev_actions[i]``, ``rewards[i]``, ``terminations[i]``, ``truncations[i]`` describe the transition
    *into*
    frame ``i``; ``has_prev_action[i]`` is False (and the others zero) for an episode's first frame.
    ``env_spec`` rebuilds the env: ``gym.make(spec["id"], **kwargs)`` with the other keys but
    ``additional_wrappers``, in those wrappers (``diffusion_world.envs.make_real_env`` does it).

    Example:
        >>> cache = FrameCache.open("diffusion_world/cartpole-pixels-v0")  # doctest: +SKIP
        >>> cache.frames.shape, cache.frame_size  # doctest: +SKIP
        ((10084, 64, 64, 3), (64, 64))
        >>> train_episodes, val_episodes = cache.episode_split(val_fraction=0.1, seed=0)  # doctest: +SKIP
    """

    dataset_id: str
    frames: np.ndarray
    prev_actions: np.ndarray
    has_prev_action: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    episode_starts: np.ndarray
    episode_lengths: np.ndarray
    episode_ids: np.ndarray
    episode_seeds: np.ndarray
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Space
    frame_size: tuple[int, int]
    env_spec: dict[str, Any] | None
    resized_from: tuple[int, ...] | None  # the dataset's own frame shape when the cache holds resized frames
    directory: Path

    def __init__(self, directory: str | os.PathLike) -> None:
        """Open an existing cache directory (use :meth:`open`, which builds it when needed)."""
        self.directory = Path(directory)
        meta = json.loads((self.directory / "meta.json").read_text())
        self.dataset_id = meta["dataset_id"]
        self.fingerprint = meta["fingerprint"]
        self.observation_space = deserialize_space(meta["observation_space"])
        self.action_space = deserialize_space(meta["action_space"])
        self.env_spec = meta["env_spec"]
        self.resized_from = None if meta.get("resized_from") is None else tuple(meta["resized_from"])
        self.lossy_frames: str | None = meta.get("lossy_frames")  # why the frames are lossy (JPEG), if they are
        self.frames = np.load(self.directory / "frames.npy", mmap_mode="r")
        for name in _ARRAYS:
            setattr(self, name, np.load(self.directory / f"{name}.npy"))
        self.frame_size = (int(self.frames.shape[1]), int(self.frames.shape[2]))

    @classmethod
    def open(
        cls, dataset_id: str, cache_dir: str | os.PathLike | None = None, progress: bool = True,
        frame_size: int | None = None,
    ) -> FrameCache:
        """Open the cache of a local Minari dataset, building it first if missing or out of date.

        ``frame_size`` N resizes every frame to (N, N, 3) with OpenCV ``INTER_AREA`` (``resize_frame``, as
        ``PixelEnv`` renders), for datasets whose frames are too large, not square, grey or RGBA (e.g. Minari's
        210x160 Atari datasets); None keeps the dataset's own (H, W, 3) frames.
        The default ``cache_dir`` is ``<MINARI_DATASETS_PATH or
        ~/.minari/datasets>/<dataset_id>/diffusion_world_cache`` (``diffusion_world_cache_<N>px`` when resized),
        or ``$DIFFUSION_WORLD_CACHE_DIR/<dataset_id>/...`` when that is set; where the dataset's folder cannot be
        written, ``~/.cache/diffusion_world/<dataset_id>/...`` (:func:`user_cache_root`, with a warning).
        The build is written to a temporary directory and renamed into place, so concurrent openers (e.g. DDP
        ranks) and interrupted builds never see a partial cache.
        """
        dataset_dir = minari_datasets_root() / dataset_id
        data_dir = dataset_dir / "data"
        if not data_dir.is_dir():
            validate_dataset_id(dataset_id)  # a typo in the format is said as such, not as "not found"
            where = (f"MINARI_DATASETS_PATH={minari_datasets_root()}" if os.environ.get("MINARI_DATASETS_PATH")
                     else f"the default Minari root {minari_datasets_root()} (MINARI_DATASETS_PATH is unset)")
            raise UserError(
                f"Minari dataset {dataset_id!r} not found in {where} "
                "(nothing is downloaded: collect it with `diffusion-world collect` or copy it there)"
            )
        if frame_size is not None and (isinstance(frame_size, bool) or not isinstance(frame_size, int)
                                       or frame_size < MIN_FRAME_SIZE):
            raise UserError(f"frame_size must be an integer >= {MIN_FRAME_SIZE} (or None: the dataset's own "
                            f"frames), got {frame_size!r}")
        fingerprint = _fingerprint(data_dir) + ("" if frame_size is None else f"-{frame_size}px")
        name = CACHE_DIR_NAME if frame_size is None else f"{CACHE_DIR_NAME}_{frame_size}px"
        if cache_dir is None and os.environ.get(CACHE_ENV):
            cache_dir = Path(os.environ[CACHE_ENV]) / dataset_id / name
        directory = Path(cache_dir) if cache_dir is not None else dataset_dir / name
        fallback = user_cache_root() / dataset_id / name  # where a dataset folder that cannot be written caches
        if cache_dir is None and not _cache_matches(directory, fingerprint) and _cache_matches(fallback, fingerprint):
            directory = fallback
        if not _cache_matches(directory, fingerprint):
            try:
                _build_cache(dataset_id, directory, fingerprint, progress, frame_size)
            except OSError as e:
                if cache_dir is not None or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                warnings.warn(f"cannot write the frame cache next to dataset {dataset_id!r} ({e.strerror}): it goes "
                              f"to {fallback} (set {CACHE_ENV} to choose where)", stacklevel=2)
                directory = fallback
                _build_cache(dataset_id, directory, fingerprint, progress, frame_size)
        cache = cls(directory)
        if cache.lossy_frames:  # every time, not only when the cache is built: a second run must say it too
            warnings.warn(cache.lossy_frames, stacklevel=2)
        return cache

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.shape[0])

    @property
    def live_lengths(self) -> np.ndarray:
        """Per episode, its frames up to and including its first terminal frame (all of them when it has
        none). Equal to ``episode_lengths`` unless frames after a termination were recorded as terminal too
        (``collect(post_terminal_steps=...)``): where "the" end of an episode matters (reset contexts, the
        termination benchmark, oversampled terminal windows) it is the first terminal frame."""
        if getattr(self, "_live_lengths", None) is None:
            starts, lengths = self.episode_starts, self.episode_lengths
            terminal = np.flatnonzero(np.asarray(self.terminations))
            episode = np.searchsorted(starts, terminal, side="right") - 1
            episodes, first = np.unique(episode, return_index=True)  # terminal is sorted: first hit per episode
            live = lengths.copy()
            live[episodes] = terminal[first] - starts[episodes] + 1
            self._live_lengths = live
        return self._live_lengths

    def episode_split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic episode-level split into sorted ``(train, val)`` episode indices.

        ``round(E * val_fraction)`` validation episodes, at least one when ``E >= 2`` and
        ``val_fraction > 0``, and never all of them.

        Example:
            >>> train, val = cache.episode_split(0.1, seed=0)  # doctest: +SKIP
            >>> WindowSampler(cache, seq_len=16, episodes=train)  # doctest: +SKIP
        """
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        num = self.num_episodes
        num_val = 0
        if val_fraction > 0 and num >= 2:
            num_val = min(max(1, round(num * val_fraction)), num - 1)
        order = np.random.default_rng(seed).permutation(num)
        return np.sort(order[num_val:]).astype(np.int64), np.sort(order[:num_val]).astype(np.int64)

    def __repr__(self) -> str:
        return (
            f"FrameCache({self.dataset_id!r}, {self.num_episodes} episodes, {self.num_frames} frames of "
            f"{self.frame_size[0]}x{self.frame_size[1]}, actions {self.action_space})"
        )


def _cache_matches(directory: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("fingerprint") == fingerprint and meta.get("format") == CACHE_FORMAT_VERSION


def jpeg_decoded_from(dataset: Any) -> list[str]:
    """The JPEG-encoded datasets whose decoded frames a dataset made by ``combine`` holds (stored losslessly,
    artefacts and all)."""
    return list(dataset.storage.metadata.get("jpeg_decoded_from") or [])


def lossy_frames(dataset: Any) -> bool:
    """Whether a dataset's frames went through JPEG: stored that way, or combined from datasets that were."""
    return (bool(getattr(dataset.storage, "jpeg_encoding", False)) and _jpeg_encoded(dataset)) or \
        bool(jpeg_decoded_from(dataset))


def _jpeg_encoded(dataset: Any) -> bool:
    """Whether the first episode's frames are stored as JPEG bytes (Minari writes image spaces of at least
    32x32 that way when its storage says ``jpeg_encoding``; smaller ones stay raw): variable-length bytes, or a
    uint8 ``(steps, nbytes)`` array where every frame's bytes have one length (static scenes, short episodes)."""
    import h5py

    path = Path(dataset.storage.data_path) / "main_data.hdf5"
    if not path.exists():  # another storage format (Arrow): what its metadata says, for the spaces Minari encodes
        space = dataset.observation_space
        return (bool(getattr(dataset.storage, "jpeg_encoding", False)) and isinstance(space, gym.spaces.Box)
                and len(space.shape) in (2, 3) and min(space.shape[:2]) >= 32 and _full_uint8_range(space))
    try:
        with h5py.File(path, "r") as f:
            observations = next(iter(f.values()))["observations"]
            return observations.dtype.kind == "O" or \
                tuple(observations.shape[1:]) != tuple(dataset.observation_space.shape or ())
    except (OSError, KeyError, StopIteration, TypeError, AttributeError):
        return False


def load_minari(dataset_id: str) -> Any:
    """``minari.load_dataset``, with a one-line :class:`UserError` for a dataset it cannot read (a truncated or
    damaged HDF5 file, missing metadata)."""
    import minari

    try:
        dataset = minari.load_dataset(dataset_id)
        h5 = Path(dataset.storage.data_path) / "main_data.hdf5"
        if h5.exists():  # Minari reads its metadata.json here, and the frames only later
            import h5py

            h5py.File(h5, "r").close()
    except (ValueError, KeyError, AssertionError, OSError) as e:
        raise UserError(f"cannot read Minari dataset {dataset_id!r}: {(str(e).splitlines() or [repr(e)])[0]}") from e
    return dataset


def _build_cache(dataset_id: str, directory: Path, fingerprint: str, progress: bool,
                 frame_size: int | None = None) -> None:

    dataset = load_minari(dataset_id)
    source_space = _check_image_space(dataset_id, dataset.observation_space, frame_size)
    obs_space = source_space if frame_size is None else gym.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8)
    lossy = None
    if getattr(dataset.storage, "jpeg_encoding", False) and _jpeg_encoded(dataset):
        lossy = (f"dataset {dataset_id!r} stores its frames JPEG-encoded (lossy): a world model trained on "
                 "it learns the compression artefacts. If you made it: collect without --jpeg (minari.DataCollector, "
                 "create_dataset_from_buffers: jpeg_encoding=False), and merge datasets with "
                 "`diffusion-world combine` (minari.combine_datasets re-encodes frames as JPEG).")
    elif jpeg_decoded_from(dataset):
        lossy = (f"dataset {dataset_id!r} was combined from JPEG-encoded (lossy) datasets "
                 f"{jpeg_decoded_from(dataset)}: their frames keep the compression artefacts, which a world model "
                 "trained on it learns.")
    action_dtype, action_shape = _action_dtype(dataset_id, dataset.action_space)
    indices = np.asarray(dataset.episode_indices, dtype=np.int64)
    if indices.size == 0:
        raise UserError(f"dataset {dataset_id!r} has no episodes")
    metas = list(dataset.storage.get_episode_metadata(indices))
    lengths = np.array([int(m["total_steps"]) + 1 for m in metas], dtype=np.int64)
    # -1: no seed, or one beyond int64 (Minari's DataCollector draws uint64 seeds when reset is not seeded); the
    # seeds are only reported, as the range of held-out episodes that collect can collect again
    seeds = np.array([int(m["seed"]) if m.get("seed") is not None and int(m["seed"]) <= np.iinfo(np.int64).max
                      else -1 for m in metas], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    num_frames = int(lengths.sum())

    directory.parent.mkdir(parents=True, exist_ok=True)
    # a folder of its own, renamed into place when complete (removed by the next build if this one is killed)
    with scratch_dir(directory.parent, f".{directory.name}.tmp-") as tmp:
        frames = np.lib.format.open_memmap(
            tmp / "frames.npy", mode="w+", dtype=np.uint8, shape=(num_frames, *obs_space.shape)
        )
        arrays = {
            "prev_actions": np.zeros((num_frames, *action_shape), dtype=action_dtype),
            "has_prev_action": np.ones(num_frames, dtype=bool),
            "rewards": np.zeros(num_frames, dtype=np.float32),
            "terminations": np.zeros(num_frames, dtype=bool),
            "truncations": np.zeros(num_frames, dtype=bool),
        }
        arrays["has_prev_action"][starts] = False
        episodes = dataset.iterate_episodes(indices)
        bar = tqdm(
            episodes, total=len(indices), unit="episode", desc=f"cache {dataset_id}", disable=not progress
        )
        for episode, start, length in zip(bar, starts, lengths):  # the bar first: it counts the last one too
            observations = np.asarray(episode.observations)
            if observations.shape != (length, *source_space.shape):
                raise UserError(
                    f"dataset {dataset_id!r} episode {episode.id}: observations {observations.shape}, "
                    f"expected {(length, *source_space.shape)}"
                )
            if frame_size is None:
                frames[start : start + length] = observations
            else:
                for i, image in enumerate(observations):
                    frames[start + i] = resize_frame(image, frame_size)
            # Transition t (action t, reward t) leads from frame t to frame t+1 of the episode.
            steps = slice(start + 1, start + length)
            actions = np.asarray(episode.actions).reshape(length - 1, *action_shape)
            _check_steps(dataset_id, episode.id, dataset.action_space, actions, np.asarray(episode.rewards))
            arrays["prev_actions"][steps] = actions
            arrays["rewards"][steps] = episode.rewards
            arrays["terminations"][steps] = episode.terminations
            arrays["truncations"][steps] = episode.truncations
        frames.flush()
        del frames
        arrays.update(
            episode_starts=starts, episode_lengths=lengths, episode_ids=indices, episode_seeds=seeds
        )
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", arrays[name])
        meta = {
            "format": CACHE_FORMAT_VERSION,
            "dataset_id": dataset_id,
            "fingerprint": fingerprint,
            "observation_space": serialize_space(obs_space),
            "resized_from": None if frame_size is None else list(source_space.shape),
            "action_space": serialize_space(dataset.action_space),
            "env_spec": _env_spec_dict(dataset.env_spec),
            "num_frames": num_frames,
            "num_episodes": int(len(indices)),
            "lossy_frames": lossy,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _install(tmp, directory, fingerprint)


def _check_steps(dataset_id: str, episode_id: Any, space: gym.Space, actions: np.ndarray, rewards: np.ndarray
                 ) -> None:
    """A UserError naming the first step of an episode whose reward is not finite (NaN made every imagined reward
    NaN) or whose action is not in the action space (Minari does not check them: a Discrete action n trained as
    the model's "no action", a negative one crashed in the model)."""
    where = f"dataset {dataset_id!r} episode {episode_id}"
    with np.errstate(over="ignore"):  # as the cache stores them: a float64 beyond float32's range is inf there
        rewards32 = rewards.astype(np.float32)
        actions32 = None if isinstance(space, gym.spaces.Discrete) else actions.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(rewards32))
    if len(bad):
        raise UserError(f"{where}: reward {rewards[bad[0]]} at step {bad[0]}: rewards must be finite in float32")
    if isinstance(space, gym.spaces.Discrete):
        bad = np.flatnonzero((actions < 0) | (actions >= int(space.n)) | (actions != np.round(actions)))
        if len(bad):
            raise UserError(f"{where}: action {actions[bad[0]]} at step {bad[0]} is not in the action space {space}")
    else:
        assert actions32 is not None
        bad = np.flatnonzero(~np.isfinite(actions32).all(axis=tuple(range(1, actions.ndim))))
        if len(bad):
            raise UserError(f"{where}: action {actions[bad[0]].tolist()} at step {bad[0]} is not finite in float32")


def _install(tmp: Path, directory: Path, fingerprint: str) -> None:
    """Rename a finished cache into place, replacing a stale one; a concurrent builder may have won."""
    if directory.exists():
        if _cache_matches(directory, fingerprint):
            return
        # Readers of the stale cache keep their open memmaps (Linux unlinks lazily).
        stale = directory.parent / f".{directory.name}.stale-{uuid.uuid4().hex[:12]}"
        os.rename(directory, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, directory)
    except OSError:
        if not _cache_matches(directory, fingerprint):
            raise


class WindowSampler:
    """Windows of ``seq_len`` consecutive frames of one episode, sampled uniformly over all windows.

    By default a window lies inside its episode, and episodes shorter than ``seq_len`` frames are excluded
    (counted in ``num_excluded_episodes``, with one warning). With ``pad_ends=True`` a window may start at
    any frame and run past its episode's end: the positions after the end repeat the last frame, have no
    action, reward or termination, and are marked ``valid = False`` so that the loss ignores them (the model
    is causal: they never change the outputs at earlier positions). Then every frame, the terminal one
    included, appears at every position of a window, and no episode is too short.

    ``terminal_fraction`` > 0 replaces each sampled window, with that probability, by one that contains a
    termination (drawn uniformly among those; with ``pad_ends`` the termination is equally often at every
    position). Terminations are one frame per terminated episode, so uniform windows rarely show one. (With
    frames recorded after a termination, ``collect(post_terminal_steps=...)``, these are the windows that
    contain an episode's first terminal frame.) Each window then comes with the importance weight that undoes
    the oversampling, ``termination_weights``: its probability under uniform windows over its probability as
    sampled, for all its frames. The termination and reward losses weigh frames by it, so that their expectations
    are those of uniform windows, frame by frame and position by position (the causal model's output at a frame
    depends on the context before it), and the heads learn the data's probability of termination and rewards,
    not the sampler's: oversampling windows that contain a termination also oversamples the terminal instances
    of a look-alike state (a pole at its limit), not the others.

    Batches are dicts of numpy arrays: ``frames`` (B, T, H, W, 3) uint8, ``actions`` (B, T) int64 or
    (B, T, *shape) float32 (the action that led to each frame), ``has_action`` (B, T) bool, ``rewards``
    (B, T) float32, ``terminations`` (B, T) bool, ``valid`` (B, T) bool (the frame belongs to the episode),
    ``termination_weights`` (B, T) float32 (1 without oversampling, 0 where not valid), ``window_starts`` (B,)
    int64 (each window's first frame in ``cache.frames``).

    Example:
        >>> sampler = WindowSampler(cache, seq_len=16, episodes=train_episodes)  # doctest: +SKIP
        >>> batch = sampler.sample(32, np.random.default_rng(0))  # doctest: +SKIP
        >>> batch["frames"].shape  # doctest: +SKIP
        (32, 16, 64, 64, 3)
    """

    def __init__(self, cache: FrameCache, seq_len: int, episodes: np.ndarray | None = None,
                 pad_ends: bool = False, terminal_fraction: float = 0.0) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
            raise UserError(f"seq_len must be an integer >= 1, got {seq_len!r}")
        if not 0.0 <= terminal_fraction < 1.0:
            raise UserError(f"terminal_fraction must be in [0, 1), got {terminal_fraction!r}")
        self.cache = cache
        self.seq_len = int(seq_len)
        self.pad_ends = bool(pad_ends)
        self.terminal_fraction = float(terminal_fraction)
        episodes = np.arange(cache.num_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if episodes.size == 0:
            raise UserError("WindowSampler needs at least one episode")
        lengths = cache.episode_lengths[episodes]
        if self.seq_len > lengths.max():  # even with padding: such windows would be mostly padding
            raise UserError(f"no episode of {cache.dataset_id!r} in this split ({len(episodes)} episodes) has "
                            f"{self.seq_len} frames (longest: {int(lengths.max())}); lower seq_len (--seq-len)")
        long_enough = np.ones_like(lengths, dtype=bool) if self.pad_ends else lengths >= self.seq_len
        self.episodes = episodes[long_enough]
        self.num_excluded_episodes = int((~long_enough).sum())
        if self.num_excluded_episodes:
            warnings.warn(
                f"{self.num_excluded_episodes} of {episodes.size} episodes of {cache.dataset_id!r} are "
                f"shorter than seq_len={self.seq_len} frames and are excluded from sampling (pad_ends=True "
                "keeps them)",
                stacklevel=2,
            )
        lengths = lengths[long_enough]
        counts = lengths if self.pad_ends else lengths - self.seq_len + 1  # windows per episode
        # window_starts = concat(arange(start_e, start_e + count_e)), without a Python loop over episodes.
        offsets = np.cumsum(counts) - counts
        starts = cache.episode_starts[self.episodes]
        self.window_starts = (np.repeat(starts - offsets, counts) + np.arange(counts.sum())).astype(np.int64)
        self.window_ends = np.repeat(starts + lengths, counts).astype(np.int64)  # one past the episode's end
        self.num_windows = int(self.window_starts.shape[0])
        self._steps = np.arange(self.seq_len, dtype=np.int64)
        # The windows that contain an episode's first terminal frame (its last one, unless frames after the
        # termination were recorded as terminal too)
        end = np.repeat(starts + cache.live_lengths[self.episodes], counts).astype(np.int64) - 1
        covers_end = (self.window_starts <= end) & (end < self.window_starts + self.seq_len)
        self.terminal_windows = np.flatnonzero(covers_end & np.asarray(cache.terminations)[end]).astype(np.int64)
        if self.terminal_fraction and not self.terminal_windows.size:
            warnings.warn(f"terminal_fraction={self.terminal_fraction}, but the episodes of "
                          f"{cache.dataset_id!r} have no termination: windows are sampled uniformly", stacklevel=2)
        # Per window: its probability under uniform windows over its probability as sampled, (1/N) / ((1 - f) / N
        # + f / |terminal| if terminal), given to all its frames; None without oversampling
        self._window_weights: np.ndarray | None = None
        if self.terminal_fraction and self.terminal_windows.size:
            f, share = self.terminal_fraction, self.terminal_windows.size / self.num_windows
            self._window_weights = np.full(self.num_windows, 1 / (1 - f), dtype=np.float32)
            self._window_weights[self.terminal_windows] = 1 / (1 - f + f / share)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``batch_size`` windows drawn with replacement: uniformly, or with ``terminal_fraction`` of them
        (in expectation) containing a termination."""
        indices = rng.integers(0, self.num_windows, size=batch_size)
        if self.terminal_fraction and self.terminal_windows.size:
            swap = rng.random(batch_size) < self.terminal_fraction
            indices[swap] = self.terminal_windows[rng.integers(0, self.terminal_windows.size, size=int(swap.sum()))]
        return self.get(indices)

    def termination_rate(self) -> float:
        """The share of terminations among the valid frames that :meth:`sample` yields, in expectation, as the
        termination loss weighs them (``termination_weights``): that of uniformly sampled windows."""
        valid = np.minimum(self.window_ends - self.window_starts, self.seq_len)
        counted = np.concatenate([[0], np.cumsum(np.asarray(self.cache.terminations, dtype=np.int64))])
        positives = (counted[self.window_starts + valid] - counted[self.window_starts]).astype(np.float64)
        valid = valid.astype(np.float64)
        return float(positives.mean() / valid.mean())

    def get(self, window_indices: np.ndarray) -> dict[str, np.ndarray]:
        """The windows with the given indices in ``[0, num_windows)``, in that order."""
        window_indices = np.asarray(window_indices, dtype=np.int64)
        starts = self.window_starts[window_indices]
        frame_indices = starts[:, None] + self._steps  # (B, T)
        ends = self.window_ends[window_indices][:, None]
        valid = frame_indices < ends
        frame_indices = np.minimum(frame_indices, ends - 1)  # padding repeats the episode's last frame
        cache = self.cache
        actions = cache.prev_actions[frame_indices]
        if not valid.all():
            actions[~valid] = 0
        weights = valid.astype(np.float32)
        if self._window_weights is not None:
            weights *= self._window_weights[window_indices][:, None]
        return {
            "frames": cache.frames[frame_indices],
            "actions": actions,
            "has_action": cache.has_prev_action[frame_indices] & valid,
            "rewards": np.where(valid, cache.rewards[frame_indices], np.float32(0)),
            "terminations": cache.terminations[frame_indices] & valid,
            "valid": valid,
            "termination_weights": weights,
            "window_starts": starts,
        }

    def __len__(self) -> int:
        return self.num_windows
