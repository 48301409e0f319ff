"""Magnitude-preserving primitives, implemented from EDM2.

Reference: Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models", arXiv 2312.02696
(EDM2). Every function keeps unit-variance inputs at unit variance (checked statistically in the tests), so
activations neither grow nor shrink through the network and no normalisation layers are needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Scale ``x`` to unit RMS over ``dim`` (all but dim 0 when None). EDM2 App. B.2, `normalize`."""
    if dim is None:
        dim = tuple(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    numel = math.prod([x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim)])
    # eps + norm / sqrt(numel), written with the tensor first: torch.add(eps, norm, ...) with a Python scalar as
    # its input is a graph break under torch.compile (a data-dependent scalar), once per call
    norm = norm * math.sqrt(1.0 / numel) + eps
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
    parts = [wa * a, wb * b]
    if a.ndim == 4 and dim == 1 and a.is_cpu and not torch.is_grad_enabled():
        # keep the channels-last layout of conv2d's activations (torch.cat does not always infer it: size-1
        # batch dims leave strides it does not recognise). Inference only: ``out=`` does not take gradients.
        out = torch.empty((a.shape[0], na + nb, *a.shape[2:]), dtype=torch.promote_types(a.dtype, b.dtype),
                          device=a.device, memory_format=torch.channels_last)
        return torch.cat(parts, dim=1, out=out)
    return torch.cat(parts, dim=dim)


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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul or convolution of ``x`` runs in: autocast's where it is on, else ``x``'s."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def channels_last_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) in channels-last layout with the strides PyTorch expects of it. A batch of one made by
    ``flatten(0, 1)`` of a (1, 1, C, H, W) NHWC tensor keeps stride C on its size-1 batch dim: its bytes are NHWC,
    but pooling, upsampling and elementwise ops then give NCHW results, each copied back to NHWC before the next
    convolution (8% of a single imagined env's step on CPU). Same values, no copy."""
    if x.dim() == 4 and x.shape[0] == 1 and x.device.type == "cpu" and \
            x.is_contiguous(memory_format=torch.channels_last):
        C, H, W = x.shape[1:]
        if x.stride() != (C * H * W, 1, W * C, C):
            return x.as_strided(x.shape, (C * H * W, 1, W * C, C))
    return x


def conv2d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Same-padded 2-D convolution. On CPU in channels-last layout: oneDNN's convolutions run several times
    faster on NHWC than on NCHW there (``benchmarks/results/speed.json``), and elementwise ops keep the layout,
    so after the first conversion activations stay NHWC. Values are those of NCHW up to float rounding."""
    if x.device.type == "cpu":
        x = channels_last_strides(x.contiguous(memory_format=torch.channels_last))
        w = w.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, w, padding=w.shape[-1] // 2)


class MPConv(nn.Module):
    """Convolution (or linear layer when ``kernel == ()``) with weights normalised to unit norm per output
    channel and scaled by 1/sqrt(fan_in): unit-variance in => unit-variance out. EDM2 Sec. 2.3 & App. B.2.

    The forward pass normalises the weight (so gradients are taken through the normalisation); the training
    loop additionally calls :func:`normalize_weights_` after each optimiser step ("forced weight
    normalisation", EDM2 Sec. 2.3) so that the stored weights stay on the unit sphere.

    Without autograd through the weight (inference), the weight actually used is memoised (:meth:`weight_for`)
    until the weight or gain changes, so a frozen model normalises each weight once, not once per call.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self._memo: dict[str, tuple[tuple, torch.Tensor]] = {}

    def normalized_weight(self, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))  # fp32 even under autocast
        w = normalize(w)  # unit norm per output channel (EDM2 Eq. 66)
        return w * (gain / math.sqrt(w[0].numel()))  # 1/sqrt(fan_in): unit variance out (EDM2 Eq. 67)

    def weight_for(self, dtype: torch.dtype, gain: float | torch.Tensor = 1.0, tag: str = "",
                   derive: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``derive(normalized_weight(gain).to(dtype))`` (identity ``derive`` by default). Memoised under
        ``tag`` while no gradient flows to the weight or gain; the memo is keyed on their version counters
        (bumped by every in-place update: optimiser steps, ``load_state_dict``, EMA), storage, device and dtype,
        so it never serves a stale weight."""
        gain_grad = isinstance(gain, torch.Tensor) and gain.requires_grad
        if (torch.is_grad_enabled() and (self.weight.requires_grad or gain_grad)) or torch.compiler.is_compiling():
            w = self.normalized_weight(gain).to(dtype)
            return derive(w) if derive is not None else w
        p = self.weight
        gain_key = (gain._version, gain.data_ptr(), gain.device) if isinstance(gain, torch.Tensor) else float(gain)
        key = (p._version, p.data_ptr(), p.device, p.dtype, dtype, gain_key)
        hit = self._memo.get(tag)
        if hit is None or hit[0] != key:
            w = self.normalized_weight(gain).to(dtype)
            w = (derive(w) if derive is not None else w).detach()
            if w.ndim == 4 and w.device.type == "cpu":  # the layout conv2d wants there, converted once
                w = w.contiguous(memory_format=torch.channels_last)
            hit = self._memo[tag] = (key, w)
        return hit[1]

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight_for(compute_dtype(x), gain)
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return conv2d(x, w)


@torch.no_grad()
def normalize_weights_(module: nn.Module) -> None:
    """Forced weight normalisation (EDM2 Sec. 2.3): project every MP weight back onto the unit sphere."""
    for m in module.modules():
        if isinstance(m, MPConv):
            m.weight.copy_(normalize(m.weight.to(torch.float32)).to(m.weight.dtype))
