"""The CUDA paths against their CPU / dense references: FlexAttention vs dense SDPA (forward and gradients),
cached inference vs the training forward, CUDA vs CPU, a bf16 training step, torch.compile vs eager.

Skipped without a CUDA device (``pytest -m gpu`` runs them; ``scripts/gpu_train.sh`` does first)."""

from __future__ import annotations

import pytest
import torch
from test_equivalence import make_inputs, train_forward
from test_equivalence import make_model as _make_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = 2e-4  # fp32 on CUDA (TF32 off): kernels differ from the CPU's in summation order only
# FlexAttention's CUDA kernels need heads of >= 16 channels: the tiny preset's are 8
WIDE = dict(channels=(16, 32), attention_head_dim=16)


def make_model():  # noqa: F811
    return _make_model(**WIDE)


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _cuda(model, inp):
    return model.float().cuda(), {k: (v.float() if v.is_floating_point() else v).cuda() for k, v in inp.items()}


def _loss_and_grads(model, inp, **kw):
    model.zero_grad(set_to_none=True)
    out = train_forward(model, inp, **kw)
    loss = out.denoised.square().mean() + out.reward.square().mean() + out.termination_logit.square().mean()
    loss.backward()
    return out, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_flex_equals_sdpa_forward_and_backward_on_cuda() -> None:
    model, inp = _cuda(make_model(), make_inputs(make_model(), T=6))
    dense, g_dense = _loss_and_grads(model, inp, attn_backend="sdpa")
    flex, g_flex = _loss_and_grads(model, inp, attn_backend="flex")
    torch.testing.assert_close(flex.denoised, dense.denoised, atol=TOL, rtol=0)
    torch.testing.assert_close(flex.reward, dense.reward, atol=TOL, rtol=0)
    assert g_flex.keys() == g_dense.keys()
    for name in g_dense:
        torch.testing.assert_close(g_flex[name], g_dense[name], atol=TOL, rtol=1e-3, msg=name)


def test_cuda_equals_cpu() -> None:
    model = make_model()
    inp = make_inputs(model)
    with torch.no_grad():
        ref = train_forward(model.float(), {k: (v.float() if v.is_floating_point() else v) for k, v in inp.items()})
        model_c, inp_c = _cuda(model, inp)
        out = train_forward(model_c, inp_c, attn_backend="flex")
    torch.testing.assert_close(out.denoised.cpu(), ref.denoised, atol=TOL, rtol=0)
    torch.testing.assert_close(out.termination_logit.cpu(), ref.termination_logit, atol=TOL, rtol=0)


def test_cached_inference_equals_training_forward_on_cuda() -> None:
    model, inp = _cuda(make_model(), make_inputs(make_model(), T=5))
    T = inp["x_clean"].shape[1]
    with torch.no_grad():
        ref = train_forward(model, inp, attn_backend="flex")
        state = model.new_state(2, torch.device("cuda"))
        model.warmup(state, inp["x_clean"][:, :T - 1], inp["sigma_ctx"][:, :T - 1], inp["actions"][:, :T - 1],
                     inp["has_action"][:, :T - 1])
        d = model.denoise_step(state, inp["x_noisy"][:, T - 1], inp["sigma"][:, T - 1], inp["actions"][:, T - 1],
                               inp["has_action"][:, T - 1])
    torch.testing.assert_close(d, ref.denoised[:, T - 1], atol=TOL, rtol=0)


def test_bf16_training_step_close_to_fp32() -> None:
    model, inp = _cuda(make_model(), make_inputs(make_model(), T=6))
    ref, _ = _loss_and_grads(model, inp, attn_backend="flex")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grads = _loss_and_grads(model, inp, attn_backend="flex")
    assert all(torch.isfinite(g).all() for g in grads.values())
    err = (out.denoised.float() - ref.denoised).abs().mean() / ref.denoised.abs().mean()
    assert err < 0.05, f"bf16 forward differs from fp32 by {err:.3f} (relative mean)"


def test_compiled_equals_eager() -> None:
    model, inp = _cuda(make_model(), make_inputs(make_model(), T=6))
    with torch.no_grad():
        eager = train_forward(model, inp, attn_backend="flex")
        compiled = torch.compile(model)
        out = compiled(inp["x_noisy"], inp["sigma"], inp["x_clean"], inp["sigma_ctx"], inp["actions"],
                       inp["has_action"], attn_backend="flex")
    torch.testing.assert_close(out.denoised, eager.denoised, atol=TOL, rtol=0)
