"""History guidance in the sampler: the guided frame is D_u + w (D - D_u) from two sets of caches (the second
holding the context at history_sigma), w = 1 is the unguided sampler, the env and vector env carry the guide
through resets, and the benchmarks pass --history-guidance on."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_equivalence import make_model
from test_vector_env import assert_frames_close, single_rollout

from diffusion_world.diffusion.sampler import SamplerConfig, edm_sigmas, frames_to_x, imagine
from diffusion_world.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randn(shape, gens) -> torch.Tensor:
    return torch.stack([torch.randn(*shape, generator=g) for g in gens])


def reference_rollout(model, ctx, ctx_actions, ctx_has, actions, seeds, cfg) -> torch.Tensor:
    """The guided sampler written out with raw model calls on two explicit states (Euler, no churn)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    B, S = actions.shape[:2]
    x_ctx = frames_to_x(ctx)
    main, noisy = model.new_state(B), model.new_state(B)
    model.warmup(main, x_ctx, cfg.sigma_min, ctx_actions, ctx_has)
    model.warmup(noisy, x_ctx + cfg.history_sigma * _randn(x_ctx.shape[1:], gens), cfg.history_sigma, ctx_actions,
                 ctx_has)
    sig = edm_sigmas(cfg)
    has = torch.ones(B, dtype=torch.bool)
    out = []
    for t in range(S):
        x = _randn(x_ctx.shape[2:], gens) * sig[0]
        for i in range(cfg.num_steps):
            s = sig[i].expand(B)
            d = model.denoise_step(main, x, s, actions[:, t], has)
            if sig[i] > cfg.sigma_min:
                d_u = model.denoise_step(noisy, x, s, actions[:, t], has)
                d = d_u + cfg.history_guidance * (d - d_u)
            x = x + (sig[i + 1] - sig[i]) * (x - d) / sig[i]
        model.commit(main)
        model.denoise_step(noisy, x + cfg.history_sigma * _randn(x.shape[1:], gens),
                           torch.full((B,), cfg.history_sigma), actions[:, t], has)
        model.commit(noisy)
        out.append(x)
    return torch.stack(out, 1)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_guided_frames_are_the_two_cache_formula(num_steps: int) -> None:
    model = make_model().float()
    H, W = model.cfg.frame_size
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, 256, (2, 3, H, W, 3), generator=g, dtype=torch.uint8)
    ctx_actions = torch.randint(0, 3, (2, 3), generator=g)
    ctx_has = torch.tensor([[False, True, True]] * 2)
    actions = torch.randint(0, 3, (2, 4), generator=g)
    cfg = SamplerConfig(num_steps=num_steps, history_guidance=2.0, history_sigma=0.2)
    seeds = [5, 6]
    with torch.no_grad():
        expect = reference_rollout(model, ctx, ctx_actions, ctx_has, actions, seeds, cfg)
    got = imagine(model, ctx, ctx_actions, ctx_has, actions, [torch.Generator().manual_seed(s) for s in seeds], cfg)
    torch.testing.assert_close(frames_to_x(got["frames"]), frames_to_x(((expect.clamp(-1, 1) + 1) * 127.5).round()
                                                                       .to(torch.uint8).movedim(-3, -1)),
                               atol=1 / 127.5 + 1e-6, rtol=0)  # at most one uint8 level (rounding)
    # w = 1 is the unguided sampler: no second set of caches, the same frames as ever
    plain = imagine(model, ctx, ctx_actions, ctx_has, actions, [torch.Generator().manual_seed(s) for s in seeds],
                    SamplerConfig(num_steps=num_steps))
    off = imagine(model, ctx, ctx_actions, ctx_has, actions, [torch.Generator().manual_seed(s) for s in seeds],
                  SamplerConfig(num_steps=num_steps, history_guidance=1.0, history_sigma=0.2))
    assert torch.equal(plain["frames"], off["frames"])
    assert not torch.equal(plain["frames"], got["frames"])


def test_guided_vector_env_equals_single_envs_across_resets(tiny_world_model: str) -> None:
    """Rows reset on their own (horizon 3) and warm their guide up with them: sub-env i seeded s+i still
    produces the frames of a single guided env seeded s+i."""
    N, T, seed, kw = 3, 7, 10, {"history_guidance": 2.0, "horizon": 3}
    actions = np.random.default_rng(0).integers(0, 2, (T, N))
    envs = gym.make_vec("DiffusionWorld-v0", num_envs=N, world_model=tiny_world_model, autoreset_mode="SameStep",
                        **kw)
    obs, _ = envs.reset(seed=seed)
    frames = [obs]
    for a in actions:
        obs, *_ = envs.step(a)
        frames.append(obs)
    frames_v = np.stack(frames, 1)
    for i in range(N):
        env = gym.make("DiffusionWorld-v0", world_model=tiny_world_model, **kw)
        o, _ = env.reset(seed=seed + i)
        single = [o]
        for a in actions[:, i]:
            o, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                o, _ = env.reset()
            single.append(o)
        assert_frames_close(frames_v[i], np.stack(single))
    unguided, _ = single_rollout(tiny_world_model, seed, actions[:, 0], horizon=3)
    assert not np.array_equal(unguided[1:3], frames_v[0, 1:3])


def test_bad_guidance_settings(tiny_world_model: str) -> None:
    for kwargs, match in [({"history_guidance": -1.0}, "history_guidance"),
                          ({"history_guidance": float("nan")}, "history_guidance"),
                          ({"history_sigma": 0.0}, "history_sigma")]:
        with pytest.raises(UserError, match=match):
            SamplerConfig(**kwargs).validate()
    with pytest.raises(UserError, match="history_guidance"):
        gym.make("DiffusionWorld-v0", world_model=tiny_world_model, history_guidance="strong")
