"""Equivalence tests of the DART model: training mode vs cached inference, causality, attention backends,
window eviction, batch independence, magnitude preservation. Tiny model, float64, CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffusion_world.model.config import preset_config
from diffusion_world.model.dart import (
    DartWorldModel,
    _dense_dart_attention,
    dart_frame_mask,
    grow_input_temporal_kernel,
)
from diffusion_world.model.mp import MPConv, mp_cat, mp_silu, mp_sum, normalize

ATOL = 1e-9

ACTION_SPACES = {
    "discrete": {"type": "discrete", "n": 3},
    "box": {"type": "box", "shape": [2], "low": [-1.0, None], "high": [1.0, None]},
}


def make_model(action: str = "discrete", **overrides) -> DartWorldModel:
    torch.manual_seed(0)
    cfg = preset_config("tiny", action_space=ACTION_SPACES[action], **overrides)
    model = DartWorldModel(cfg).double().eval()
    with torch.no_grad():  # zero-initialised gains would hide most of the network: randomise them
        for p in model.parameters():
            if p.ndim == 0:
                p.fill_(0.5 + torch.rand(()).item())
    return model


def make_inputs(model: DartWorldModel, B: int = 2, T: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, W = model.cfg.frame_size
    space = model.cfg.action_space
    if space["type"] == "discrete":
        actions = torch.randint(0, space["n"], (B, T), generator=g)
    else:
        actions = torch.randn(B, T, *space["shape"], generator=g, dtype=torch.float64)
    has_action = torch.ones(B, T, dtype=torch.bool)
    has_action[:, 0] = torch.rand(B, generator=g) < 0.5
    return dict(
        x_clean=torch.randn(B, T, 3, H, W, generator=g, dtype=torch.float64) * 0.5,
        sigma_ctx=torch.exp(torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 5),
        x_noisy=torch.randn(B, T, 3, H, W, generator=g, dtype=torch.float64),
        sigma=torch.exp(torch.randn(B, T, generator=g, dtype=torch.float64) * 1.2 - 0.4),
        actions=actions,
        has_action=has_action,
    )


def train_forward(model: DartWorldModel, inp: dict[str, torch.Tensor], **kw):
    return model(inp["x_noisy"], inp["sigma"], inp["x_clean"], inp["sigma_ctx"], inp["actions"],
                 inp["has_action"], **kw)


def rows(inp: dict[str, torch.Tensor], sl) -> dict[str, torch.Tensor]:
    return {k: v[sl] for k, v in inp.items()}


@pytest.mark.parametrize("action,input_k", [("discrete", 1), ("box", 1), ("discrete", 3)])
def test_training_mode_equals_cached_inference(action: str, input_k: int) -> None:
    """(1) Noisy frame t in training == one denoiser call after warming the caches up on clean frames < t."""
    model = make_model(action, input_temporal_kernel=input_k)
    inp = make_inputs(model)
    T = inp["x_clean"].shape[1]
    with torch.no_grad():
        ref = train_forward(model, inp)
        for t in range(T):
            state = model.new_state(2)
            if t > 0:
                heads = model.warmup(state, inp["x_clean"][:, :t], inp["sigma_ctx"][:, :t],
                                     inp["actions"][:, :t], inp["has_action"][:, :t])
                torch.testing.assert_close(heads.reward, ref.reward[:, :t], atol=ATOL, rtol=0)
                torch.testing.assert_close(heads.termination_logit, ref.termination_logit[:, :t], atol=ATOL,
                                           rtol=0)
            d = model.denoise_step(state, inp["x_noisy"][:, t], inp["sigma"][:, t], inp["actions"][:, t],
                                   inp["has_action"][:, t])
            torch.testing.assert_close(d, ref.denoised[:, t], atol=ATOL, rtol=0)
    assert ref.denoised.abs().mean() > 0.05  # the comparison is not between zeros


@pytest.mark.parametrize("input_k", [1, 3])
def test_causality(input_k: int) -> None:
    """(2) Outputs at t never change when clean frames > t or noisy frames != t change."""
    model = make_model(input_temporal_kernel=input_k)
    inp = make_inputs(model, T=6)
    t = 2
    with torch.no_grad():
        ref = train_forward(model, inp)
        changed = dict(inp)
        changed["x_clean"] = inp["x_clean"].clone()
        changed["x_clean"][:, t + 1:] += 1.0
        changed["x_noisy"] = inp["x_noisy"].clone()
        changed["x_noisy"][:, [0, 1, 3, 4, 5]] *= -2.0
        changed["actions"] = inp["actions"].clone()
        changed["actions"][:, t + 1:] = (inp["actions"][:, t + 1:] + 1) % 3
        out = train_forward(model, changed)
    torch.testing.assert_close(out.denoised[:, t], ref.denoised[:, t], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.reward[:, : t + 1], ref.reward[:, : t + 1], atol=ATOL, rtol=0)
    # and the perturbation is visible where it should be
    assert (out.denoised[:, t + 1] - ref.denoised[:, t + 1]).abs().max() > 1e-3
    # changing clean frame t-1 does change noisy frame t (it is context)
    changed = dict(inp)
    changed["x_clean"] = inp["x_clean"].clone()
    changed["x_clean"][:, t - 1] += 1.0
    with torch.no_grad():
        out = train_forward(model, changed)
    assert (out.denoised[:, t] - ref.denoised[:, t]).abs().max() > 1e-3


@pytest.mark.parametrize("window,noisy", [(None, None), (2, None), (None, [5]), (3, [0, 2, 5])])
def test_flex_attention_equals_dense_sdpa(window: int | None, noisy: list[int] | None) -> None:
    """(3) FlexAttention with a block mask == SDPA with the dense DART mask (forward), also with a sliding window
    and with a subset of the frames noisy (last-frame supervision)."""
    model = make_model()
    inp = make_inputs(model)
    idx = None if noisy is None else torch.tensor(noisy)
    n = inp["x_noisy"].shape[1] if idx is None else len(idx)
    part = {**inp, "x_noisy": inp["x_noisy"][:, :n], "sigma": inp["sigma"][:, :n]}
    with torch.no_grad():
        dense = train_forward(model, part, noisy_index=idx, window=window, attn_backend="sdpa")
        flex = train_forward(model, part, noisy_index=idx, window=window, attn_backend="flex")
    torch.testing.assert_close(flex.denoised, dense.denoised, atol=1e-7, rtol=0)
    torch.testing.assert_close(flex.reward, dense.reward, atol=1e-7, rtol=0)
    torch.testing.assert_close(flex.termination_logit, dense.termination_logit, atol=1e-7, rtol=0)


@pytest.mark.parametrize("window,noisy", [(None, None), (3, None), (None, [5]), (3, [1, 3, 5])])
def test_causality_by_gradients(window: int | None, noisy: list[int] | None) -> None:
    """(2b) With a sliding window and with some frames noisy: noisy frame t has zero gradient with respect to
    clean frames >= t and to the other noisy frames, and a non-zero one with respect to clean frame t - 1; the
    heads at clean frame t have zero gradient with respect to clean frames > t."""
    model = make_model()
    inp = make_inputs(model, T=6)
    idx = torch.arange(6) if noisy is None else torch.tensor(noisy)
    clean = inp["x_clean"].clone().requires_grad_(True)
    x_noisy = inp["x_noisy"][:, : len(idx)].clone().requires_grad_(True)
    out = model(x_noisy, inp["sigma"][:, : len(idx)], clean, inp["sigma_ctx"], inp["actions"], inp["has_action"],
                noisy_index=None if noisy is None else idx, window=window)
    for n, t in enumerate(idx.tolist()):
        g_clean, g_noisy = torch.autograd.grad(out.denoised[:, n].sum(), (clean, x_noisy), retain_graph=True)
        assert g_clean[:, t:].abs().max() == 0, f"noisy frame {t} reads clean frames >= {t}"
        others = torch.cat([g_noisy[:, :n], g_noisy[:, n + 1:]], 1)
        assert not others.numel() or others.abs().max() == 0, f"noisy frame {t} reads other noisy frames"
        assert t == 0 or g_clean[:, t - 1].abs().max() > 0, f"noisy frame {t} does not read clean frame {t - 1}"
    for t in range(5):
        (g,) = torch.autograd.grad((out.reward[:, t] + out.termination_logit[:, t]).sum(), clean, retain_graph=True)
        assert g[:, t + 1:].abs().max() == 0, f"the heads at frame {t} read later frames"


@pytest.mark.parametrize("sampler", [{"num_steps": 3}, {"num_steps": 2, "order": 2, "s_churn": 1.0},
                                     {"num_steps": 3, "history_guidance": 2.0}])
def test_sampled_frames_enter_the_caches_as_their_last_denoiser_call(sampler: dict) -> None:
    """(4b) Through ``sample_next_frame`` (Euler, Heun with churn, history guidance): after each imagined frame,
    the caches and heads are those of a fresh warm-up over the real context and, for each imagined frame, the
    input of its last denoiser call at that call's noise level: the cache update comes with that call."""
    from diffusion_world.diffusion.sampler import SamplerConfig, sample_next_frame, warmup

    model = make_model()
    inp = make_inputs(model, T=8)
    cfg, B, C, steps = SamplerConfig(**sampler), 2, 3, 3
    calls: list[tuple[object, torch.Tensor, torch.Tensor]] = []
    denoise_step = model.denoise_step

    def record(state, x, sigma, action, has_action):  # type: ignore[no-untyped-def]
        calls.append((state, x.clone(), sigma.clone()))
        return denoise_step(state, x, sigma, action, has_action)

    model.denoise_step = record  # type: ignore[method-assign]
    state, generators = model.new_state(B), [torch.Generator().manual_seed(i) for i in range(B)]
    last_calls, heads = [], []
    with torch.no_grad():
        warmup(model, state, inp["x_clean"][:, :C], 0.002, inp["actions"][:, :C], inp["has_action"][:, :C],
               generators, cfg)
        for t in range(C, C + steps):
            calls.clear()
            _, reward, term = sample_next_frame(model, state, inp["actions"][:, t], inp["has_action"][:, t],
                                                generators, cfg)
            last_calls.append([c for c in calls if c[0] is state][-1])
            heads.append((reward, term))
    model.denoise_step = denoise_step  # type: ignore[method-assign]
    frames = torch.cat([inp["x_clean"][:, :C]] + [x[:, None] for _, x, _ in last_calls], 1)
    sigmas = torch.cat([torch.full((B, C), 0.002, dtype=torch.float64)]
                       + [s[:, None].double() for _, _, s in last_calls], 1)
    reference = model.new_state(B)
    with torch.no_grad():
        out = model.warmup(reference, frames, sigmas, inp["actions"][:, : C + steps],
                           inp["has_action"][:, : C + steps])
        for i, (reward, term) in enumerate(heads):
            torch.testing.assert_close(reward, out.reward[:, C + i], atol=ATOL, rtol=0)
            torch.testing.assert_close(term, out.termination_logit[:, C + i], atol=ATOL, rtol=0)
        probe = [model.denoise_step(st, inp["x_noisy"][:, -1], inp["sigma"][:, -1], inp["actions"][:, -1],
                                    inp["has_action"][:, -1]) for st in (state, reference)]
    torch.testing.assert_close(probe[0], probe[1], atol=ATOL, rtol=0)
    assert float(last_calls[0][2][0]) == pytest.approx(cfg.sigma_min)  # K >= 2: the last call is at sigma_min


@pytest.mark.parametrize("action,input_k", [("discrete", 1), ("box", 1), ("discrete", 3)])
def test_incremental_generation_equals_recompute(action: str, input_k: int) -> None:
    """(4) Frames added one at a time through denoise_step + commit (the cache update from the last denoiser
    call) leave the caches and heads exactly as a from-scratch warm-up over the whole window."""
    model = make_model(action, input_temporal_kernel=input_k)
    inp = make_inputs(model, T=7)
    T = 7
    with torch.no_grad():
        ref = train_forward(model, inp)
        state = model.new_state(2)
        for t in range(T):
            # the last denoiser call of a frame is made at its context noise level: its activations are the
            # clean stream's for that frame
            d = model.denoise_step(state, inp["x_clean"][:, t], inp["sigma_ctx"][:, t], inp["actions"][:, t],
                                   inp["has_action"][:, t])
            reward, term = model.commit(state)
            torch.testing.assert_close(reward, ref.reward[:, t], atol=ATOL, rtol=0)
            torch.testing.assert_close(term, ref.termination_logit[:, t], atol=ATOL, rtol=0)
        assert d.shape == inp["x_clean"][:, 0].shape
        fresh = model.new_state(2)
        model.warmup(fresh, inp["x_clean"], inp["sigma_ctx"], inp["actions"], inp["has_action"])
        x, s = inp["x_noisy"][:, 0], inp["sigma"][:, 0]
        a, h = inp["actions"][:, 0], inp["has_action"][:, 0]
        torch.testing.assert_close(model.denoise_step(state, x, s, a, h), model.denoise_step(fresh, x, s, a, h),
                                   atol=ATOL, rtol=0)


def test_window_eviction_matches_sliding_window_training() -> None:
    """(5) With a window of W frames, cached generation past the window equals the training forward with
    attention restricted to the last W frames (each query t sees clean frames t-W .. t-1 and itself)."""
    W, T = 3, 9
    model = make_model(context_window=W)
    inp = make_inputs(model, T=T)
    with torch.no_grad():
        ref = train_forward(model, inp, window=W)
        full = train_forward(model, inp)
        state = model.new_state(2)
        for t in range(T):
            d = model.denoise_step(state, inp["x_noisy"][:, t], inp["sigma"][:, t], inp["actions"][:, t],
                                   inp["has_action"][:, t])
            torch.testing.assert_close(d, ref.denoised[:, t], atol=ATOL, rtol=0)
            state.pending.clear()
            model.denoise_step(state, inp["x_clean"][:, t], inp["sigma_ctx"][:, t], inp["actions"][:, t],
                               inp["has_action"][:, t])
            model.commit(state)
        # warm-up longer than the window keeps only the last W frames too
        state = model.new_state(2)
        model.warmup(state, inp["x_clean"][:, : T - 1], inp["sigma_ctx"][:, : T - 1], inp["actions"][:, : T - 1],
                     inp["has_action"][:, : T - 1])
        d = model.denoise_step(state, inp["x_noisy"][:, T - 1], inp["sigma"][:, T - 1], inp["actions"][:, T - 1],
                               inp["has_action"][:, T - 1])
    torch.testing.assert_close(d, ref.denoised[:, T - 1], atol=ATOL, rtol=0)
    assert (full.denoised[:, -1] - ref.denoised[:, -1]).abs().max() > 1e-4  # the window does matter
    assert torch.equal(state.slot_pos.sort(dim=1).values, torch.tensor([[5, 6, 7]] * 2))


def test_batch_independence_and_row_reset() -> None:
    """(6) Row i of a batch == the same sample alone, in training and inference; resetting one row leaves
    the others untouched and makes the reset row behave like a fresh state."""
    model = make_model()
    inp = make_inputs(model, B=3)
    with torch.no_grad():
        batch = train_forward(model, inp)
        alone = train_forward(model, rows(inp, slice(1, 2)))
        torch.testing.assert_close(batch.denoised[1:2], alone.denoised, atol=ATOL, rtol=0)

        state = model.new_state(3)
        model.warmup(state, inp["x_clean"][:, :4], inp["sigma_ctx"][:, :4], inp["actions"][:, :4],
                     inp["has_action"][:, :4])
        before = model.denoise_step(state, inp["x_noisy"][:, 4], inp["sigma"][:, 4], inp["actions"][:, 4],
                                    inp["has_action"][:, 4])
        state.pending.clear()
        # reset row 0 and warm it up on 2 other frames, the way the vector env resets one sub-env
        state.reset_rows(torch.tensor([0]))
        sub = model.new_state(1)
        model.warmup(sub, inp["x_clean"][:1, 2:4], inp["sigma_ctx"][:1, 2:4], inp["actions"][:1, 2:4],
                     inp["has_action"][:1, 2:4])
        state.load_rows(torch.tensor([0]), sub)
        after = model.denoise_step(state, inp["x_noisy"][:, 4], inp["sigma"][:, 4], inp["actions"][:, 4],
                                   inp["has_action"][:, 4])
        fresh = model.new_state(1)
        model.warmup(fresh, inp["x_clean"][:1, 2:4], inp["sigma_ctx"][:1, 2:4], inp["actions"][:1, 2:4],
                     inp["has_action"][:1, 2:4])
        expect0 = model.denoise_step(fresh, inp["x_noisy"][:1, 4], inp["sigma"][:1, 4], inp["actions"][:1, 4],
                                     inp["has_action"][:1, 4])
    torch.testing.assert_close(after[1:], before[1:], atol=ATOL, rtol=0)
    torch.testing.assert_close(after[:1], expect0, atol=ATOL, rtol=0)


def test_grown_input_temporal_kernel_computes_what_the_model_did() -> None:
    """A model grown from input_temporal_kernel 1 to 3 (new taps zero) gives the old outputs, up to the epsilon of
    the weight normalisation (1e-4, relative to the weight's RMS, now taken over 3x the elements); once the new
    taps move, its outputs depend on the pixels of the frames before."""
    old = make_model()
    grown = make_model(input_temporal_kernel=3)
    grown.load_state_dict(grow_input_temporal_kernel(old.state_dict(), 1, 3))
    w = grown.conv_in.conv.weight  # (O, I, k, 3, 3), stored normalised, zero on the older frames
    assert torch.all(w[:, :, 1:] == 0)
    torch.testing.assert_close(w.square().mean(dim=(1, 2, 3, 4)), torch.ones(w.shape[0], dtype=w.dtype), atol=1e-3,
                               rtol=0)  # unit RMS per output channel, up to normalize's eps
    inp = make_inputs(old)
    with torch.no_grad():
        ref, out = train_forward(old, inp), train_forward(grown, inp)
        torch.testing.assert_close(out.denoised, ref.denoised, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.reward, ref.reward, atol=1e-4, rtol=0)
        w[:, :, 1:] = torch.randn_like(w[:, :, 1:])
        moved = train_forward(grown, inp)
    assert (moved.denoised - ref.denoised).abs().max() > 1e-2
    with pytest.raises(ValueError, match="shrink"):
        grow_input_temporal_kernel(grown.state_dict(), 3, 2)


@pytest.mark.parametrize("input_k", [1, 3])
def test_training_forward_compiles_to_one_graph(input_k: int) -> None:
    """torch.compile (``train --compile``) sees the whole training forward as one graph: no graph breaks, which
    would split it into pieces that cannot be fused (a Python scalar as torch.add's input once broke it at every
    weight normalisation). Tracing only, so it is fast."""
    import torch._dynamo

    model = make_model(input_temporal_kernel=input_k).float()
    inp = {k: v.float() if v.is_floating_point() else v for k, v in make_inputs(model).items()}
    torch._dynamo.reset()
    explained = torch._dynamo.explain(train_forward)(model, inp)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_dart_frame_mask() -> None:
    """The frame-level mask written out by hand for T=3, all frames noisy."""
    m = dart_frame_mask(3, torch.arange(3), None).int()
    expected = torch.tensor([
        # c0 c1 c2 n0 n1 n2
        [1, 0, 0, 0, 0, 0],  # clean 0
        [1, 1, 0, 0, 0, 0],  # clean 1
        [1, 1, 1, 0, 0, 0],  # clean 2
        [0, 0, 0, 1, 0, 0],  # noisy 0: no context, itself
        [1, 0, 0, 0, 1, 0],  # noisy 1
        [1, 1, 0, 0, 0, 1],  # noisy 2
    ])
    assert torch.equal(m, expected)


@pytest.mark.parametrize("T,noisy,window", [(5, None, None), (6, [1, 2, 4, 5], None), (7, None, 3)])
def test_dense_dart_attention_split_equals_one_masked_sdpa(T: int, noisy, window) -> None:
    """The dense-mask training attention, run as a clean half and a noisy half (the clean frames see no noisy
    frame), == one SDPA call over the full token mask: outputs and gradients of q, k, v."""
    noisy_index = torch.arange(T) if noisy is None else torch.tensor(noisy)
    frame_mask = dart_frame_mask(T, noisy_index, window)
    assert not frame_mask[:T, T:].any()  # what the split relies on
    tokens, F_ = 4, T + len(noisy_index)
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, F_ * tokens, 8, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    cot = torch.randn(2, 3, F_ * tokens, 8, generator=g, dtype=torch.float64)
    token_mask = frame_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)
    results = []
    for attention in (lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=token_mask),
                      lambda: _dense_dart_attention(q, k, v, frame_mask, T, tokens)):
        y = attention()
        results.append((y, *torch.autograd.grad((y * cot).sum(), (q, k, v))))
    for ref, split in zip(*results, strict=True):
        torch.testing.assert_close(split, ref, atol=1e-12, rtol=0)


def test_training_forward_uses_the_split_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's dense-mask training pass goes through the two-call attention and computes what one masked SDPA
    call computes: outputs and parameter gradients (a first version defined the split but never called it)."""
    import diffusion_world.model.dart as dart

    model = make_model()
    inp = make_inputs(model)
    split, calls = dart._dense_dart_attention, []

    def one_call(q, k, v, frame_mask, num_clean, tokens):
        mask = frame_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    results = []
    for attention in (lambda *a: calls.append(1) or split(*a), one_call):
        monkeypatch.setattr(dart, "_dense_dart_attention", attention)
        model.zero_grad()
        out = train_forward(model, inp)
        (out.denoised.sum() + out.reward.sum()).backward()
        results.append((out.denoised, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert calls  # the training pass called the split
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    assert len(results[0][1]) == len(results[1][1]) > 0
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_magnitude_preservation() -> None:
    """(7) Unit-variance inputs stay unit variance through the MP primitives."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 64, generator=g)
    b = torch.randn(4096, 64, generator=g)
    for y in (mp_sum(a, b, 0.3), mp_cat(a, b[:, :16], dim=1, t=0.3), normalize(a * 5.0, dim=1)):
        assert abs(y.std().item() - 1) < 0.03
    assert abs(mp_silu(a).pow(2).mean().sqrt().item() - 1) < 0.05  # unit second moment
    conv = MPConv(64, 32, (3, 3))
    x = torch.randn(64, 64, 16, 16, generator=g)
    with torch.no_grad():
        assert abs(conv(x).std().item() - 1) < 0.05
        lin = MPConv(64, 128)
        assert abs(lin(a).std().item() - 1) < 0.05


def test_presets_build() -> None:
    for name in ("tiny", "small"):
        cfg = preset_config(name)
        assert dataclasses.asdict(cfg)["frame_size"] == cfg.frame_size
        DartWorldModel(cfg)


def test_inference_weight_memo_follows_every_weight_update() -> None:
    """(8) Without autograd the normalised weight is memoised; every in-place update of the weight or its gain
    (optimiser step, load_state_dict, EMA lerp_, forced normalisation) must show in the next call."""
    torch.manual_seed(0)
    conv = MPConv(8, 4, (3, 3))
    gain = torch.nn.Parameter(torch.tensor(0.7))
    x = torch.randn(2, 8, 5, 5)

    def fresh() -> torch.Tensor:  # the reference: normalise now, NCHW, no memo
        return torch.nn.functional.conv2d(x, conv.normalized_weight(gain).detach(), padding=1)

    def memoised() -> torch.Tensor:
        with torch.no_grad():
            return conv(x, gain=gain)

    first = memoised()
    torch.testing.assert_close(first, fresh())
    assert memoised().data_ptr() != first.data_ptr() and torch.equal(memoised(), first)  # served from the memo
    opt = torch.optim.SGD([conv.weight, gain], lr=0.5)
    (conv(x, gain=gain) ** 2).mean().backward()  # with autograd: no memo, gradients reach weight and gain
    assert conv.weight.grad is not None and gain.grad is not None
    opt.step()
    updates = [lambda: None,  # the optimiser step just taken
               lambda: conv.load_state_dict({"weight": torch.randn(4, 8, 3, 3)}),
               lambda: conv.weight.lerp_(torch.randn(4, 8, 3, 3), 0.3),
               lambda: gain.mul_(2.0)]
    previous = first
    for update in updates:
        with torch.no_grad():
            update()
        now = memoised()
        torch.testing.assert_close(now, fresh())
        assert not torch.allclose(now, previous)
        previous = now
    with torch.no_grad():
        for p in (conv.weight, gain):
            p.requires_grad_(False)
        assert torch.equal(conv(x, gain=gain), memoised())  # frozen params, grad mode on: memo too


def test_channels_last_cpu_convolutions_equal_nchw() -> None:
    """(9) CPU convolutions and decoder concatenations run channels-last (fast path); their values equal the
    NCHW reference up to fp32 rounding, and the concatenation is exact."""
    from diffusion_world.model.mp import conv2d

    g = torch.Generator().manual_seed(0)
    for B, C, O, k in ((1, 16, 32, 3), (3, 32, 16, 3), (2, 16, 48, 1)):
        x, w = torch.randn(B, C, 9, 9, generator=g), torch.randn(O, C, k, k, generator=g)
        y = conv2d(x, w)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=k // 2), atol=1e-4, rtol=1e-5)
    a = torch.randn(1, 8, 4, 4, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(1, 6, 4, 4, generator=g)
    with torch.no_grad():
        fast = mp_cat(a, b, dim=1, t=0.3)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast, mp_cat(a.contiguous(), b, dim=1, t=0.3))  # grad mode: plain torch.cat


def test_fp32_inference_fast_path_equals_recomputed_weights() -> None:
    """(10) An fp32 model's cached generation under no_grad (memoised weights, cached attention masks) equals
    the same calls with every weight normalised afresh (autograd on: no memo), bit for bit."""
    model = make_model().float()
    inp = {k: (v.float() if v.is_floating_point() else v) for k, v in make_inputs(model, B=2, T=4).items()}

    def generate(no_grad: bool) -> list[torch.Tensor]:
        state = model.new_state(2)
        with torch.set_grad_enabled(not no_grad):
            model.warmup(state, inp["x_clean"][:, :2], 0.01, inp["actions"][:, :2], inp["has_action"][:, :2])
            outs = []
            for t in range(2, 4):
                for s in (2.0, 0.5):  # two denoiser calls against the same caches, then the commit
                    outs.append(model.denoise_step(state, inp["x_noisy"][:, t], torch.full((2,), s),
                                                   inp["actions"][:, t], inp["has_action"][:, t]).detach())
                outs.extend(o.detach() for o in model.commit(state))
        return outs

    for a, b in zip(generate(no_grad=True), generate(no_grad=False)):
        assert torch.equal(a, b)


def test_box_action_bounds_that_would_erase_or_break_the_action() -> None:
    """Bounds of float32's max (some envs' "unbounded") scaled actions to ~1e-39: the model could not see them;
    a fixed dimension (low == high) gave NaN features and a NaN denoiser output."""
    big = float(np.finfo(np.float32).max)
    cfg = preset_config("tiny", action_space={"type": "box", "shape": [3], "low": [-big, 0.5, -2.0],
                                              "high": [big, 0.5, 2.0]})
    model = DartWorldModel(cfg)
    has = torch.ones(1, 2, dtype=torch.bool)
    features = model.encode_actions(torch.tensor([[[1.0, 0.5, 2.0], [-1.0, 0.5, -1.0]]]), has)
    assert torch.isfinite(features).all()
    np.testing.assert_allclose(features[0, :, :3].numpy(), [[1.0, 0.0, 1.0], [-1.0, 0.0, -0.5]])


def test_a_batch_of_one_keeps_the_channels_last_layout() -> None:
    """flatten(0, 1) of a (1, 1, C, H, W) NHWC tensor kept stride C on its batch dim: pooling and upsampling then
    gave NCHW results, copied back to NHWC before every convolution (11% of a single env's step on CPU)."""
    import torch.nn.functional as F

    from diffusion_world.model.mp import channels_last_strides

    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last).unsqueeze(0).flatten(0, 1)
    y = channels_last_strides(x)
    assert torch.equal(x, y) and y.data_ptr() == x.data_ptr()  # same values, no copy
    assert y.stride() == (128, 1, 32, 8)
    assert F.avg_pool2d(y, 2).is_contiguous(memory_format=torch.channels_last)
    z = torch.randn(2, 8, 4, 4)  # anything else is left as it is
    assert channels_last_strides(z) is z
