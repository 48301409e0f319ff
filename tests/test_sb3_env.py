"""The SB3 VecEnv over the imagination core: same-step autoreset with terminal observations, seeding, and a PPO
``learn()`` smoke test in imagination with CnnPolicy (SmallFramesCNN: NatureCNN needs frames >= 36x36)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecMonitor

import diffusion_world
from diffusion_world.envs import InvalidActionError, ResetNeededError
from diffusion_world.envs.sb3_vec_env import DiffusionWorldSB3VecEnv, agent_frame_stack, small_frames_policy_kwargs
from diffusion_world.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def test_make_sb3_vec_env_same_step_autoreset(tiny_world_model: str) -> None:
    venv = diffusion_world.make_sb3_vec_env(tiny_world_model, num_envs=2, horizon=2)
    assert isinstance(venv, VecMonitor) and isinstance(venv.unwrapped, DiffusionWorldSB3VecEnv)
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (2, 16, 16, 3) and obs.dtype == np.uint8
    obs, rewards, dones, infos = venv.step(np.array([0, 1]))
    assert not dones.any() and rewards.dtype == np.float32
    before_end = obs
    obs, rewards, dones, infos = venv.step(np.array([1, 1]))
    assert dones.all()
    single = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, horizon=2)
    for i in range(2):
        assert infos[i]["TimeLimit.truncated"] is True
        assert infos[i]["episode"]["l"] == 2  # VecMonitor saw the whole episode
        terminal = infos[i]["terminal_observation"]
        assert terminal.shape == (16, 16, 3) and not np.array_equal(terminal, before_end[i])
        # the observation returned is the next episode's first: env i seeded 3 + i, then reset again
        single.reset(seed=3 + i)
        single.step(0)
        single.step(1)
        np.testing.assert_array_equal(obs[i], single.reset()[0])


def test_terminations_are_not_time_limits(tiny_world_model: str) -> None:
    venv = DiffusionWorldSB3VecEnv(tiny_world_model, num_envs=2, termination_threshold=0.0, frame_stack=2)
    venv.reset()
    obs, _, dones, infos = venv.step(np.array([[0], [1]]))  # SB3 may hand Discrete actions as (N, 1)
    assert dones.all() and obs.shape == (2, 16, 16, 6)
    assert [info["TimeLimit.truncated"] for info in infos] == [False, False]
    assert infos[0]["terminal_observation"].shape == (16, 16, 6)


def test_bad_actions_and_step_before_reset(tiny_world_model: str) -> None:
    venv = DiffusionWorldSB3VecEnv(tiny_world_model, num_envs=2, render_mode="rgb_array")
    with pytest.raises(ResetNeededError):
        venv.step(np.array([0, 0]))
    venv.reset()
    with pytest.raises(InvalidActionError):
        venv.step(np.array([0, 5]))
    venv.step(np.array([0, 1]))  # still usable
    assert venv.render().shape[2] == 3  # tiled rgb frames
    assert venv.get_attr("render_mode") == ["rgb_array", "rgb_array"]
    assert venv.env_is_wrapped(gym.Wrapper) == [False, False]
    frames = venv.env_method("render", indices=[1])
    assert len(frames) == 1 and frames[0].shape == (16, 16, 3)
    venv.seed(3)
    venv.reset()
    assert venv.get_attr("np_random_seed") == [3, 4] and venv.get_attr("np_random_seed", indices=[1]) == [4]
    mine = np.random.default_rng(7)
    venv.set_attr("np_random", mine, indices=[1])
    assert venv.get_attr("np_random")[1] is mine and venv.get_attr("np_random_seed") == [3, -1]
    # without render_mode="rgb_array", no images, as SB3's DummyVecEnv
    plain = DiffusionWorldSB3VecEnv(tiny_world_model, num_envs=2)
    plain.reset()
    with pytest.warns(UserWarning, match="render_mode='rgb_array'"):
        assert plain.env_method("render") == [None, None]


def test_env_method_acts_once_on_all_envs_or_refuses(tiny_world_model: str) -> None:
    venv = DiffusionWorldSB3VecEnv(tiny_world_model, num_envs=2)
    venv.seed(3)
    venv.reset()
    venv.step(np.array([1, 1]))
    steps = venv.core.steps.copy()
    with pytest.raises(UserError, match="must address all of them, got indices \\[0\\]"):
        venv.env_method("reset", indices=[0])  # would reset env 1 too
    np.testing.assert_array_equal(venv.core.steps, steps)  # nothing was reset
    calls = []
    venv.reset = lambda: calls.append(1) or "obs"  # type: ignore[method-assign]
    assert venv.env_method("reset") == ["obs", "obs"] and calls == [1]  # once, not once per env


def test_ppo_cnn_policy_learns_in_imagination(tiny_world_model: str, tmp_path) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecTransposeImage

    venv = diffusion_world.make_sb3_vec_env(tiny_world_model, num_envs=2, horizon=8, frame_stack=2)
    model = PPO("CnnPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu",
                policy_kwargs=small_frames_policy_kwargs(16))
    assert isinstance(model.get_env(), VecTransposeImage)  # channel-last frames transposed by SB3 itself
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=32)
    assert model.num_timesteps == 32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    assert len(model.ep_info_buffer) >= 2  # episodes of 8 steps ended and were logged
    model.save(tmp_path / "agent.zip")
    agent = PPO.load(tmp_path / "agent.zip")
    assert agent.observation_space.shape == (6, 16, 16) and agent_frame_stack(agent.observation_space, (16, 16)) == 2
    action, _ = agent.predict(venv.reset()[0], deterministic=True)
    assert action in (0, 1)

    # the saved agent drives `diffusion-world play` (its frame stacking is read from the agent)
    from diffusion_world.play import play

    summary = play(tiny_world_model, steps=3, out=tmp_path / "agent.gif", policy=str(tmp_path / "agent.zip"),
                   progress=False)
    assert summary["frames"] >= 4


def test_examples_train_imagine_evaluate(tiny_dataset_id: str, tmp_path, monkeypatch, capsys) -> None:
    """examples/: a world model trained (2 steps) from a card serves the env; PPO trains in it; the agent is
    evaluated in the real env with the same frame stacking."""
    import runpy
    from pathlib import Path

    from gymnasium.utils.env_checker import check_env

    examples = Path(__file__).resolve().parent.parent / "examples"
    card = tmp_path / "card.toml"
    card.write_text(f'[env]\nid = "CartPole-v1"\nsize = 16\n[collect]\ndataset_id = "{tiny_dataset_id}"\n'
                    'steps = 300\n[model]\npreset = "tiny"\n[train]\nsteps = 2\nbatch_size = 2\nseq_len = 8\n'
                    '[imagination]\nsampler_steps = 2\nhorizon = 12\ncontext_frames = 3\n')

    def run(script: str, *argv: str, status: int = 0) -> str:
        """The script's stdout (stderr where it fails), after checking its exit status."""
        monkeypatch.setattr("sys.argv", [script, *argv])
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(examples / script), run_name="__main__")
        assert exited.value.code == status
        captured = capsys.readouterr()
        return captured.err if status else captured.out

    train = ("train_world_model.py", "--card", str(card), "--out", str(tmp_path / "run"), "--device", "cpu")
    run(*train)
    # a UserError is one line on stderr and exit status 2, as in the CLI (before: a traceback)
    assert run(*train, status=2).startswith(f"train_world_model.py: error: {tmp_path / 'run'}")
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    env = gym.make("DiffusionWorld-v0", world_model=ckpt)
    core = env.unwrapped.core
    assert (core.context_frames, core.horizon, core.sampler.num_steps) == (3, 12, 2)  # the card's settings
    check_env(env.unwrapped)
    out = run("imagination_ppo.py", "--world-model", ckpt, "--steps", "32", "--num-envs", "2", "--n-steps", "16",
              "--frame-stack", "2", "--history-guidance", "2", "--reset-mode", "anywhere", "--horizon", "4",
              "--precision", "bf16", "--out", str(tmp_path / "agent"))
    assert f"saved {tmp_path / 'agent.zip'};" in out  # where SB3 saved it (before: 'saved .../agent')
    out = run("evaluate_real.py", "--world-model", ckpt, "--agent", str(tmp_path / "agent.zip"), "--episodes", "2")
    assert "frame_stack=2" in out and "agent" in out and "±" in out
    assert "--episodes must be at least 1" in run("evaluate_real.py", "--world-model", ckpt, "--agent",
                                                  str(tmp_path / "agent.zip"), "--episodes", "0", status=2)
    err = run("evaluate_real.py", "--world-model", ckpt, "--agent", str(tmp_path / "none.zip"), status=2)
    assert err.startswith("evaluate_real.py: error: policy file not found") and "Traceback" not in err
    # PPO trains whole rollouts: the expert reports (and saves) what it really did
    out = run("train_state_expert.py", "--steps", "256", "--out", str(tmp_path / "expert"))
    assert "PPO expert after 2048 steps" in out and f"saved {tmp_path / 'expert.zip'}" in out
