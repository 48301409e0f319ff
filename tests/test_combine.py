"""combine(): merging datasets keeps every frame bit for bit (where minari.combine_datasets re-encodes them as
JPEG), episodes in order, refuses bad input; a JPEG-encoded dataset warns whenever it is opened for training."""

from __future__ import annotations

import warnings
from pathlib import Path

import minari
import numpy as np
import pytest

from diffusion_world.cli import main
from diffusion_world.data.collect import collect, combine
from diffusion_world.data.dataset import FrameCache
from diffusion_world.errors import UserError


def _episodes(dataset: minari.MinariDataset) -> list:
    return list(dataset.iterate_episodes())


def test_combine_is_lossless_and_keeps_order(minari_root: Path) -> None:
    # 32x32: Minari JPEG-encodes images from that size on, so its own combine would change the frames
    a = collect("CartPole-v1", "tt/a-v0", steps=40, size=32, seed=1, progress=False)
    b = collect("CartPole-v1", "tt/b-v0", steps=25, size=32, seed=50, progress=False)
    merged = combine(["tt/a-v0", "tt/b-v0"], "tt/ab-v0")
    assert merged.total_episodes == a.total_episodes + b.total_episodes
    assert merged.total_steps == 65
    assert merged.storage.metadata["jpeg_encoding"] is False
    assert merged.storage.metadata["combined_datasets"] == ["tt/a-v0", "tt/b-v0"]
    for got, want in zip(_episodes(merged), _episodes(a) + _episodes(b)):
        for field in ("observations", "actions", "rewards", "terminations", "truncations"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), field
    assert merged.recover_environment().spec.kwargs == a.recover_environment().spec.kwargs
    # each episode keeps its reset seed (Minari's update_from_storage dropped them all: no episode could be
    # replayed or rendered again), and Minari can print an episode (its infos are a dict, not None)
    def seeds(ds: minari.MinariDataset) -> list:
        return [m.get("seed") for m in ds.storage.get_episode_metadata(ds.episode_indices)]

    assert seeds(merged) == seeds(a) + seeds(b) and seeds(a)[:2] == [1, 2] and seeds(b)[0] == 50
    assert merged[0].infos == {} and "EpisodeData(id=0" in str(merged[0]) and str(a[0])
    # and what the sources said about themselves (Minari's update_from_storage keeps only the authors)
    meta = merged.storage.metadata
    assert meta["requirements"] == a.storage.metadata["requirements"] and meta["algorithm_name"] == "random"
    assert meta["description"].startswith("Combined by diffusion_world from tt/a-v0, tt/b-v0. tt/a-v0: 32x32 RGB")
    # and Minari's own combine is lossy on the same data (why combine() exists)
    theirs = minari.combine_datasets([a, b], "tt/ab-minari-v0")
    first = _episodes(theirs)[0].observations
    assert np.abs(first.astype(int) - _episodes(a)[0].observations.astype(int)).max() > 0


def test_combine_refuses_bad_input(minari_root: Path) -> None:
    collect("CartPole-v1", "tt/c-v0", steps=10, size=16, progress=False)
    collect("CartPole-v1", "tt/d-v0", steps=10, size=24, progress=False)
    with pytest.raises(UserError, match="at least two"):
        combine(["tt/c-v0"], "tt/x-v0")
    with pytest.raises(UserError, match="no local Minari dataset"):
        combine(["tt/c-v0", "tt/nope-v0"], "tt/x-v0")
    with pytest.raises(UserError, match="spaces"):
        combine(["tt/c-v0", "tt/d-v0"], "tt/x-v0")
    with pytest.raises(UserError, match="already exists"):
        combine(["tt/c-v0", "tt/d-v0"], "tt/d-v0")
    with pytest.raises(UserError, match="'tt/c-v0' more than once"):  # its episodes in train and validation
        combine(["tt/c-v0", "tt/c-v0"], "tt/x-v0")
    assert not (minari_root / "tt/x-v0").exists()
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".diffusion_world-combine")]


def test_combine_names_the_env_spec_difference(minari_root: Path) -> None:
    collect("CartPole-v1", "tt/skip1-v0", steps=10, size=8, frame_skip=1, progress=False)
    collect("CartPole-v1", "tt/skip2-v0", steps=10, size=8, frame_skip=2, progress=False)
    with pytest.raises(UserError, match="env spec differs: frame_skip 1 in 'tt/skip1-v0' vs 2 in 'tt/skip2-v0'"):
        combine(["tt/skip1-v0", "tt/skip2-v0"], "tt/x-v0")
    assert not (minari_root / "tt/x-v0").exists()


def test_combine_cli(minari_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    collect("CartPole-v1", "tt/e-v0", steps=10, size=8, seed=3, progress=False)
    collect("CartPole-v1", "tt/g-v0", steps=10, size=8, seed=30, progress=False)
    assert main(["combine", "tt/e-v0", "tt/g-v0", "--out-id", "tt/eg-v0"]) == 0
    assert "tt/eg-v0: " in capsys.readouterr().out
    assert minari.load_dataset("tt/eg-v0").total_steps == 20
    assert main(["combine", "tt/e-v0", "--out-id", "tt/f-v0"]) == 2
    assert "at least two" in capsys.readouterr().err


def test_jpeg_dataset_warns_when_cached(minari_root: Path) -> None:
    collect("CartPole-v1", "tt/lossy-v0", steps=10, size=32, lossless=False, progress=False)
    collect("CartPole-v1", "tt/exact-v0", steps=10, size=32, progress=False)
    with pytest.warns(UserWarning, match="JPEG-encoded"):
        FrameCache.open("tt/lossy-v0", progress=False)
    with pytest.warns(UserWarning, match="JPEG-encoded"):  # again from the built cache (it said it only once)
        FrameCache.open("tt/lossy-v0", progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FrameCache.open("tt/exact-v0", progress=False)


def test_combined_from_a_jpeg_dataset_still_warns(minari_root: Path) -> None:
    """combine stores the decoded frames losslessly, artefacts and all: the new dataset says where they came
    from, and training on it warns as on the source (it did not), also when combined again."""
    import warnings

    collect("CartPole-v1", "tt/lossy-v0", steps=10, size=32, lossless=False, progress=False)
    collect("CartPole-v1", "tt/exact-v0", steps=10, size=32, progress=False)
    collect("CartPole-v1", "tt/exact2-v0", steps=10, size=32, seed=5, progress=False)
    combine(["tt/exact-v0", "tt/lossy-v0"], "tt/mixed-v0")
    assert minari.load_dataset("tt/mixed-v0").storage.metadata["jpeg_decoded_from"] == ["tt/lossy-v0"]
    with pytest.warns(UserWarning, match=r"combined from JPEG-encoded \(lossy\) datasets \['tt/lossy-v0'\]"):
        FrameCache.open("tt/mixed-v0", progress=False)
    combine(["tt/mixed-v0", "tt/exact2-v0"], "tt/mixed-again-v0")
    assert minari.load_dataset("tt/mixed-again-v0").storage.metadata["jpeg_decoded_from"] == ["tt/lossy-v0"]
    combine(["tt/exact-v0", "tt/exact2-v0"], "tt/exact-both-v0")
    assert "jpeg_decoded_from" not in minari.load_dataset("tt/exact-both-v0").storage.metadata
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FrameCache.open("tt/exact-both-v0", progress=False)


def test_jpeg_warning_for_datasets_recorded_elsewhere(minari_root: Path, tmp_path: Path) -> None:
    """Datasets recorded with Minari's own writers; a storage that is not HDF5 (Arrow, which needs pyarrow) is
    judged by its metadata and the spaces Minari encodes (an Arrow dataset was not warned about)."""
    import warnings
    from types import SimpleNamespace

    import gymnasium as gym
    from dataset_fixtures import record

    from diffusion_world.data.dataset import _jpeg_encoded
    from diffusion_world.data.pixel_env import make_pixel_env

    record("tt/hdf5-jpeg-v0", make_pixel_env("CartPole-v1", size=32), seeds=[0], jpeg_encoding=True)
    with pytest.warns(UserWarning, match="JPEG-encoded"):
        FrameCache.open("tt/hdf5-jpeg-v0", progress=False)
    record("tt/hdf5-raw-v0", make_pixel_env("CartPole-v1", size=32), seeds=[0], jpeg_encoding=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FrameCache.open("tt/hdf5-raw-v0", progress=False)

    def arrow(jpeg: bool, shape: tuple[int, ...]) -> SimpleNamespace:
        return SimpleNamespace(storage=SimpleNamespace(data_path=str(tmp_path), jpeg_encoding=jpeg),
                               observation_space=gym.spaces.Box(0, 255, shape, np.uint8))

    assert _jpeg_encoded(arrow(True, (32, 32, 3)))
    assert not _jpeg_encoded(arrow(False, (32, 32, 3)))
    assert not _jpeg_encoded(arrow(True, (16, 16, 3)))  # Minari stores images under 32x32 raw


def test_jpeg_warning_when_minari_stores_the_jpeg_bytes_as_a_fixed_width_array(minari_root: Path) -> None:
    """Minari stores an episode's JPEG bytes as a plain uint8 (steps, nbytes) array when all have one length
    (static scenes, short episodes): such a dataset was taken for raw frames and trained on without a warning."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    frames = np.zeros((4, 32, 32, 3), np.uint8)  # one JPEG byte length for every frame
    buffer = EpisodeBuffer(seed=0, observations=frames, actions=np.zeros(3, np.int64), rewards=np.zeros(3),
                           terminations=np.array([False, False, True]), truncations=np.zeros(3, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari: no author / code permalink given
        minari.create_dataset_from_buffers("tt/static-jpeg-v0", [buffer], action_space=gym.spaces.Discrete(2),
                                           observation_space=gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
                                           jpeg_encoding=True)
    with pytest.warns(UserWarning, match="JPEG-encoded"):
        FrameCache.open("tt/static-jpeg-v0", progress=False)


def test_ctrl_c_stops_combine_even_where_a_library_swallows_it(minari_root: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C raised inside h5py's object clean-up is only printed ("Exception ignored in ..."): combine went on
    and wrote the dataset, 2 times in 5. It now stops at the next safe point, leaving nothing behind."""
    import os
    import signal
    import time

    from diffusion_world.data import collect as collect_module

    collect("CartPole-v1", "tt/a-v0", steps=10, size=8, progress=False)
    collect("CartPole-v1", "tt/b-v0", steps=10, size=8, progress=False)

    def swallowing(path: Path) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass  # as an exception in a weakref callback is

    monkeypatch.setattr(collect_module, "_compress_frames", swallowing)
    with pytest.raises(KeyboardInterrupt):
        combine(["tt/a-v0", "tt/b-v0"], "tt/ab-v0")
    assert not (minari_root / "tt" / "ab-v0").exists()
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
