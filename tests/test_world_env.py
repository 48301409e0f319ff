"""DiffusionWorld-v0 as one Gymnasium env: registration, env checkers, determinism, contexts, frame stacking,
truncation/termination, bad inputs, the real env with the same stacking, and ``diffusion-world play``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

import diffusion_world
from diffusion_world.envs import DiffusionWorldEnv, InvalidActionError, ResetNeededError, make_real_env
from diffusion_world.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SB3_SMALL_IMAGE = "minimal resolution for an image is 36x36"  # 16x16 test frames: unavoidable with tiny models


def rollout(env: gym.Env, seed: int | None, actions, options=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    obs, _ = env.reset(seed=seed, options=options)
    frames, rewards, terms = [obs], [], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        frames.append(obs)
        rewards.append(r)
        terms.append(term)
    return np.stack(frames), np.array(rewards), np.array(terms)


def test_registered_and_made_both_ways(tiny_world_model: str) -> None:
    assert "DiffusionWorld-v0" in gym.registry
    spec = gym.registry["DiffusionWorld-v0"]
    assert spec.entry_point == "diffusion_world.envs.world_env:DiffusionWorldEnv"
    assert spec.vector_entry_point == "diffusion_world.envs.vector_env:DiffusionWorldVectorEnv"
    env = gym.make("diffusion_world:DiffusionWorld-v0", world_model=tiny_world_model, frame_stack=2,
                   reset_mode="anywhere", termination_threshold=0.9)
    assert isinstance(env.unwrapped, DiffusionWorldEnv)
    json.dumps(env.spec.kwargs)  # recorded kwargs are JSON: the spec can rebuild the env
    env = gym.make(env.spec)
    assert env.observation_space.shape == (16, 16, 6)
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model)
    assert env.observation_space == gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(2)
    # defaults come from the checkpoint's imagination settings
    core = env.unwrapped.core
    assert (core.context_frames, core.horizon, core.sampler.num_steps) == (4, 50, 3)
    assert "dataset" in core.contexts.description


def test_spec_records_a_path_as_a_string_and_the_horizon(tiny_world_model: str) -> None:
    """A path-like world_model is recorded as a string, so that spec.to_json() works and the spec rebuilds the
    env; max_episode_steps is the horizon the env truncates at (TimeAwareObservation needs it); for the vector
    env too, which takes max_episode_steps as Gymnasium's vector envs do."""
    env = gym.make("DiffusionWorld-v0", world_model=Path(tiny_world_model), frame_stack=2)
    assert env.spec is not None and env.spec.kwargs["world_model"] == tiny_world_model
    assert env.spec.max_episode_steps == env.unwrapped.core.horizon == 50
    again = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    assert again.observation_space == env.observation_space and again.spec.max_episode_steps == 50
    timed = gym.wrappers.TimeAwareObservation(gym.make("DiffusionWorld-v0", world_model=tiny_world_model))
    assert timed.observation_space.shape == (16 * 16 * 3 + 1,)
    assert gym.make("DiffusionWorld-v0", world_model=tiny_world_model, max_episode_steps=3).spec.max_episode_steps == 3

    envs = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=Path(tiny_world_model), max_episode_steps=3)
    assert envs.spec is not None and json.loads(envs.spec.to_json())["kwargs"]["world_model"] == tiny_world_model
    assert envs.spec.max_episode_steps == 3
    envs.reset(seed=0)
    truncations = [envs.step(np.zeros(2, np.int64))[3] for _ in range(3)]
    assert [t.tolist() for t in truncations] == [[False, False], [False, False], [True, True]]
    assert gym.make_vec(envs.spec, num_envs=2).spec.max_episode_steps == 3
    with pytest.raises(UserError, match="max_episode_steps must be an integer >= 1"):
        gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, max_episode_steps=0)


@pytest.mark.parametrize("frame_stack", [1, 3])
def test_gymnasium_check_env_without_warnings(tiny_world_model: str, frame_stack: int) -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, frame_stack=frame_stack,
                   render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_sb3_check_env(tiny_world_model: str, tiny_box_world_model: str) -> None:
    from stable_baselines3.common.env_checker import check_env

    for path in (tiny_world_model, tiny_box_world_model):
        env = gym.make("DiffusionWorld-v0", world_model=path, frame_stack=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env)
        assert [str(w.message) for w in caught if SB3_SMALL_IMAGE not in str(w.message)] == []


def test_same_seed_same_frames_different_seed_different(tiny_world_model: str) -> None:
    actions = [0, 1, 1, 0, 1, 0, 0, 1]
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model)
    a = rollout(env, 3, actions)
    b = rollout(gym.make("DiffusionWorld-v0", world_model=tiny_world_model), 3, actions)  # a fresh env
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = rollout(env, 4, actions)
    assert (a[0][1:] != c[0][1:]).mean() > 0.1  # generated frames differ
    # an unseeded reset continues the env's generator: a new episode, not a replay
    d = rollout(env, None, actions)
    assert not np.array_equal(c[0][1:], d[0][1:])
    # the model reacts to actions: other actions from the same state give other frames
    e = rollout(env, 3, [1 - x for x in actions])
    assert not np.array_equal(a[0][1:], e[0][1:])


def test_reset_contexts_from_dataset(tiny_world_model: str, tiny_frame_cache) -> None:
    """episode_start resets start at an episode's first frames; anywhere resets also elsewhere."""
    cache = tiny_frame_cache
    L = 4
    start_obs = {cache.frames[s + L - 1].tobytes() for s in cache.episode_starts}
    any_obs = {cache.frames[s].tobytes() for s in range(len(cache.frames))}
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model)
    firsts = [env.reset(seed=s)[0].tobytes() for s in range(12)]
    assert all(f in start_obs for f in firsts) and len(set(firsts)) > 1
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, reset_mode="anywhere")
    firsts = [env.reset(seed=s)[0].tobytes() for s in range(12)]
    assert all(f in any_obs for f in firsts) and any(f not in start_obs for f in firsts)


def test_checkpoint_contexts_when_no_dataset(tiny_world_model: str, minari_root: Path) -> None:
    """With the dataset absent (empty MINARI_DATASETS_PATH) the env falls back to the checkpoint's contexts."""
    ckpt = torch.load(tiny_world_model, weights_only=True)
    stored = ckpt["contexts"]["frames"].numpy()  # (3, 8, 16, 16, 3)
    env = DiffusionWorldEnv(tiny_world_model)
    assert "checkpoint" in env.core.contexts.description
    obs, _ = env.reset(seed=0)
    assert any(np.array_equal(obs, f) for f in stored[:, 3])
    with pytest.raises(UserError, match="not found"):  # an explicit dataset must exist
        DiffusionWorldEnv(tiny_world_model, dataset_id=ckpt["dataset"]["dataset_id"])


def test_reset_with_options_context(tiny_world_model: str, tiny_frame_cache) -> None:
    cache = tiny_frame_cache
    s = int(cache.episode_starts[5])
    context = np.array(cache.frames[s:s + 5])
    actions = cache.prev_actions[s + 1:s + 5]  # the 4 actions between the 5 frames
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model)
    options = {"context": context, "actions": actions}
    a = rollout(env, 0, [1, 0, 1], options)
    np.testing.assert_array_equal(a[0][0], context[-1])
    b = rollout(env, 0, [1, 0, 1], options)
    np.testing.assert_array_equal(a[0], b[0])
    # L actions (the one that led to each frame) give the same warm-up as L-1 between frames
    c = rollout(env, 0, [1, 0, 1], {"context": context, "actions": cache.prev_actions[s:s + 5],
                                    "has_action": cache.has_prev_action[s:s + 5]})
    np.testing.assert_array_equal(a[0], c[0])
    other = np.array(cache.frames[int(cache.episode_starts[6]):][:5])
    d = rollout(env, 0, [1, 0, 1], {"context": other, "actions": actions})
    assert not np.array_equal(a[0][1:], d[0][1:])
    with pytest.raises(UserError, match="options\\['context'\\]"):
        env.reset(options={"context": context[..., :2]})
    with pytest.raises(UserError, match="options\\['actions'\\]"):
        env.reset(options={"context": context, "actions": actions[:2]})
    with pytest.raises(UserError, match="options\\['has_action'\\] must have 5 entries"):
        env.reset(options={"context": context, "actions": cache.prev_actions[s:s + 5], "has_action": [True]})


def test_frame_stack_layout(tiny_world_model: str) -> None:
    # distinct frames (consecutive 16x16 CartPole frames are often identical, which would hide a wrong order)
    context = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, frame_stack=3, render_mode="rgb_array")
    assert env.observation_space.shape == (16, 16, 9)
    obs, _ = env.reset(seed=0, options={"context": context})
    for j in range(3):  # the last three context frames, oldest first
        np.testing.assert_array_equal(obs[..., 3 * j:3 * j + 3], context[1 + j])
    new, *_ = env.step(0)
    np.testing.assert_array_equal(new[..., :6], obs[..., 3:])
    np.testing.assert_array_equal(new[..., 6:], env.render())
    newer, *_ = env.step(1)
    np.testing.assert_array_equal(newer[..., :6], new[..., 3:])
    # a context shorter than the stack repeats its first frame
    obs, _ = env.reset(seed=0, options={"context": context[:2]})
    np.testing.assert_array_equal(obs[..., :3], context[0])
    np.testing.assert_array_equal(obs[..., 3:6], context[0])
    np.testing.assert_array_equal(obs[..., 6:], context[1])


def test_horizon_truncates_and_threshold_terminates(tiny_world_model: str) -> None:
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, horizon=3)
    env.reset(seed=0)
    ends = [env.step(0)[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, termination_threshold=0.0)
    env.reset(seed=0)
    assert env.step(0)[2] is True
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model)  # the fixture's termination head: low
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no step-after-termination warning while the episode runs
        assert not any(env.step(1)[2] for _ in range(5))


def test_step_after_termination_warns_and_close_ends_the_episode(tiny_world_model: str) -> None:
    env = DiffusionWorldEnv(tiny_world_model, termination_threshold=0.0)
    env.reset(seed=0)
    assert env.step(0)[2] is True
    with pytest.warns(UserWarning, match="step\\(\\) after the episode terminated"):
        env.step(0)
    env.reset(seed=0)  # a new episode: no warning on its first step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.step(0)
    env.close()
    with pytest.raises(ResetNeededError):
        env.step(0)
    env.close()  # twice is fine
    env.reset(seed=0)


def test_unknown_reset_options_warn(tiny_world_model: str) -> None:
    env = DiffusionWorldEnv(tiny_world_model)
    with pytest.warns(UserWarning, match="reset options \\['contxt'\\] are not used"):
        env.reset(seed=0, options={"contxt": np.zeros((2, 16, 16, 3), np.uint8)})
    vec = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model)
    with pytest.warns(UserWarning, match="reset options \\['foo'\\]"):
        vec.reset(seed=0, options={"foo": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the vector env's own option is known
        vec.reset(seed=0, options={"reset_mask": np.array([True, False])})


def test_render_fps_is_the_real_envs(tiny_world_model: str) -> None:
    from diffusion_world.data.pixel_env import recorded_render_fps

    real = make_real_env(tiny_world_model)  # CartPole: 50 frames per second
    assert real.metadata["render_fps"] == 50
    assert gym.make("DiffusionWorld-v0", world_model=tiny_world_model).metadata["render_fps"] == 50
    assert gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model).metadata["render_fps"] == 50
    assert diffusion_world.make_sb3_vec_env(tiny_world_model, 2, monitor=False).metadata["render_fps"] == 50
    assert recorded_render_fps({"id": "diffusion_world/Pixels-v0", "env_id": "CartPole-v1", "frame_skip": 2}) == 25
    assert recorded_render_fps({"id": "Pendulum-v1"}) == 30
    assert recorded_render_fps({"id": "Absent-v0"}) == 30 and recorded_render_fps(None, default=12) == 12


@pytest.mark.filterwarnings("ignore:dataset .* was recorded in another env:UserWarning")
def test_default_horizon_is_the_real_envs_time_limit(tiny_world_model: str, tmp_path: Path) -> None:
    """Without a horizon in the checkpoint (a card that sets none), episodes are truncated where the real env's
    are (it used to be 1000 steps for any env: Pendulum's real episodes last 200)."""
    from diffusion_world.checkpoint import load_checkpoint, save_checkpoint
    from diffusion_world.data.pixel_env import recorded_time_limit

    pixels = {"id": "diffusion_world/Pixels-v0", "env_id": "Pendulum-v1", "size": 16}
    assert recorded_time_limit(pixels) == 200
    assert recorded_time_limit({**pixels, "frame_skip": 3}) == 67  # the last pixel step repeats the action twice
    assert recorded_time_limit({**pixels, "env_kwargs": {"max_episode_steps": 50}}) == 50
    assert recorded_time_limit({**pixels, "max_episode_steps": 30}) == 30
    assert recorded_time_limit({"id": "CartPole-v1"}) == 500
    assert recorded_time_limit({"id": "CartPole-v1", "max_episode_steps": 100}) == 100
    assert recorded_time_limit({"id": "Absent-v0"}) is None and recorded_time_limit(None) is None
    assert recorded_time_limit({**pixels, "env_id": "Absent-v0"}) is None

    ckpt = load_checkpoint(tiny_world_model)  # its dataset: CartPole-v1 through the pixel env
    del ckpt["imagination"]["horizon"]
    save_checkpoint(tmp_path / "no_horizon.pt", ckpt)
    env = gym.make("DiffusionWorld-v0", world_model=str(tmp_path / "no_horizon.pt"))
    assert env.unwrapped.core.horizon == env.spec.max_episode_steps == 500
    assert ckpt["dataset"]["env_spec"]["max_episode_steps"] == 500  # recorded by collect
    ckpt["dataset"]["env_spec"] = {**{k: v for k, v in ckpt["dataset"]["env_spec"].items()
                                      if k != "max_episode_steps"}, "env_id": "Absent-v0"}
    save_checkpoint(tmp_path / "unknown_env.pt", ckpt)
    assert gym.make("DiffusionWorld-v0", world_model=str(tmp_path / "unknown_env.pt")).unwrapped.core.horizon == 1000


def test_no_termination_in_the_training_data_never_terminates(tiny_world_model: str, tmp_path: Path) -> None:
    """A model whose training episodes held no termination (Pendulum) never ends an episode: its head had
    nothing to learn to fire on (an undertrained one says about 0.5 everywhere)."""
    from diffusion_world.checkpoint import load_checkpoint, save_checkpoint
    from diffusion_world.envs.core import ImaginationCore

    def probabilities(path: str) -> list[float]:
        core = ImaginationCore(path, 1, termination_threshold=0.0)
        core.reset_rows([0], [np.random.default_rng(0)])
        out = []
        for _ in range(3):
            result = core.step(core.check_actions(np.zeros(1, np.int64)))
            out.append(float(result.termination_probability[0]))
            assert bool(result.terminated[0]) == (out[-1] > 0)
        return out

    assert all(p > 0 for p in probabilities(tiny_world_model))  # threshold 0: every step terminates
    ckpt = load_checkpoint(tiny_world_model)
    ckpt["dataset"]["training_terminations"] = 0
    save_checkpoint(tmp_path / "never.pt", ckpt)
    assert probabilities(str(tmp_path / "never.pt")) == [0.0, 0.0, 0.0]


def test_rewards_are_clipped_to_the_training_datas_range(tiny_world_model: str, tmp_path: Path) -> None:
    """The reward head regresses symlog(reward): symexp made an untrained Pong model pay about -5 per step, where
    real steps pay -1, 0 or 1. Predictions are clipped to the range of the training rewards the checkpoint records
    (checkpoints without it are not clipped); the fidelity benchmark scores the clipped rewards the env pays."""
    from diffusion_world.checkpoint import load_checkpoint, load_world_model, save_checkpoint
    from diffusion_world.envs.core import ImaginationCore

    def rewards(path: str) -> np.ndarray:
        core = ImaginationCore(path, 2, termination_threshold=1.0)
        core.reset_rows([0, 1], [np.random.default_rng(0), np.random.default_rng(1)])
        return np.concatenate([core.step(core.check_actions(np.array([0, 1]))).rewards for _ in range(4)])

    raw = rewards(tiny_world_model)
    lo, hi = float(np.quantile(raw, 0.25)), float(np.quantile(raw, 0.75))
    assert lo < hi
    ckpt = load_checkpoint(tiny_world_model)
    ckpt["dataset"]["reward_range"] = [lo, hi]
    save_checkpoint(tmp_path / "clipped.pt", ckpt)
    np.testing.assert_allclose(rewards(str(tmp_path / "clipped.pt")), np.clip(raw, lo, hi), rtol=1e-6)
    wm = load_world_model(tmp_path / "clipped.pt")
    assert wm.clip_rewards(torch.tensor([-1e3, lo, 1e3])).tolist() == pytest.approx([lo, lo, hi])


def _cores_with_constant_termination(path: str, p: float, num_envs: int, **kwargs):
    from diffusion_world.checkpoint import load_world_model
    from diffusion_world.envs.core import ImaginationCore

    wm = load_world_model(path)
    wm.termination_probability = lambda logits, frames=None: torch.full(logits.shape, p)
    return ImaginationCore(wm, num_envs, termination="sample", **kwargs)


def _sampled_terminations(core, seeds: list[int], steps: int) -> np.ndarray:
    core.reset_rows(range(core.num_envs), [np.random.default_rng(s) for s in seeds])
    actions = core.check_actions(np.zeros(core.num_envs, dtype=np.int64))
    return np.stack([core.step(actions).terminated for _ in range(steps)], axis=1)  # (N, steps)


def test_sampled_termination(tiny_world_model: str) -> None:
    """termination="sample": each row terminates with the predicted probability, drawn from its own generator,
    so a row of a batch terminates exactly when the same row alone does."""
    for p, expected in ((0.0, False), (1.0, True)):
        core = _cores_with_constant_termination(tiny_world_model, p, 2, horizon=100)
        assert (_sampled_terminations(core, [0, 1], 5) == expected).all()
    batched = _sampled_terminations(_cores_with_constant_termination(tiny_world_model, 0.5, 3, horizon=100),
                                    [5, 6, 7], 40)
    assert 0.3 < batched.mean() < 0.7, batched.mean()
    for i, seed in enumerate([5, 6, 7]):
        alone = _sampled_terminations(_cores_with_constant_termination(tiny_world_model, 0.5, 1, horizon=100),
                                      [seed], 40)
        np.testing.assert_array_equal(batched[i], alone[0])
    assert not np.array_equal(batched[0], batched[1])
    again = _sampled_terminations(_cores_with_constant_termination(tiny_world_model, 0.5, 3, horizon=100),
                                  [5, 6, 7], 40)
    np.testing.assert_array_equal(again, batched)
    # through gym.make, with the fixture's real (low) termination head: seeded episodes repeat exactly
    env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, termination="sample")
    a, b = rollout(env, 3, [0, 1] * 4), rollout(env, 3, [0, 1] * 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_rejected_actions_leave_the_env_usable(tiny_world_model: str) -> None:
    env = DiffusionWorldEnv(tiny_world_model)
    with pytest.raises(ResetNeededError, match="reset"):
        env.step(0)
    with pytest.raises(gym.error.ResetNeeded):  # gym.make's order enforcing says the same
        gym.make("DiffusionWorld-v0", world_model=tiny_world_model).step(0)
    ref = rollout(DiffusionWorldEnv(tiny_world_model), 7, [1, 0, 1, 1])
    obs, _ = env.reset(seed=7)
    frames = [obs]
    for a in [1, 0, 1, 1]:
        for bad in (2, -1, 1.0, True, "a", [0, 1], np.array([1]), None):
            with pytest.raises(InvalidActionError) as info:
                env.step(bad)
            assert isinstance(info.value, gym.error.InvalidAction) and isinstance(info.value, UserError)
            assert "Discrete(2)" in str(info.value)
        frames.append(env.step(np.int64(a))[0])
    np.testing.assert_array_equal(np.stack(frames), ref[0])


def test_box_actions(tiny_box_world_model: str) -> None:
    env = gym.make("DiffusionWorld-v0", world_model=tiny_box_world_model)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    env.reset(seed=0)
    a = env.step(np.array([0.5, -1.0], dtype=np.float64))[0]  # float64 within the bounds is fine
    for bad in (np.array([0.0]), np.array([np.nan, 0.0]), 0.5, np.array(["a", "b"])):
        with pytest.raises(InvalidActionError):
            env.step(bad)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.step([0.5, -1.0])[0], a)
    # out of bounds: clipped, as Pendulum and LunarLander clip (a planner's Gaussian samples were refused)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.step(np.array([0.5, -7.0]))[0], a)


def test_contexts_from_a_dataset_of_another_action_space(minari_root: Path, tmp_path: Path) -> None:
    from worldmodel_fixtures import make_tiny_checkpoint

    from diffusion_world.data.collect import collect

    collect("MountainCarContinuous-v0", "tt/mcc-v0", steps=10, size=16, progress=False)  # Box(-1, 1, (1,))
    for name, bounds, accepted in (("pendulum", 2.0, False), ("mcc", 1.0, True)):
        ckpt = make_tiny_checkpoint(tmp_path / f"{name}.pt", action_space={
            "type": "box", "shape": [1], "low": [-bounds], "high": [bounds]})
        if accepted:
            assert DiffusionWorldEnv(str(ckpt), dataset_id="tt/mcc-v0").action_space == gym.spaces.Box(-1, 1, (1,))
            continue
        with pytest.raises(UserError, match=r"'tt/mcc-v0' has action space Box\(-1.0, 1.0, \(1,\), float32\) but "
                                            r"the world model .* was trained with Box\(-2.0, 2.0, \(1,\), float32\)"):
            DiffusionWorldEnv(str(ckpt), dataset_id="tt/mcc-v0")


def test_bad_checkpoints_and_settings(tiny_world_model: str, tiny_frame_cache, tmp_path: Path) -> None:
    from worldmodel_fixtures import make_tiny_checkpoint

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable diffusion_world checkpoint"):
        DiffusionWorldEnv(str(text))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(Path(tiny_world_model).read_bytes()[:5000])
    with pytest.raises(UserError, match="checkpoint"):
        DiffusionWorldEnv(str(corrupt))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="not a diffusion_world checkpoint"):
        DiffusionWorldEnv(str(other))
    with pytest.raises(UserError, match="not found"):
        DiffusionWorldEnv(str(tmp_path / "missing.pt"))
    # a 32x32 model pointed at the 16x16 dataset
    big = make_tiny_checkpoint(tmp_path / "big.pt", cache=tiny_frame_cache, frame_size=(32, 32),
                               contexts={})
    with pytest.raises(UserError, match="16x16 frames but the world model .* 32x32"):
        DiffusionWorldEnv(str(big), dataset_id=tiny_frame_cache.dataset_id)
    with pytest.raises(UserError, match="16x16 frames but the world model .* 32x32"):  # no silent fallback
        DiffusionWorldEnv(str(big))
    no_contexts = make_tiny_checkpoint(tmp_path / "bare.pt", dataset_id="nowhere/absent-v0", contexts={})
    with pytest.raises(UserError, match="no reset contexts .* 'nowhere/absent-v0' is not on this machine"):
        DiffusionWorldEnv(str(no_contexts))
    for kwargs, match in [({"reset_mode": "middle"}, "reset_mode"), ({"frame_stack": 0}, "frame_stack"),
                          ({"horizon": 0}, "horizon"), ({"termination_threshold": 2}, "termination_threshold"),
                          ({"termination": "maybe"}, "termination must be one of"),
                          ({"context_frames": 100}, "context_frames"), ({"render_mode": "human"}, "render_mode"),
                          ({"context_source": "web"}, "context_source"),
                          ({"context_source": "checkpoint", "dataset_id": "a/b-v0"}, "give one of them")]:
        with pytest.raises(UserError, match=match):
            DiffusionWorldEnv(tiny_world_model, **kwargs)
    for bad in (0, -1, True, 2.5, "4"):  # the real env checks its frame stack as the imagined one does
        with pytest.raises(UserError, match="frame_stack must be an integer >= 1"):
            make_real_env(tiny_world_model, frame_stack=bad)
    # numpy numbers are numbers
    env = DiffusionWorldEnv(tiny_world_model, termination_threshold=np.float32(0.25),
                            history_guidance=np.float32(1.5), frame_stack=np.int64(2))
    assert env.core.termination_threshold == 0.25 and type(env.core.sampler.history_guidance) is float
    if not torch.cuda.is_available():  # torch's own assertion would come from deep inside the first .to()
        with pytest.raises(UserError, match="device 'cuda', but torch sees no CUDA device"):
            gym.make("DiffusionWorld-v0", world_model=tiny_world_model, device="cuda")
    with pytest.raises(UserError, match="invalid device"):
        DiffusionWorldEnv(tiny_world_model, device="gpu0")


def test_make_real_env_stacks_like_imagination(tiny_world_model: str) -> None:
    imagined = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, frame_stack=2)
    real = make_real_env(tiny_world_model, frame_stack=2)
    assert real.observation_space == imagined.observation_space
    obs, _ = real.reset(seed=0)
    np.testing.assert_array_equal(obs[..., :3], obs[..., 3:])  # first frame repeated at reset
    new, *_ = real.step(0)
    np.testing.assert_array_equal(new[..., :3], obs[..., 3:])


def test_make_real_env_passes_check_env_and_remakes_from_its_spec(tiny_world_model: str) -> None:
    """Gymnasium's check_env remakes the env from its spec (ChannelFrameStack could not be: it did not record its
    constructor's arguments), as does a user's gym.make(env.spec)."""
    from gymnasium.utils.env_checker import check_env

    real = make_real_env(tiny_world_model, frame_stack=2)
    check_env(real, skip_render_check=False)
    remade = gym.make(real.spec)
    assert remade.observation_space == real.observation_space
    np.testing.assert_array_equal(remade.reset(seed=4)[0], real.reset(seed=4)[0])
    np.testing.assert_array_equal(remade.step(1)[0], real.step(1)[0])
    remade.close()
    real.close()


def test_make_real_env_max_episode_steps(tiny_world_model: str) -> None:
    """A time limit for real envs without one (ALE's games: an agent that never serves plays 27,000 steps)."""
    real = make_real_env(tiny_world_model, frame_stack=2, max_episode_steps=3)
    real.reset(seed=0)
    flags = [real.step(i % 2)[2:4] for i in range(3)]  # CartPole cannot fail within 3 steps
    assert flags == [(False, False), (False, False), (False, True)]
    assert real.observation_space.shape == (16, 16, 6)
    with pytest.raises(UserError, match="max_episode_steps must be an integer >= 1"):
        make_real_env(tiny_world_model, max_episode_steps=0)


def test_make_real_env_goes_through_the_recorded_wrappers(tiny_world_model: str, tmp_path: Path) -> None:
    """A dataset recorded through wrappers applied after gym.make (pixels from AddRenderObservation, resized):
    its env spec records them, and the real env is rebuilt through them (it used to be the bare env: here state
    observations; with --frame-size, silently other frames). A kwarg JSON made a list is a tuple again."""
    from gymnasium.wrappers import AddRenderObservation, ResizeObservation

    from diffusion_world.checkpoint import load_checkpoint, save_checkpoint
    from diffusion_world.data.dataset import _env_spec_dict

    def recording_env() -> gym.Env:
        env = gym.make("CartPole-v1", render_mode="rgb_array", max_episode_steps=20)
        return ResizeObservation(AddRenderObservation(env, render_only=True), (16, 16))

    spec = json.loads(json.dumps(_env_spec_dict(recording_env().spec)))  # as the frame cache stores it
    assert [w["entry_point"].rsplit(":")[1] for w in spec["additional_wrappers"]] == ["AddRenderObservation",
                                                                                      "ResizeObservation"]
    ckpt = load_checkpoint(tiny_world_model)
    ckpt["dataset"]["env_spec"] = spec
    save_checkpoint(tmp_path / "wrapped.pt", ckpt)
    real, expected = make_real_env(str(tmp_path / "wrapped.pt")), recording_env()
    np.testing.assert_array_equal(real.reset(seed=3)[0], expected.reset(seed=3)[0])
    for _ in range(3):
        np.testing.assert_array_equal(real.step(1)[0], expected.step(1)[0])

    ckpt["dataset"]["env_spec"] = {k: v for k, v in spec.items() if k != "additional_wrappers"}
    save_checkpoint(tmp_path / "bare.pt", ckpt)  # a checkpoint from before wrappers were recorded
    with pytest.raises(UserError, match="gives observations Box.*not the frames"):
        make_real_env(str(tmp_path / "bare.pt"))
    ckpt["dataset"]["env_spec"] = {"id": "absent_pkg/Absent-v0"}
    save_checkpoint(tmp_path / "absent.pt", ckpt)
    with pytest.raises(UserError, match="unknown Gymnasium env id 'absent_pkg/Absent-v0' .*import that package"):
        make_real_env(str(tmp_path / "absent.pt"))


def test_lazy_sb3_export() -> None:
    assert callable(diffusion_world.make_sb3_vec_env)
    with pytest.raises(AttributeError):
        diffusion_world.no_such_name  # noqa: B018


# --- diffusion-world play -----------------------------------------------------------------------------------


def test_play_cli_gif_mp4_and_compare_real(tiny_world_model: str, tmp_path: Path) -> None:
    from diffusion_world.cli import main

    gif = tmp_path / "rollout.gif"
    assert main(["play", "--world-model", tiny_world_model, "--steps", "5", "--out", str(gif), "--quiet"]) == 0
    with Image.open(gif) as im:
        assert im.n_frames == 6 and im.size[0] >= 64  # reset frame + 5 steps, upscaled
    mp4 = tmp_path / "rollout.mp4"
    assert main(["play", "--world-model", tiny_world_model, "--steps", "4", "--out", str(mp4), "--quiet"]) == 0
    import cv2

    cap = cv2.VideoCapture(str(mp4))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    side = tmp_path / "compare.gif"
    assert main(["play", "--world-model", tiny_world_model, "--steps", "4", "--out", str(side), "--compare-real",
                 "--quiet"]) == 0
    with Image.open(side) as im:  # real | imagined side by side, under a strip that names them
        assert im.size == (2 * 128 + 4, 16 + 128)  # 16x16 frames upscaled 8x, a 4-pixel grey bar between
        frame = np.asarray(im.convert("RGB"))
        assert (frame[16:, 128:132] == 128).all() and (frame[:16] < 255).any()
    assert main(["play", "--world-model", tiny_world_model, "--out", str(tmp_path / "x.avi"), "--quiet"]) == 2
    for flag in ("--fps", "--scale", "--frame-stack"):  # refused before the rollout, not a crash after it
        assert main(["play", "--world-model", tiny_world_model, "--out", str(gif), flag, "0", "--quiet"]) == 2
    bf16 = tmp_path / "bf16.gif"  # --precision is the env's precision=
    assert main(["play", "--world-model", tiny_world_model, "--steps", "3", "--out", str(bf16), "--precision", "bf16",
                 "--quiet"]) == 0
    with Image.open(bf16) as im, Image.open(gif) as im32:
        assert im.n_frames == 4 and im.size == im32.size


def test_play_refuses_an_unwritable_output_before_the_rollout(tiny_world_model: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A directory, a folder that cannot be written, a huge --scale or a negative seed: refused before the rollout
    (they were raw tracebacks after it); a video is written under a temporary name and renamed."""
    from diffusion_world import play as play_module
    from diffusion_world.cli import main

    made = []
    monkeypatch.setattr("diffusion_world.envs.world_env.DiffusionWorldEnv", lambda *a, **k: made.append(1))
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    (tmp_path / "x.gif").mkdir()
    for out, extra, message in ((tmp_path / "x.gif", [], "is a directory"),
                                (a_file / "v.gif", [], "the video's folder '" + str(a_file) + "' is a file"),
                                (a_file / "sub" / "v.mp4", [], "cannot write the video's folder"),
                                (tmp_path / "v.gif", ["--scale", "100000"], "scale must be at most 32"),
                                (tmp_path / "v.gif", ["--seed", "-1"], "seed must be an integer >= 0")):
        assert main(["play", "--world-model", tiny_world_model, "--out", str(out), "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err
    assert not made
    frames = [np.full((8, 8, 3), i * 20, np.uint8) for i in range(3)]
    for name in ("w.gif", "w.mp4"):
        assert play_module.write_video(tmp_path / "sub" / name, frames).exists()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["w.gif", "w.mp4"]  # no temporary files left


def test_compare_real_says_whether_the_episode_was_held_out(tiny_world_model: str, tmp_path: Path) -> None:
    from diffusion_world.checkpoint import load_checkpoint, save_checkpoint
    from diffusion_world.play import play

    summary = play(tiny_world_model, steps=2, out=tmp_path / "a.gif", compare_real=True, progress=False)
    assert summary["held_out"] is True
    ckpt = load_checkpoint(tiny_world_model)
    ckpt["train_config"] = {"val_fraction": 0.0, "seed": 0}  # trained on every episode
    save_checkpoint(tmp_path / "all.pt", ckpt)
    with pytest.warns(UserWarning, match="held out no episode of .*: replaying one it trained on"):
        summary = play(str(tmp_path / "all.pt"), steps=2, out=tmp_path / "b.gif", compare_real=True, progress=False)
    assert summary["held_out"] is False
    ckpt["train_config"] = {"val_fraction": 0.0, "seed": 0, "dataset_id": "someone/else-v0"}  # another dataset
    save_checkpoint(tmp_path / "other.pt", ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert play(str(tmp_path / "other.pt"), steps=2, out=tmp_path / "c.gif", compare_real=True,
                    progress=False)["held_out"] is True


def test_play_cli_passes_precision_to_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusion_world.play as play_module
    from diffusion_world.cli import main

    seen: dict = {}
    monkeypatch.setattr(play_module, "play", lambda *a, **kwargs: seen.update(kwargs) or {})
    assert main(["play", "--precision", "bf16", "--quiet"]) == 0
    assert seen["precision"] == "bf16"
    seen.clear()
    assert main(["play", "--quiet"]) == 0
    assert "precision" not in seen  # the env's default


def test_noise_levels_outside_the_trained_context_noise_warn(tiny_world_model: str) -> None:
    """The caches take frames at the sampler's sigma_min, at sigma_ctx and (guided) at history_sigma: levels the
    clean stream never saw in training were used without a word."""
    import warnings

    from diffusion_world.checkpoint import load_world_model

    wm = load_world_model(tiny_world_model)
    wm.context_noise_range = (0.002, 0.1)  # LossConfig's defaults (a trained checkpoint records its own)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DiffusionWorldEnv(wm, history_guidance=2.0)
    wm.context_noise_range = (0.05, 0.2)
    with pytest.warns(UserWarning, match=r"the sampler's last noise level 0.002, sigma_ctx 0.002 outside the "
                                         r"context noise the model was trained on \(0.05 to 0.2"):
        DiffusionWorldEnv(wm)
    wm.context_noise_range = (0.002, 0.1)
    with pytest.warns(UserWarning, match=r"the sampler's last noise level 5 outside"):  # one step: at sigma_max
        DiffusionWorldEnv(wm, sampler_steps=1)
