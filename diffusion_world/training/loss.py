"""The DART training loss: EDM-weighted denoising on every noisy frame, normalised by EDM2's learned
uncertainty, plus the reward and termination heads on the clean stream."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion_world.diffusion.sampler import symlog
from diffusion_world.model.dart import AttnBackend


@dataclass
class LossConfig:
    p_mean: float = -0.4  # log-normal sigma per noisy frame (EDM Sec. 5; DIAMOND's location)
    p_std: float = 1.2
    sigma_ctx_min: float = 0.002  # context noise of the clean stream, log-uniform per sequence; must cover
    sigma_ctx_max: float = 0.1  # the sampler's sigma_min (the last denoiser call feeds the caches)
    reward_weight: float = 1.0
    termination_weight: float = 1.0
    termination_pos_weight: float | None = None  # None: (1 - rate) / rate of the data (class imbalance)
    supervision: str = "dart"  # "dart": all T frames; "last_frame": only the last (the ablation)


@dataclass
class LossOutput:
    total: torch.Tensor
    diffusion: torch.Tensor  # mean EDM-weighted error (before the uncertainty normalisation)
    reward: torch.Tensor
    termination: torch.Tensor
    num_supervised: int


@dataclass
class NoiseDraw:
    """The randomness of one training step, drawn for the whole global batch and sliced per DDP rank and
    micro-batch, so that the split never changes what is computed."""

    sigma: torch.Tensor  # (B, N) noise level of each noisy frame
    sigma_ctx: torch.Tensor  # (B, T) context noise of the clean stream (one level per sequence)
    noise: torch.Tensor  # (B, N, C, H, W)
    noise_ctx: torch.Tensor  # (B, T, C, H, W)

    def __getitem__(self, rows: slice) -> NoiseDraw:
        return NoiseDraw(self.sigma[rows], self.sigma_ctx[rows], self.noise[rows], self.noise_ctx[rows])


def noisy_index(T: int, supervision: str) -> torch.Tensor:
    """Which frames of a window get a noisy copy: all of them (DART) or only the last (the ablation)."""
    if supervision == "dart":
        return torch.arange(T)
    if supervision == "last_frame":
        return torch.tensor([T - 1])
    raise ValueError(f"unknown supervision {supervision!r}: 'dart' or 'last_frame'")


def draw_noise(batch_size: int, seq_len: int, frame_shape: tuple[int, ...], cfg: LossConfig,
               generator: torch.Generator) -> NoiseDraw:
    """The step's noise levels and noise, drawn on ``generator``'s device (training on a GPU, a CPU generator
    spent most of the step on the 50M normals of a 128-window batch of 64x64 frames)."""
    N = len(noisy_index(seq_len, cfg.supervision))
    B, T = batch_size, seq_len
    dev = generator.device
    sigma = (torch.randn(B, N, generator=generator, device=dev) * cfg.p_std + cfg.p_mean).exp()
    lo, hi = math.log(cfg.sigma_ctx_min), math.log(cfg.sigma_ctx_max)
    sigma_ctx = (torch.rand(B, 1, generator=generator, device=dev) * (hi - lo) + lo).exp().expand(B, T)
    return NoiseDraw(sigma, sigma_ctx, torch.randn(B, N, *frame_shape, generator=generator, device=dev),
                     torch.randn(B, T, *frame_shape, generator=generator, device=dev))


def dart_loss(model: torch.nn.Module, x0: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
              rewards: torch.Tensor, terminations: torch.Tensor, draw: NoiseDraw, cfg: LossConfig,
              sigma_data: float, attn_backend: AttnBackend = "sdpa", window: int | None = None,
              valid: torch.Tensor | None = None, termination_weights: torch.Tensor | None = None) -> LossOutput:
    """x0: (B, T, C, H, W) clean frames in [-1, 1]; actions / has_action / rewards / terminations: (B, T).
    ``model`` is a :class:`DartWorldModel` (or its DDP / compiled wrapper). Every term is a mean over
    samples, so the loss of a batch split in equal parts is the mean of the parts' losses (DDP-exact).
    ``window``: the model's context window, so that training sees no more frames than inference will.
    ``valid`` (B, T) bool: False for the padding after an episode's end (see ``WindowSampler(pad_ends=True)``);
    those frames count as zero in every term, so each real frame weighs 1 / (B * T) whatever the padding,
    and a window with k real frames contributes k / T of what the same k frames alone would.
    ``termination_weights`` (B, T): each frame's weight in the termination and reward terms (the sampler's
    importance weights where it oversamples windows that contain a termination), so that both heads learn the
    data's expectations, not the oversampled windows'; the diffusion term keeps the oversampled windows as drawn
    (more examples of what happens at an episode's end)."""
    B, T = x0.shape[:2]
    dev = x0.device
    idx = noisy_index(T, cfg.supervision).to(dev)
    sigma, sigma_ctx = draw.sigma.to(dev), draw.sigma_ctx.to(dev)
    target = x0[:, idx]
    x_noisy = target + sigma[..., None, None, None] * draw.noise.to(dev)
    x_clean = x0 + sigma_ctx[..., None, None, None] * draw.noise_ctx.to(dev)
    out = model(x_noisy, sigma, x_clean, sigma_ctx, actions, has_action, noisy_index=idx,
                window=window if window is not None and window < T else None, attn_backend=attn_backend)
    assert out.denoised is not None and out.logvar is not None
    sd = sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2  # EDM lambda(sigma): unit effective loss weight
    per_frame = weight * (out.denoised.float() - target.float()).square().mean(dim=(2, 3, 4))  # (B, N)
    logvar = out.logvar.float()  # EDM2 Eq. 21: L / exp(u) + u, where u(sigma) learns log E[L | sigma]
    real = torch.ones(B, T, device=dev) if valid is None else valid.to(dev).float()
    real_noisy = real[:, idx]
    diffusion = ((per_frame / logvar.exp() + logvar) * real_noisy).mean()

    term_real = real if termination_weights is None else real * termination_weights.to(dev).float()
    has_reward = has_action.float() * term_real  # an episode's first frame has no previous transition and no reward
    reward_loss = ((out.reward.float() - symlog(rewards.float())).square() * has_reward).mean()
    pos_weight = torch.tensor(cfg.termination_pos_weight or 1.0, device=dev)
    term_loss = (F.binary_cross_entropy_with_logits(out.termination_logit.float(), terminations.float(),
                                                    pos_weight=pos_weight, reduction="none") * term_real).mean()
    total = diffusion + cfg.reward_weight * reward_loss + cfg.termination_weight * term_loss
    num_supervised = int(real_noisy.sum().item())
    mean_error = (per_frame * real_noisy).sum() / max(num_supervised, 1)
    return LossOutput(total, mean_error.detach(), reward_loss.detach(), term_loss.detach(), num_supervised)
