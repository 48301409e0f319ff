"""The natively batched Gymnasium vector env: make_vec, vector == single env, both autoreset conventions,
per-row resets, bad inputs."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from diffusion_world import make_sb3_vec_env
from diffusion_world.envs import DiffusionWorldVectorEnv, InvalidActionError, ResetNeededError
from diffusion_world.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Batched arithmetic (another GEMM blocking for N rows than for 1) changes float results by ~1e-6, which flips
# a uint8 frame value only when it lies that close to a rounding boundary. Measured on the tiny model over 40
# steps: 3e-5 (N=3) to 6e-5 (N=8) of the pixels differ, all by exactly 1. The tolerance is 20x that.
MAX_FLIPPED_FRACTION = 1e-3


def assert_frames_close(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1, f"frames differ by up to {diff.max()}"
    assert (diff > 0).mean() <= MAX_FLIPPED_FRACTION, f"{(diff > 0).mean():.2e} of the pixels differ"


def single_rollout(path: str, seed: int, actions: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    env = gym.make("DiffusionWorld-v0", world_model=path, **kwargs)
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for a in actions:
        obs, r, *_ = env.step(a)
        frames.append(obs)
        rewards.append(r)
    return np.stack(frames), np.array(rewards)


def test_make_vec_uses_the_native_vector_env(tiny_world_model: str) -> None:
    for mode in ("vector_entry_point", None):
        envs = gym.make_vec("DiffusionWorld-v0", num_envs=3, world_model=tiny_world_model, vectorization_mode=mode)
        assert isinstance(envs, DiffusionWorldVectorEnv)
        assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        assert envs.observation_space.shape == (3, 16, 16, 3)
        assert envs.action_space == gym.spaces.MultiDiscrete([2, 2, 2])
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, autoreset_mode="SameStep")
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP


ASYNC_SCRIPT = """
import sys, numpy as np, torch, gymnasium as gym, diffusion_world
torch.set_num_threads(2)
torch.randn(256, 256) @ torch.randn(256, 256)  # the parent's OpenMP pool is running when the workers fork
rewards = {}
for mode in ("async", "sync"):
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=2, vectorization_mode=mode, world_model=sys.argv[1])
    envs.reset(seed=0)
    rewards[mode] = np.stack([envs.step(np.array([0, 1]))[1] for _ in range(3)])
    envs.close()
np.testing.assert_allclose(rewards["async"], rewards["sync"], rtol=1e-4, atol=1e-5)
print("ok")
"""


def test_async_vector_env_forks_without_hanging(tiny_world_model: str) -> None:
    """gym.make_vec(..., vectorization_mode="async") builds an env in the parent, then forks its workers: their
    torch must not wait on the parent's OpenMP threads (it hung forever), and they step as the sync mode does."""
    out = subprocess.run([sys.executable, "-c", ASYNC_SCRIPT, tiny_world_model], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


FORK_SCRIPT = """
import os, torch
torch.set_num_threads(2)
import diffusion_world  # no env made: SB3's SubprocVecEnv(start_method="fork") after training an agent
r, w = os.pipe()
if os.fork() == 0:
    os.write(w, str(torch.get_num_threads()).encode())
    os._exit(0)
os.wait()
print(os.read(r, 8).decode())
"""


def test_processes_forked_after_import_run_torch_on_one_thread() -> None:
    """The fork hook is registered at import, not when the first imagined env is made: a parent that trained an
    agent on several threads, then forked SubprocVecEnv workers making imagined envs, hung them forever."""
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "1", (out.stdout, out.stderr[-2000:])


def test_sub_env_i_equals_single_env_seeded_s_plus_i(tiny_world_model: str) -> None:
    N, T, seed = 3, 12, 10
    actions = np.random.default_rng(0).integers(0, 2, (T, N))
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=N, world_model=tiny_world_model)
    obs, _ = envs.reset(seed=seed)
    frames, rewards = [obs], []
    for a in actions:
        obs, r, *_ = envs.step(a)
        frames.append(obs)
        rewards.append(r)
    frames_v, rewards_v = np.stack(frames, 1), np.stack(rewards, 1)  # (N, T+1, ...)
    for i in range(N):
        frames_s, rewards_s = single_rollout(tiny_world_model, seed + i, actions[:, i])
        np.testing.assert_array_equal(frames_v[i, 0], frames_s[0])  # the reset frame is a real frame: exact
        assert_frames_close(frames_v[i], frames_s)
        np.testing.assert_allclose(rewards_v[i], rewards_s, atol=1e-4)
    assert not np.array_equal(frames_v[0, 1:], frames_v[1, 1:])


def test_next_step_autoreset_rows_independent(tiny_world_model: str) -> None:
    """horizon=3; sub-env 1 is reset one step later than sub-env 0, so they end (and restart) at different
    steps; the restarted sub-env continues like a single env reset without a seed."""
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, horizon=3)
    envs.reset(seed=0)
    envs.step(np.array([1, 1]))
    before_row0 = envs.unwrapped.core.steps[0]
    obs, *_ = envs.reset(options={"reset_mask": np.array([False, True])})
    assert envs.unwrapped.core.steps.tolist() == [before_row0, 0]
    ends = []
    for _ in range(4):
        obs, rewards, terminations, truncations, infos = envs.step(np.array([0, 0]))
        ends.append(truncations.tolist())
    # row 0 ends at its 3rd step, row 1 one step later; the step after row 0 ended is its reset step
    assert ends == [[False, False], [True, False], [False, True], [False, False]]

    single = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, horizon=3)
    single.reset(seed=0)
    for a in (1, 0, 0):
        single.step(a)
    first, _ = single.reset()  # no seed: the same generator, continued
    envs2 = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, horizon=3)
    envs2.reset(seed=0)
    for a in ([1, 1], [0, 0], [0, 0]):
        *_, truncations, _ = envs2.step(np.array(a))
    assert truncations.tolist() == [True, True]
    obs, rewards, terminations, truncations, _ = envs2.step(np.array([1, 1]))  # action ignored: reset step
    np.testing.assert_array_equal(obs[0], first)
    assert rewards.tolist() == [0.0, 0.0] and not terminations.any() and not truncations.any()
    obs, *_ = envs2.step(np.array([1, 0]))
    assert_frames_close(obs[0], single.step(1)[0])


def test_same_step_autoreset(tiny_world_model: str) -> None:
    kwargs = {"num_envs": 2, "world_model": tiny_world_model, "horizon": 2}
    next_step = gym.make_vec("DiffusionWorld-v0", **kwargs)
    same_step = gym.make_vec("DiffusionWorld-v0", autoreset_mode="SameStep", **kwargs)
    next_step.reset(seed=5)
    same_step.reset(seed=5)
    for t in range(2):
        a = np.array([t % 2, 1])
        obs_n, *_ = next_step.step(a)
        obs_s, rewards, terminations, truncations, infos = same_step.step(a)
    assert truncations.all()
    assert infos["_final_obs"].tolist() == [True, True] and infos["_final_info"].tolist() == [True, True]
    for i in range(2):
        assert_frames_close(infos["final_obs"][i], obs_n[i])  # the last frame of the ended episode
    restart, *_ = next_step.step(np.array([0, 0]))  # next-step convention: the reset comes one step later
    np.testing.assert_array_equal(obs_s, restart)
    obs_s, *_, infos = same_step.step(np.array([0, 0]))
    assert "final_obs" not in infos


def test_disabled_autoreset_and_bad_inputs(tiny_world_model: str) -> None:
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, horizon=1,
                        autoreset_mode="Disabled")
    with pytest.raises(ResetNeededError):
        envs.step(np.array([0, 0]))
    envs.reset(seed=0)
    *_, truncations, _ = envs.step(np.array([0, 1]))
    assert truncations.all()
    with pytest.raises(ResetNeededError, match="reset_mask"):
        envs.step(np.array([0, 0]))
    envs.reset(options={"reset_mask": np.array([True, True])})
    for bad in (np.array([0, 2]), np.array([0, 1, 1]), np.array([0.0, 1.0]), 1):
        with pytest.raises(InvalidActionError):
            envs.step(bad)
    with pytest.raises(InvalidActionError, match="each of the 2 envs' action space Discrete"):
        envs.step(np.array([0, 5]))
    envs.step(np.array([1, 0]))  # still usable
    for mask in (np.array([False, False]), np.array([1, 0]), np.array([True])):
        with pytest.raises(UserError, match="reset_mask"):
            envs.reset(options={"reset_mask": mask})
    with pytest.raises(UserError, match="autoreset_mode"):
        DiffusionWorldVectorEnv(2, tiny_world_model, autoreset_mode="Sometimes")
    typo = r"got unexpected kwargs 'horizn' \(did you mean 'horizon'\?\); the imagined env takes \[.*'horizon'"
    with pytest.raises(UserError, match="DiffusionWorldVectorEnv " + typo):
        gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, horizn=5)
    with pytest.raises(UserError, match="DiffusionWorldSB3VecEnv " + typo):
        make_sb3_vec_env(tiny_world_model, num_envs=2, horizn=5)
    # the single env too (its kwargs are explicit parameters: it raised a bare TypeError)
    with pytest.raises(UserError, match="DiffusionWorldEnv " + typo + ".*'render_mode'"):
        gym.make("DiffusionWorld-v0", world_model=tiny_world_model, horizn=5)


def test_reset_options_context_and_render(tiny_world_model: str, tiny_frame_cache) -> None:
    cache = tiny_frame_cache
    s = int(cache.episode_starts[1])
    context = np.array(cache.frames[s:s + 4])
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, render_mode="rgb_array")
    obs, _ = envs.reset(seed=0, options={"context": context})
    np.testing.assert_array_equal(obs, np.stack([context[-1]] * 2))
    envs.step(np.array([0, 1]))
    frames = envs.render()
    assert len(frames) == 2 and frames[0].shape == (16, 16, 3)


def test_call_get_attr_set_attr_as_sync_vector_env(tiny_world_model: str) -> None:
    """Code written against SyncVectorEnv's call / get_attr / set_attr runs on the batched env: the same shapes
    of answer; a method runs once for all sub-envs; sub-envs cannot hold different values."""
    kwargs = dict(num_envs=2, world_model=tiny_world_model, render_mode="rgb_array")
    batched = gym.make_vec("DiffusionWorld-v0", **kwargs).unwrapped
    sync = gym.make_vec("DiffusionWorld-v0", vectorization_mode="sync", **kwargs)
    for envs in (batched, sync):
        envs.reset(seed=0)
        assert envs.get_attr("render_mode") == ("rgb_array", "rgb_array")
        frames = envs.call("render")
        assert len(frames) == 2 and all(f.shape == (16, 16, 3) for f in frames)
    np.testing.assert_array_equal(np.stack(batched.call("render")), np.stack(batched.render()))
    # each sub-env's own seed and generator, as SyncVectorEnv's sub-envs give them (it gave the shared one)
    batched.reset(seed=10)
    sync.reset(seed=10)
    assert batched.get_attr("np_random_seed") == sync.get_attr("np_random_seed") == (10, 11)
    assert [g.random() for g in batched.get_attr("np_random")] == [g.random() for g in sync.get_attr("np_random")]
    mine = [np.random.default_rng(1), np.random.default_rng(2)]
    for envs in (batched, sync):  # each sub-env's own generator set, its seed then -1
        envs.set_attr("np_random", mine)
        assert envs.get_attr("np_random_seed") == (-1, -1)
        assert all(a is b for a, b in zip(envs.get_attr("np_random"), mine))
    with pytest.raises(UserError, match="np_random_seed is read-only"):
        batched.set_attr("np_random_seed", 3)
    fresh = gym.make_vec("DiffusionWorld-v0", **kwargs).unwrapped  # before any reset: random seeds, as Gymnasium's
    assert all(seed >= 0 for seed in fresh.get_attr("np_random_seed"))
    plain = gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model)  # no render_mode
    for render in (plain.render, lambda: plain.call("render")):  # before a reset, as a Gymnasium env's
        with pytest.raises(ResetNeededError):
            render()
    for envs in (plain, gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model,
                                     vectorization_mode="sync")):
        envs.reset(seed=0)
        assert envs.call("render") == (None, None)
    assert plain.render() is None
    batched.set_attr("note", ["a", "a"])
    assert batched.get_attr("note") == ("a", "a")
    with pytest.raises(UserError, match="share their attributes"):
        batched.set_attr("note", ["a", "b"])
    calls = []
    batched.reset = lambda **kw: calls.append(kw) or "out"
    assert batched.call("reset", seed=1) == ("out", "out") and calls == [{"seed": 1}]  # once, not per sub-env


def test_bf16_precision_batched_equals_single_and_stays_near_fp32(tiny_world_model: str) -> None:
    """precision="bf16" (autocast): vector == single env up to bf16 rounding; frames within rounding of fp32's
    (measured on the tiny model over 12 steps: mean |diff| 0.45 of 255, max 3-4).

    How close batched and single bf16 rollouts are depends on the CPU's bf16 kernels: with native bf16 (an Intel
    Xeon with AMX) they differ as fp32 rollouts do, in a few pixels by 1; where bf16 is emulated (an AMD EPYC with
    AVX2 only) another GEMM blocking for N rows rounds differently, and 15-17% of the pixels differ, by 0.15-0.19
    of 255 on average and at most 3. Either way batching must move the frames less than bf16 itself does; a
    mixed-up seed or context would move them by tens."""
    N, T, seed = 3, 12, 10
    actions = np.random.default_rng(0).integers(0, 2, (T, N))
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=N, world_model=tiny_world_model, precision="bf16")
    assert envs.core.precision == "bf16"
    obs, _ = envs.reset(seed=seed)
    frames = [obs]
    for a in actions:
        frames.append(envs.step(a)[0])
    frames_v = np.stack(frames, 1)
    for i in range(N):
        frames_s, _ = single_rollout(tiny_world_model, seed + i, actions[:, i], precision="bf16")
        frames_32, _ = single_rollout(tiny_world_model, seed + i, actions[:, i])
        diff = np.abs(frames_s.astype(np.int16) - frames_32.astype(np.int16))
        assert 0 < diff.mean() < 2.0 and diff.max() <= 16, (diff.mean(), diff.max())
        batching = np.abs(frames_v[i].astype(np.int16) - frames_s.astype(np.int16))
        assert batching.mean() < diff.mean() and batching.max() <= diff.max(), (batching.mean(), batching.max())
    with pytest.raises(UserError, match="precision"):
        gym.make("DiffusionWorld-v0", world_model=tiny_world_model, precision="fp16")


def test_bf16_on_a_cpu_that_emulates_it_warns(tiny_world_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """precision="bf16" where the CPU only emulates bf16 (there several times slower than fp32) says so;
    "auto" and fp32 do not, nor does bf16 where the CPU has it natively."""
    import warnings

    from diffusion_world import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        gym.make("DiffusionWorld-v0", world_model=tiny_world_model, precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in ("fp32", "auto"):
            gym.make("DiffusionWorld-v0", world_model=tiny_world_model, precision=p)
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
        gym.make_vec("DiffusionWorld-v0", num_envs=2, world_model=tiny_world_model, precision="bf16")


def test_imagine_in_bf16_returns_fp32_heads_and_frames_near_fp32(tiny_world_model: str) -> None:
    """The benchmarks' rollouts (``imagine``) take the envs' precision: bf16 changes the frames by rounding only,
    and the reward and termination outputs stay fp32 (numpy has no bf16)."""
    import torch

    from diffusion_world.checkpoint import load_world_model
    from diffusion_world.diffusion.sampler import imagine

    wm = load_world_model(tiny_world_model)
    rng = np.random.default_rng(0)
    B, c, S = 2, 3, 8
    frames = torch.from_numpy(rng.integers(0, 256, (B, c, *wm.config.frame_size, 3), dtype=np.uint8))
    actions = torch.from_numpy(rng.integers(0, 2, (B, c + S)))
    has = torch.ones(B, c, dtype=torch.bool)
    out = {p: imagine(wm.model, frames, actions[:, :c], has, actions[:, c:],
                      [torch.Generator().manual_seed(i) for i in range(B)], wm.sampler_config(None, None),
                      precision=p) for p in ("fp32", "bf16")}
    for p in out:
        assert out[p]["frames"].dtype == torch.uint8
        assert out[p]["rewards"].dtype == out[p]["termination_logits"].dtype == torch.float32
    diff = (out["bf16"]["frames"].short() - out["fp32"]["frames"].short()).abs().float()
    assert 0 < diff.mean() < 2.0 and diff.max() <= 16, (diff.mean(), diff.max())
    assert torch.allclose(out["bf16"]["rewards"], out["fp32"]["rewards"], atol=0.1)
    with pytest.raises(UserError, match="precision"):
        imagine(wm.model, frames, actions[:, :c], has, actions[:, c:], [torch.Generator()] * B,
                wm.sampler_config(None, None), precision="half")
