"""Shared fixtures. Every test runs with MINARI_DATASETS_PATH in a temporary directory (never ~/.minari).

- ``tiny_dataset_id``: a CartPole pixel dataset (16x16 frames, 300 steps, seed 0) built once per session in
  the session's Minari root. Treat it as read-only (a ``FrameCache`` may be built next to it).
- ``minari_root``: a fresh, empty Minari root for one test (the session datasets are not visible from it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

TINY_ENV_ID = "CartPole-v1"
TINY_DATASET_ID = "diffusion_world_test/cartpole-tiny-v0"
TINY_SIZE = 16
TINY_STEPS = 300
TINY_SEED = 0
NO_RENDER_ENV_ID = "diffusion_world_test/NoRender-v0"


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Tests use tiny models, which gain nothing from intra-op threads; on a shared 2-core machine two OpenMP
    threads lose 10-80x whenever another process holds a core (barriers wait for the preempted thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def no_cache_dir_from_the_environment() -> Iterator[None]:
    """Frame caches next to their test datasets, whatever DIFFUSION_WORLD_CACHE_DIR the shell sets."""
    old = os.environ.pop("DIFFUSION_WORLD_CACHE_DIR", None)
    yield
    if old is not None:
        os.environ["DIFFUSION_WORLD_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def session_minari_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's Minari root, set in the environment for every test."""
    root = tmp_path_factory.mktemp("minari_session")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty MINARI_DATASETS_PATH for this test only."""
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_dataset_id(session_minari_root: Path) -> str:
    """A tiny CartPole pixel dataset (16x16, 300 random steps, episode i reset with seed i), session root."""
    from diffusion_world.data.collect import collect

    collect(TINY_ENV_ID, TINY_DATASET_ID, steps=TINY_STEPS, size=TINY_SIZE, seed=TINY_SEED, progress=False)
    return TINY_DATASET_ID


@pytest.fixture(scope="session")
def tiny_dataset_config() -> dict:
    """How ``tiny_dataset_id`` was collected: env_id, size, steps, seed."""
    return {"env_id": TINY_ENV_ID, "size": TINY_SIZE, "steps": TINY_STEPS, "seed": TINY_SEED}


@pytest.fixture(scope="session")
def tiny_frame_cache(tiny_dataset_id: str):  # -> FrameCache
    """``FrameCache.open(tiny_dataset_id)``, built once."""
    from diffusion_world.data.dataset import FrameCache

    return FrameCache.open(tiny_dataset_id, progress=False)


class _NoRgbEnv(gym.Env):
    """An env that only renders for humans: PixelEnv must refuse it."""

    metadata = {"render_modes": ["human"]}
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


@pytest.fixture(scope="session")
def no_render_env_id() -> str:
    """A registered env id whose env cannot render ``rgb_array`` frames."""
    if NO_RENDER_ENV_ID not in gym.registry:
        gym.register(id=NO_RENDER_ENV_ID, entry_point=_NoRgbEnv)
    return NO_RENDER_ENV_ID


# --- world-model checkpoints for the env tests (tests/worldmodel_fixtures.py) ------------------------------


@pytest.fixture(scope="session")
def tiny_world_model(tiny_frame_cache, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random world model (16x16, Discrete(2)) recording ``tiny_dataset_id`` and 3 of its episode starts."""
    from worldmodel_fixtures import make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("world_model") / "tiny.pt", cache=tiny_frame_cache))


@pytest.fixture(scope="session")
def tiny_box_world_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random world model with a Box(-1, 1, (2,)) action space whose dataset is absent: the env falls back
    to the random contexts stored in the checkpoint."""
    from worldmodel_fixtures import BOX, make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("world_model") / "box.pt", action_space=BOX, seed=1))


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose 10-80x when
    another process holds a core (OpenMP barriers wait for the preempted thread): run them on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
