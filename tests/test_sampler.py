"""The sampler's ODE solvers against the exact solution: for Gaussian data N(mu, s^2) per pixel the ideal
denoiser is D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the probability-flow ODE of EDM carries
x(sigma_max) to x(0) = mu + (x(sigma_max) - mu) s / sqrt(s^2 + sigma_max^2). Euler and Heun must converge to it,
Heun faster; churn must add noise only where it is asked for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from diffusion_world.diffusion.sampler import SamplerConfig, edm_sigmas, sample_next_frame

MU, S = 0.3, 0.5  # the data's mean and std, the same for every pixel
FRAME = (3, 8, 8)


class GaussianDenoiser(nn.Module):
    """Stands in for DartWorldModel in sample_next_frame: the exact denoiser of N(MU, S^2) data."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # the sampler reads the model's dtype off a parameter
        self.cfg = SimpleNamespace(frame_size=FRAME[1:], image_channels=FRAME[0])
        self.sigmas_called: list[float] = []

    def denoise_step(self, state, x, sigma, action, has_action) -> torch.Tensor:
        s2 = (sigma.to(torch.float64) ** 2)[:, None, None, None]
        self.sigmas_called.append(float(sigma[0]))
        return (MU + S**2 / (S**2 + s2) * (x.to(torch.float64) - MU)).to(x.dtype)

    def commit(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(state.batch_size), torch.zeros(state.batch_size)


def solve(cfg: SamplerConfig, seeds=(0, 1)) -> tuple[torch.Tensor, torch.Tensor, GaussianDenoiser]:
    """The sampler's frame and the exact ODE solution from the same initial noise."""
    model = GaussianDenoiser()
    state = SimpleNamespace(batch_size=len(seeds), device=torch.device("cpu"), guide=None)
    x, _, _ = sample_next_frame(model, state, torch.zeros(len(seeds), dtype=torch.long),
                                torch.ones(len(seeds), dtype=torch.bool),
                                [torch.Generator().manual_seed(s) for s in seeds], cfg)
    x0 = torch.stack([torch.randn(*FRAME, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x0 = x0.to(torch.float64) * cfg.sigma_max  # what the sampler started from
    exact = MU + (x0 - MU) * S / (S**2 + cfg.sigma_max**2) ** 0.5
    return x.to(torch.float64), exact, model


def error(cfg: SamplerConfig) -> float:
    x, exact, _ = solve(cfg)
    return float((x - exact).abs().max())


def test_euler_and_heun_converge_to_the_exact_ode_solution() -> None:
    euler = [error(SamplerConfig(num_steps=k)) for k in (10, 20, 40)]
    heun = [error(SamplerConfig(num_steps=k, order=2)) for k in (10, 20, 40)]
    for e in (euler, heun):
        assert e[0] > e[1] > e[2]
    # first order: doubling the steps halves the error; second order: it quarters it
    assert 0.4 < euler[2] / euler[1] < 0.6 and 0.4 < euler[1] / euler[0] < 0.6
    assert heun[2] / heun[1] < 0.3 and heun[1] / heun[0] < 0.3
    assert heun[2] < 0.01 < euler[2]


def test_heun_needs_small_steps() -> None:
    # with the few, large steps imagination uses, Heun's correction overshoots even with an exact denoiser
    # (SamplerConfig.order's note): it is the worse solver at K = 3 and the better one from K = 10
    assert error(SamplerConfig(num_steps=3, order=2)) > error(SamplerConfig(num_steps=3))
    assert error(SamplerConfig(num_steps=10, order=2)) < error(SamplerConfig(num_steps=10))


def test_denoiser_calls_per_solver() -> None:
    for k, order, calls in ((3, 1, 3), (3, 2, 5), (10, 2, 19), (1, 1, 1)):
        _, _, model = solve(SamplerConfig(num_steps=k, order=order))
        assert len(model.sigmas_called) == calls, (k, order)
        # the last call, whose activations the caches keep, runs at sigma_min (K = 1: sigma_max)
        sig = edm_sigmas(SamplerConfig(num_steps=k))
        assert model.sigmas_called[-1] == pytest.approx(float(sig[-2]))


def test_churn_is_noise_on_top_of_the_same_solver() -> None:
    deterministic = solve(SamplerConfig(num_steps=10))[0]
    assert torch.equal(deterministic, solve(SamplerConfig(num_steps=10))[0])
    churned = solve(SamplerConfig(num_steps=10, s_churn=2.0))[0]
    # churn perturbs the frame (a fresh draw from each row's generator) but keeps it a sample of the data
    assert (churned - deterministic).abs().max() > 1e-3
    assert abs(float(churned.mean()) - MU) < 0.15
