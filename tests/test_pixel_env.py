"""PixelEnv: frames, spaces, seeding, frame skip, bad input, and the envs the project supports."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import diffusion_world  # noqa: F401  (registers diffusion_world/Pixels-v0)
from diffusion_world.data.pixel_env import PixelEnv, make_pixel_env, resize_frame
from diffusion_world.errors import UserError
from diffusion_world.registration import PIXEL_ENV_ID


def test_cartpole_frames_spaces_and_state() -> None:
    env = make_pixel_env("CartPole-v1", size=16)
    assert env.observation_space == gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(2)
    frame, info = env.reset(seed=3)
    assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8
    assert info["state"].shape == (4,)
    assert np.array_equal(env.render(), frame)
    frame2, reward, terminated, truncated, info = env.step(0)
    assert frame2.shape == (16, 16, 3) and reward == 1.0 and info["state"].shape == (4,)
    for _ in range(5):
        frame2, *_ = env.step(0)
    assert not np.array_equal(frame, frame2)  # the cart moved
    env.close()


def test_same_seed_same_frames() -> None:
    def rollout(seed: int) -> np.ndarray:
        env = make_pixel_env("CartPole-v1", size=16)
        frames = [env.reset(seed=seed)[0]]
        frames += [env.step(a)[0] for a in (0, 1, 1, 0, 0)]
        return np.stack(frames)

    assert np.array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7)[0], rollout(8)[0])


def test_frame_is_inter_area_resize_of_render() -> None:
    env = make_pixel_env("CartPole-v1", size=32)
    frame, _ = env.reset(seed=0)
    full = env.unwrapped.inner.render()
    assert np.array_equal(frame, resize_frame(full, 32))


def test_frame_skip_sums_rewards_and_stops_at_termination() -> None:
    env = make_pixel_env("CartPole-v1", size=8, frame_skip=4)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(0)
    assert reward == 4.0 and not terminated
    total_steps = 0
    while not terminated:  # pushing left always tips the pole within a few dozen inner steps
        _, reward, terminated, truncated, _ = env.step(0)
        total_steps += 1
        assert reward <= 4.0
    assert total_steps < 100


def test_check_env_passes() -> None:
    check_env(make_pixel_env("CartPole-v1", size=16).unwrapped)


def test_sb3_check_env_passes() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(PixelEnv("CartPole-v1", size=16), warn=False)


def test_registered_env_has_json_kwargs() -> None:
    env = gym.make(PIXEL_ENV_ID, env_id="CartPole-v1", size=16, frame_skip=2)
    assert env.spec.kwargs == {"env_id": "CartPole-v1", "size": 16, "frame_skip": 2}
    rebuilt = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    assert rebuilt.observation_space.shape == (16, 16, 3)


def test_box_action_space() -> None:
    env = make_pixel_env("Pendulum-v1", size=16)
    assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == (1,)
    env.reset(seed=0)
    frame, reward, *_ = env.step(np.array([0.5], np.float32))
    assert frame.shape == (16, 16, 3) and reward < 0


def test_lunarlander_smoke() -> None:
    pytest.importorskip("Box2D")
    env = make_pixel_env("LunarLander-v3", size=16, frame_skip=2)
    frame, info = env.reset(seed=0)
    assert info["state"].shape == (8,)
    for action in (0, 1, 2, 3):
        frame, *_ = env.step(action)
    assert frame.shape == (16, 16, 3)
    env_c = make_pixel_env("LunarLander-v3", size=16, continuous=True)
    assert env_c.action_space.shape == (2,)


def test_breakout_smoke() -> None:
    pytest.importorskip("ale_py")
    env = make_pixel_env("ALE/Breakout-v5", size=16, frameskip=4)
    frame, _ = env.reset(seed=0)
    assert env.action_space == gym.spaces.Discrete(4)
    for action in (1, 2, 3):
        frame, *_ = env.step(action)
    assert frame.shape == (16, 16, 3) and frame.any()
    # SB3's Atari wrappers read the ALE env's action meanings and lives off env.unwrapped: the pixel env
    from stable_baselines3.common.atari_wrappers import EpisodicLifeEnv, FireResetEnv

    assert env.unwrapped.get_action_meanings() == ["NOOP", "FIRE", "RIGHT", "LEFT"] and env.unwrapped.ale.lives() == 5
    wrapped = EpisodicLifeEnv(FireResetEnv(env))
    frame, _ = wrapped.reset(seed=0)
    assert frame.shape == (16, 16, 3)
    cartpole = make_pixel_env("CartPole-v1", size=16)
    with pytest.raises(AttributeError, match="not an ALE env"):
        cartpole.unwrapped.ale  # noqa: B018
    assert not hasattr(cartpole.unwrapped, "ale")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"env_id": "NoSuchEnv-v0"}, "unknown Gymnasium env id"),
        ({"env_id": "CartPole-v1", "size": 4}, "frame size"),
        ({"env_id": "CartPole-v1", "size": 16.0}, "frame size"),
        ({"env_id": "CartPole-v1", "frame_skip": 0}, "frame_skip"),
        ({"env_id": "CartPole-v1", "env_kwargs": {"render_mode": "human"}}, "render_mode"),
        ({"env_id": "CartPole-v1", "env_kwargs": {"no_such_kwarg": 1}}, "no_such_kwarg"),
    ],
)
def test_bad_input_is_a_user_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        PixelEnv(**kwargs)


@pytest.mark.parametrize(("env_id", "suggestion"), [("CartPol-v1", "CartPole-v1"), ("cartpole-v1", "CartPole-v1"),
                                                   ("Pendulum-v0", "Pendulum-v1"), ("Nope-v9", None)])
def test_unknown_env_id_suggests_only_close_ids(env_id: str, suggestion: str | None) -> None:
    with pytest.raises(UserError, match=f"unknown Gymnasium env id {env_id!r}") as e:
        make_pixel_env(env_id)
    assert str(e.value).endswith(f"; did you mean {suggestion!r}?" if suggestion else "'module:EnvName-vN')")


def test_env_without_rgb_rendering_is_refused(no_render_env_id: str) -> None:
    with pytest.raises(UserError, match="cannot render 'rgb_array'"):
        make_pixel_env(no_render_env_id)


SIGTERM_SCRIPT = """
import os, signal, time
from diffusion_world.data.pixel_env import make_pixel_env
env = make_pixel_env("CartPole-v1", size=16)
env.reset(seed=0)
env.step(0)  # pygame/SDL is initialised by the first render
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(5)
print("survived SIGTERM")
"""


def test_a_rendering_env_still_dies_on_sigterm() -> None:
    """SDL's own SIGTERM handler only queued a quit event: collect and render ran on after `scancel`."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SDL_NO_SIGNAL_HANDLERS"}
    out = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == -15 and "survived" not in out.stdout, (out.returncode, out.stdout, out.stderr[-2000:])
