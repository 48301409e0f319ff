"""The training objective against the formulas it implements: EDM preconditioning (Karras et al. 2022, Table 1),
the DART loss with EDM's lambda(sigma) and EDM2's learned uncertainty, the noise draws, the learning-rate
schedule. Tiny model, float64, CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_world.model.config import preset_config
from diffusion_world.model.dart import DartWorldModel
from diffusion_world.training.loss import LossConfig, NoiseDraw, dart_loss, draw_noise
from diffusion_world.training.train import TrainConfig, learning_rate

SIGMA_DATA = 0.5


def tiny_model() -> DartWorldModel:
    torch.manual_seed(0)
    model = DartWorldModel(preset_config("tiny")).double().eval()
    with torch.no_grad():  # zero-initialised gains would hide most of the network
        for p in model.parameters():
            if p.ndim == 0:
                p.fill_(0.5 + torch.rand(()).item())
    return model


def test_preconditioning_is_edm_table_1() -> None:
    """c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2): at s = sd they
    are 1/2, sd / sqrt(2) and 1 / (sd sqrt(2)); and lambda(s) c_out^2 = 1 (unit effective loss weight)."""
    model = tiny_model()
    sd = model.cfg.sigma_data
    assert sd == SIGMA_DATA
    c_skip, c_out, c_in = (c.reshape(-1) for c in model._precondition(torch.full((1, 1), sd, dtype=torch.float64)))
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(sd / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (sd * math.sqrt(2)))
    sigma = torch.logspace(-3, 2, 11, dtype=torch.float64)[None]
    c_skip, c_out, c_in = (c.reshape(-1) for c in model._precondition(sigma))
    s = sigma[0]
    lam = (s**2 + sd**2) / (s * sd) ** 2
    torch.testing.assert_close(lam * c_out**2, torch.ones_like(s))
    torch.testing.assert_close(c_in**2 * (s**2 + sd**2), torch.ones_like(s))
    torch.testing.assert_close(c_skip + c_out**2 / sd**2, torch.ones_like(s))


def test_dart_loss_is_the_specified_objective() -> None:
    """Recomputed from the model's outputs: mean over the noisy copies of lambda(s) |D - x0|^2 / e^u + u (EDM2
    Eq. 21), plus the symlog reward regression on frames that have a previous transition and the class-weighted
    termination cross-entropy, both weighted per frame by the sampler's importance weights."""
    model = tiny_model()
    B, T = 3, 5
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(B, T, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    actions = torch.randint(0, 2, (B, T), generator=g)
    has_action = torch.ones(B, T, dtype=torch.bool)
    has_action[:, 0] = False
    rewards = torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 1
    terminations = torch.rand(B, T, generator=g) < 0.3
    weights = torch.rand(B, T, generator=g, dtype=torch.float64) + 0.5
    cfg = LossConfig(termination_pos_weight=4.0)
    draw = draw_noise(B, T, (3, 16, 16), cfg, torch.Generator().manual_seed(2))
    draw = NoiseDraw(*(t.double() for t in (draw.sigma, draw.sigma_ctx, draw.noise, draw.noise_ctx)))
    with torch.no_grad():
        loss = dart_loss(model, x0, actions, has_action, rewards, terminations, draw, cfg, SIGMA_DATA,
                         termination_weights=weights)
        out = model(x0 + draw.sigma[..., None, None, None] * draw.noise, draw.sigma,
                    x0 + draw.sigma_ctx[..., None, None, None] * draw.noise_ctx, draw.sigma_ctx, actions, has_action)
    s = draw.sigma
    lam = (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2
    per_frame = lam * (out.denoised - x0).square().mean(dim=(2, 3, 4))
    diffusion = (per_frame / out.logvar.exp() + out.logvar).mean()
    symlog_r = torch.sign(rewards) * torch.log1p(rewards.abs())
    reward = ((out.reward - symlog_r).square() * has_action * weights).mean()
    termination = (F.binary_cross_entropy_with_logits(out.termination_logit, terminations.double(),
                                                      pos_weight=torch.tensor(4.0, dtype=torch.float64),
                                                      reduction="none") * weights).mean()
    assert loss.total.item() == pytest.approx((diffusion + reward + termination).item(), rel=1e-6)
    assert loss.reward.item() == pytest.approx(reward.item(), rel=1e-6)
    assert loss.termination.item() == pytest.approx(termination.item(), rel=1e-6)
    assert loss.diffusion.item() == pytest.approx(per_frame.mean().item(), rel=1e-6)  # the logged mean error


def test_noise_draws_follow_the_config() -> None:
    """ln(sigma) ~ N(P_mean, P_std) per frame; the clean stream's sigma_ctx is one log-uniform draw per window in
    [sigma_ctx_min, sigma_ctx_max]."""
    cfg = LossConfig(p_mean=-0.4, p_std=1.2, sigma_ctx_min=0.002, sigma_ctx_max=0.5)
    d = draw_noise(5000, 8, (1, 1, 1), cfg, torch.Generator().manual_seed(0))
    ln = d.sigma.log()
    assert ln.mean().item() == pytest.approx(-0.4, abs=0.02) and ln.std().item() == pytest.approx(1.2, abs=0.02)
    assert (d.sigma_ctx == d.sigma_ctx[:, :1]).all()
    ctx = d.sigma_ctx[:, 0].log()
    assert ctx.min().item() >= math.log(0.002) and ctx.max().item() <= math.log(0.5)
    # log-uniform: its mean is the middle of the log range, its std the range / sqrt(12)
    assert ctx.mean().item() == pytest.approx((math.log(0.002) + math.log(0.5)) / 2, abs=0.05)
    assert ctx.std().item() == pytest.approx((math.log(0.5) - math.log(0.002)) / math.sqrt(12), rel=0.03)


def test_learning_rate_warms_up_then_decays_as_inverse_square_root() -> None:
    """Linear warm-up over ``warmup_steps``, then EDM2's lr / sqrt(max(step / lr_decay_steps, 1))."""
    cfg = TrainConfig(dataset_id="tt/x-v0", lr=0.002, warmup_steps=200, lr_decay_steps=2000)
    assert learning_rate(cfg, 0) == pytest.approx(0.002 / 200)
    assert learning_rate(cfg, 99) == pytest.approx(0.001)
    assert learning_rate(cfg, 199) == learning_rate(cfg, 1999) == pytest.approx(0.002)
    assert learning_rate(cfg, 8000) == pytest.approx(0.001)
    assert learning_rate(cfg, 32000) == pytest.approx(0.0005)
