"""Magnitude-preserving primitives, implemented from EDM2.

Reference: Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models", arXiv 2312.02696
(EDM2). Every function keeps unit-variance inputs at unit variance (checked statistically in the tests), so
activations neither grow nor shrink through the network and no normalisation layers are needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Scale ``x`` to unit RMS over ``dim`` (all but dim 0 when None). EDM2 App. B.2, `normalize`."""
    if dim is None:
        dim = tuple(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    numel = np.prod([x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim)])
    norm = torch.add(eps, norm, alpha=math.sqrt(1.0 / numel))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its output std for unit-normal input (0.596). EDM2 Sec. 3.2 (Eq. 81 in App. B)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving weighted sum ``lerp(a, b, t) / sqrt((1-t)^2 + t^2)``. EDM2 Sec. 3.2, Eq. 88."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation with balance ``t`` between the parts. EDM2 Sec. 3.2, Eq. 92."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    wa = c / math.sqrt(na) * (1 - t)
    wb = c / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


class MPFourier(nn.Module):
    """Random Fourier features of a scalar (the noise level), unit variance. EDM2 App. B.2, `MPFourier`."""

    freqs: torch.Tensor
    phases: torch.Tensor

    def __init__(self, num_channels: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)  # fixed, not learned: part of the architecture
        self.register_buffer("freqs", 2 * np.pi * torch.randn(num_channels, generator=g) * bandwidth)
        self.register_buffer("phases", 2 * np.pi * torch.rand(num_channels, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, C)
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least, also under autocast
        y = x.to(dtype).ger(self.freqs.to(dtype)) + self.phases.to(dtype)
        return y.cos() * math.sqrt(2)


class MPConv(nn.Module):
    """Convolution (or linear layer when ``kernel == ()``) with weights normalised to unit norm per output
    channel and scaled by 1/sqrt(fan_in): unit-variance in => unit-variance out. EDM2 Sec. 2.3 & App. B.2.

    The forward pass normalises the weight (so gradients are taken through the normalisation); the training
    loop additionally calls :func:`normalize_weights_` after each optimiser step ("forced weight
    normalisation", EDM2 Sec. 2.3) so that the stored weights stay on the unit sphere.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def normalized_weight(self, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))  # fp32 even under autocast
        w = normalize(w)  # unit norm per output channel (EDM2 Eq. 66)
        return w * (gain / math.sqrt(w[0].numel()))  # 1/sqrt(fan_in): unit variance out (EDM2 Eq. 67)

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.normalized_weight(gain).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


@torch.no_grad()
def normalize_weights_(module: nn.Module) -> None:
    """Forced weight normalisation (EDM2 Sec. 2.3): project every MP weight back onto the unit sphere."""
    for m in module.modules():
        if isinstance(m, MPConv):
            m.weight.copy_(normalize(m.weight.to(torch.float32)).to(m.weight.dtype))
