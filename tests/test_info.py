"""``diffusion-world info``: what the installation has, read from the sources it names."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from diffusion_world.cli import main


def test_info_text_and_json(tiny_dataset_id: str, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from diffusion_world import __version__, precision

    shipped = json.loads((resources.files("diffusion_world") / "shipped" / "cartpole.json").read_text())
    step = shipped["provenance"]["exported_from_step"]
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["diffusion_world"] == __version__ and info["torch"] == str(torch.__version__)
    assert tiny_dataset_id in info["datasets"]  # the session's Minari root (MINARI_DATASETS_PATH)
    (cartpole,) = [m for m in info["shipped_world_models"] if m["name"] == "cartpole"]
    assert cartpole["installed"] and cartpole["training_step"] == step and 0 < cartpole["size_mb"] <= 20
    assert info["cpu_native_bf16"] == precision.cpu_has_native_bf16()
    # the advice follows the CPU: where bf16 is emulated, training's "auto" and the envs stay in fp32
    for native, training, advice in ((False, "fp32", "'fp32' (bf16 is emulated"), (True, "bf16", "'bf16' (native")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert main(["info"]) == 0
        text = capsys.readouterr().out
        assert f"precision='auto' runs in {training} on cpu" in text
        assert f"imagined envs:   on the CPU, precision={advice}" in text
        assert f"cartpole: {cartpole['size_mb']} MB, training step {step}" in text and f"\n  {tiny_dataset_id}" in text


def test_info_says_what_each_dataset_needs_to_train_on(minari_root, capsys: pytest.CaptureFixture[str]) -> None:
    import gymnasium as gym
    from dataset_fixtures import record

    from diffusion_world.data.collect import collect

    record("tt/cartpole-states-v0", gym.make("CartPole-v1"), seeds=[0])
    record("tt/unseeded-states-v0", gym.make("CartPole-v1"), seeds=[0, 1], recorded_seeds=[None, None])
    collect("CartPole-v1", "tt/odd-frames-v0", steps=5, size=20, progress=False)
    collect("CartPole-v1", "tt/frames-v0", steps=5, size=16, progress=False)
    assert main(["info", "--json"]) == 0
    datasets = json.loads(capsys.readouterr().out)["datasets"]
    assert datasets["tt/frames-v0"] == {"env_id": "CartPole-v1", "episodes": 1, "steps": 5,
                                        "observations": "frames 16x16x3", "to_train": None, "cannot_train": None}
    assert datasets["tt/odd-frames-v0"]["to_train"] == "train --frame-size 24"  # 20 is not a multiple of 8
    states = datasets["tt/cartpole-states-v0"]
    assert states["env_id"] == "CartPole-v1" and states["observations"] == "states Box(float32, (4,))"
    assert states["to_train"] == "diffusion-world render tt/cartpole-states-v0 --dataset-id NEW"
    # render replays episodes from their reset seeds: without them, info does not suggest it
    unseeded = datasets["tt/unseeded-states-v0"]
    assert unseeded["to_train"] is None and unseeded["cannot_train"] == (
        "cannot be rendered to frames: 2 of 2 episodes record no reset seed, so `render` cannot replay them")
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert ("  tt/cartpole-states-v0: CartPole-v1, 1 episode, " in text
            and "(to train on it: diffusion-world render tt/cartpole-states-v0 --dataset-id NEW)" in text)
    assert "  tt/unseeded-states-v0: CartPole-v1, 2 episodes, " in text and "record no reset seed" in text


def test_info_says_which_datasets_train_would_refuse(minari_root, capsys: pytest.CaptureFixture[str]) -> None:
    """Datasets train refuses (an action space it does not take, float images, image levels that are not 0-255)
    were listed as ordinary frames or states, with a command to train on them."""
    import gymnasium as gym
    import minari
    import numpy as np
    from minari.data_collector import EpisodeBuffer

    def hand_made(dataset_id, observation_space, action_space, observations, actions):
        env = gym.Env()
        env.observation_space, env.action_space = observation_space, action_space
        buffer = EpisodeBuffer(seed=0, observations=observations, actions=actions, rewards=np.zeros(2),
                               terminations=np.zeros(2, bool), truncations=np.zeros(2, bool))
        with pytest.warns(UserWarning):
            minari.create_dataset_from_buffers(dataset_id, [buffer], env=env)

    frames = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    hand_made("tt/multi-v0", frames, gym.spaces.MultiDiscrete([2, 2]), np.zeros((3, 16, 16, 3), np.uint8),
              np.zeros((2, 2), np.int64))
    hand_made("tt/floats-v0", gym.spaces.Box(0, 1, (16, 16, 3), np.float32), gym.spaces.Discrete(2),
              np.zeros((3, 16, 16, 3), np.float32), np.zeros(2, np.int64))
    hand_made("tt/mask-v0", gym.spaces.Box(0, 1, (20, 20, 3), np.uint8), gym.spaces.Discrete(2),
              np.zeros((3, 20, 20, 3), np.uint8), np.zeros(2, np.int64))
    assert main(["info", "--json"]) == 0
    datasets = json.loads(capsys.readouterr().out)["datasets"]
    for dataset_id, reason in (("tt/multi-v0", "only Discrete and Box are supported"),
                               ("tt/floats-v0", "its images are not uint8"),
                               ("tt/mask-v0", "its bounds are not 0 and 255")):
        assert datasets[dataset_id]["to_train"] is None, dataset_id
        assert datasets[dataset_id]["cannot_train"].startswith("cannot train on it: ")
        assert reason in datasets[dataset_id]["cannot_train"], datasets[dataset_id]
    assert datasets["tt/floats-v0"]["observations"] == "images Box(float32, (16, 16, 3))"
    # a stray folder that Minari cannot name (left by a failed create) hid every dataset ("could not list")
    (minari_root / "h" / "base-v0" / "data").mkdir(parents=True)
    assert main(["info", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["datasets"]
    assert {k: v for k, v in listed.items() if k != "h/base-v0"} == datasets
    assert listed["h/base-v0"]["cannot_train"].startswith("not a dataset Minari can read: ValueError: Malformed")


def test_info_lists_a_wide_state_space_on_one_line(minari_root, capsys: pytest.CaptureFixture[str]) -> None:
    import gymnasium as gym
    from dataset_fixtures import record

    pytest.importorskip("Box2D")
    record("tt/lunar-states-v0", gym.make("LunarLander-v3"), seeds=[0])
    assert main(["info"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "tt/lunar-states-v0" in line]
    assert line.startswith("  tt/lunar-states-v0: LunarLander-v3, 1 episode, ")
    assert "states Box(float32, (8,)) (to train on it: diffusion-world render" in line
