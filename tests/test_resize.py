"""Datasets whose frames the model cannot take as stored (Minari's 210x160 Atari, grey frames): ``--frame-size``
resizes them in the frame cache, and the checkpoint's real env and dataset readers resize the same way."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from dataset_fixtures import record

from diffusion_world.checkpoint import load_world_model
from diffusion_world.cli import main
from diffusion_world.data.dataset import FrameCache
from diffusion_world.data.pixel_env import register_ale_if_needed, resize_frame
from diffusion_world.envs import make_real_env
from diffusion_world.envs.core import open_dataset_for
from diffusion_world.errors import UserError
from diffusion_world.training.train import TrainConfig, train

pytest.importorskip("ale_py")  # the atari extra, which scripts/setup.sh installs


def collect_ale(dataset_id: str, obs_type: str = "rgb", episodes: int = 2, steps: int = 30) -> None:
    """A Minari dataset the way Minari's own Atari datasets store one: the ALE env's native frames (210x160),
    recorded with its env spec (here with a short time limit, so that episodes end)."""
    register_ale_if_needed("ALE/Pong-v5")
    record(dataset_id, gym.make("ALE/Pong-v5", obs_type=obs_type, max_episode_steps=steps), list(range(episodes)),
           jpeg_encoding=False)


def tiny_train(dataset_id: str, out: Path, preset: str = "tiny", **kw) -> Path:
    return train(TrainConfig(dataset_id=dataset_id, out_dir=str(out), preset=preset, steps=2, batch_size=2,
                             seq_len=4, warmup_steps=1, eval_every=1000, checkpoint_every=1000, log_every=1,
                             progress=False, num_val_windows=1, num_contexts=2, context_length=4, precision="fp32",
                             **kw))


def test_resize_frame_takes_grey_rgb_and_rgba() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    expected = resize_frame(np.repeat(grey[:, :, None], 3, axis=2), 8)
    assert expected.shape == (8, 8, 3) and (expected[..., 0] == expected[..., 2]).all()
    assert np.array_equal(resize_frame(grey, 8), expected)
    assert np.array_equal(resize_frame(grey[:, :, None], 8), expected)  # (H, W, 1) was a (8, 8) frame before
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((40, 30, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(resize_frame(rgba, 8), resize_frame(rgb, 8))


def test_atari_sized_dataset_trains_resized_and_its_env_resizes_alike(minari_root: Path, tmp_path: Path) -> None:
    collect_ale("tt/pong-rgb-v0")
    # as stored, 210x160 frames fit no 4-level U-Net: the error says how to train on them
    with pytest.raises(UserError, match=r"210x160 is not divisible.*--frame-size N"):
        tiny_train("tt/pong-rgb-v0", tmp_path / "native", preset="small")

    cache = FrameCache.open("tt/pong-rgb-v0", progress=False, frame_size=16)
    assert cache.frames.shape == (62, 16, 16, 3) and cache.resized_from == (210, 160, 3)
    assert cache.observation_space.shape == (16, 16, 3)
    dataset = minari.load_dataset("tt/pong-rgb-v0")
    first = next(dataset.iterate_episodes())
    assert np.array_equal(cache.frames[:31], np.stack([resize_frame(o, 16) for o in first.observations]))
    assert FrameCache.open("tt/pong-rgb-v0", progress=False).frame_size == (210, 160)  # the native cache is apart
    assert FrameCache.open("tt/pong-rgb-v0", progress=False, frame_size=16).frame_size == (16, 16)  # reopened

    path = tiny_train("tt/pong-rgb-v0", tmp_path / "resized", frame_size=16)
    for other in (None, 32):
        with pytest.raises(UserError, match=f"trained with --frame-size 16: resume with the same, not "
                                            f"{'no --frame-size' if other is None else '--frame-size 32'}"):
            train(TrainConfig(dataset_id="tt/pong-rgb-v0", out_dir=str(tmp_path / "resized"), preset="tiny",
                              frame_size=other, progress=False), resume=True)
    wm = load_world_model(path)
    assert wm.dataset["resize"] == 16 and wm.dataset["resized_from"] == [210, 160, 3]
    assert wm.config.frame_size == (16, 16)
    # dataset readers (env contexts, benchmarks) see the frames as training did
    assert np.array_equal(open_dataset_for("tt/pong-rgb-v0", wm, progress=False).frames, cache.frames)
    env = gym.make("DiffusionWorld-v0", world_model=str(path), context_source="dataset")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 16, 3)
    assert env.step(env.action_space.sample())[0].shape == (16, 16, 3)
    env.close()
    # the real env: the ALE env of the dataset's spec, its frames resized by the same function
    real = make_real_env(path)
    raw = gym.make("ALE/Pong-v5", obs_type="rgb", max_episode_steps=30)
    assert real.observation_space == gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    obs, _ = real.reset(seed=3)
    assert np.array_equal(obs, resize_frame(raw.reset(seed=3)[0], 16))
    for _ in range(3):
        obs = real.step(2)[0]
        assert np.array_equal(obs, resize_frame(raw.step(2)[0], 16))
    remade = gym.make(real.spec)  # ResizeFrames records its size: the spec remakes the env
    np.testing.assert_array_equal(remade.reset(seed=3)[0], real.reset(seed=3)[0])
    remade.close()
    real.close()
    raw.close()


def test_grey_dataset_needs_and_gets_a_resize(minari_root: Path, tmp_path: Path) -> None:
    collect_ale("tt/pong-grey-v0", obs_type="grayscale", episodes=1, steps=8)
    with pytest.raises(UserError, match=r"Box\(0, 255, \(H, W, 3\), uint8\); resize its frames .*--frame-size N"):
        FrameCache.open("tt/pong-grey-v0", progress=False)
    assert main(["train", "--dataset-id", "tt/pong-grey-v0", "--frame-size", "16", "--preset", "tiny", "--steps", "1",
                 "--batch-size", "1", "--seq-len", "4", "--precision", "fp32", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    assert load_world_model(tmp_path / "run" / "checkpoint.pt").dataset["resized_from"] == [210, 160]
    cache = FrameCache.open("tt/pong-grey-v0", progress=False, frame_size=16)
    assert cache.frames.shape == (9, 16, 16, 3) and cache.resized_from == (210, 160)
    assert (cache.frames[..., 0] == cache.frames[..., 1]).all() and cache.frames.std() > 0
    for bad in (0, 4, 8.0, True):
        with pytest.raises(UserError, match="frame_size must be an integer >= 8"):
            FrameCache.open("tt/pong-grey-v0", progress=False, frame_size=bad)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="frame_size must be an integer >= 8"):
        TrainConfig(dataset_id="tt/pong-grey-v0", frame_size=4).validate()


def test_suggested_frame_size_fits_the_unet() -> None:
    """`info` and `train` suggest the same --frame-size: the larger side rounded up to the U-Net's multiple (8 for
    the small preset's 4 levels, 2 for tiny's 2), at most 64."""
    from diffusion_world.model.config import PRESETS, suggested_frame_size

    assert suggested_frame_size((36, 52, 3)) == 56 and suggested_frame_size((210, 160, 3)) == 64
    assert suggested_frame_size((36, 51), PRESETS["tiny"]["channels"]) == 52


def test_train_suggests_the_frame_size_its_unet_needs(tiny_dataset_id: str, tmp_path: Path) -> None:
    """16x16 frames and a 6-level U-Net (a multiple of 32): train's error suggests 32, for the levels the run
    has (it said 64 whatever they were)."""
    from diffusion_world.training.train import TrainConfig, train

    with pytest.raises(UserError, match=r"not divisible by 2\^5 .*--frame-size N \(\[train\] frame_size\), e\.g\. 32$"):
        train(TrainConfig(dataset_id=tiny_dataset_id, out_dir=str(tmp_path / "run"), preset="tiny", steps=1,
                          batch_size=1, seq_len=4, precision="fp32", progress=False,
                          model={"channels": (4,) * 6, "enc_blocks": (0,) * 6}))
