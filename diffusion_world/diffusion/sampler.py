"""EDM sampling of the next frame against the model's inference caches (Karras et al. 2022, Alg. 1 & 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_world.errors import UserError
from diffusion_world.model.dart import DartWorldModel, InferenceState, ModelOutput
from diffusion_world.precision import inference_autocast


@dataclass
class SamplerConfig:
    """EDM sigma schedule and solver. DIAMOND uses 3 Euler steps; so do we by default. ``num_steps=1`` is cheap
    but commits its sigma_max call to the caches (see :func:`sample_next_frame`): long rollouts degrade."""

    num_steps: int = 3
    sigma_min: float = 0.002  # the last denoiser call runs here: keep it inside training's sigma_ctx range
    sigma_max: float = 5.0
    rho: float = 7.0
    # 1: Euler, 2: Heun (2nd-order correction on all but the last step). Heun pays off only with many small
    # steps (K >= 10 or so): at the few large steps of imagination its correction overshoots, even with an exact
    # denoiser (tests/test_sampler.py): keep Euler for imagination.
    order: int = 1
    s_churn: float = 0.0  # stochastic churn (EDM Alg. 2); 0 = deterministic given the initial noise
    # History guidance (Song et al. 2025, arXiv 2502.06764, its "fractional" form: classifier-free guidance with a
    # partly noised past in place of no condition; DART's clean stream is trained on such pasts): every denoiser
    # call above sigma_min also runs against a second set of caches holding the same context at noise level
    # history_sigma (inside training's sigma_ctx range), and the prediction is pushed away from that one:
    # D = D_u + w (D - D_u). w = 1 is off; w > 1 costs about twice the denoiser calls.
    history_guidance: float = 1.0
    history_sigma: float = 0.1

    @property
    def guided(self) -> bool:
        return self.history_guidance != 1.0

    def validate(self) -> None:
        if self.num_steps < 1:
            raise UserError(f"sampler num_steps must be >= 1, got {self.num_steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise UserError("sampler needs 0 < sigma_min < sigma_max")
        if self.order not in (1, 2):
            raise UserError("sampler order must be 1 (Euler) or 2 (Heun)")
        w = self.history_guidance
        if isinstance(w, bool) or not isinstance(w, int | float | np.floating) or not 0 <= w < float("inf"):
            raise UserError(f"history_guidance must be a number >= 0 (1 = off), got {self.history_guidance!r}")
        if not 0 < self.history_sigma < float("inf"):
            raise UserError(f"history_sigma must be > 0, got {self.history_sigma!r}")


def edm_sigmas(cfg: SamplerConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """EDM Eq. 5 noise levels, sigma_max -> sigma_min over num_steps points, then a final 0. Shape (K+1,)."""
    if cfg.num_steps == 1:
        s = torch.tensor([cfg.sigma_max], dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, cfg.num_steps, dtype=torch.float64)
        lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
        s = (hi + ramp * (lo - hi)) ** cfg.rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(device=device, dtype=torch.float32)


def frames_to_x(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    t = torch.as_tensor(frames)
    return t.movedim(-1, -3).to(torch.float32) / 127.5 - 1


def x_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) -> uint8 (..., H, W, 3): clamped and rounded, as the env returns frames."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


def _row_noise(shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    # one generator per row: row i's noise does not depend on the other rows (batched == single env)
    return torch.stack([torch.randn(*shape, generator=g) for g in generators]).to(device)


@torch.no_grad()
def warmup(model: DartWorldModel, state: InferenceState, x_clean: torch.Tensor, sigma_ctx: float | torch.Tensor,
           actions: torch.Tensor, has_action: torch.Tensor, generators: Sequence[torch.Generator],
           cfg: SamplerConfig) -> ModelOutput:
    """:meth:`DartWorldModel.warmup` on real clean frames (B, F, C, H, W); with history guidance also the state's
    guide, on the same frames noised to ``cfg.history_sigma`` (each row's noise drawn from its generator)."""
    if cfg.guided and state.guide is None and bool((state.pos != 0).any()):
        raise RuntimeError("history guidance needs a guide from the state's first warm-up")
    out = model.warmup(state, x_clean, sigma_ctx, actions, has_action)
    if cfg.guided:
        if state.guide is None:
            state.guide = model.new_state(state.batch_size, state.device)
        noise = _row_noise(x_clean.shape[1:], generators, x_clean.device).to(x_clean.dtype)
        model.warmup(state.guide, x_clean + cfg.history_sigma * noise, cfg.history_sigma, actions, has_action)
    return out


@torch.no_grad()
def sample_next_frame(model: DartWorldModel, state: InferenceState, action: torch.Tensor, has_action: torch.Tensor,
                      generators: Sequence[torch.Generator], cfg: SamplerConfig,
                      sigmas: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Denoise the next frame of every row with K calls against the read-only caches, then commit the last
    call into the caches. Returns (x (B, C, H, W), reward (B,) in symlog space, termination_logit (B,)).

    ``generators`` (CPU ``torch.Generator``s, one per row) make the result deterministic per row.
    """
    dev = state.device
    sig = edm_sigmas(cfg, dev) if sigmas is None else sigmas
    H, W = model.cfg.frame_size
    shape = (model.cfg.image_channels, H, W)
    B = state.batch_size
    guide = state.guide if cfg.guided else None
    if cfg.guided and guide is None:
        raise RuntimeError("history guidance: warm the state up with diffusion.sampler.warmup (it has no guide)")

    def denoise(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        d = model.denoise_step(state, x, s.expand(B), action, has_action)
        if guide is not None and s > cfg.sigma_min:  # the final call at sigma_min barely changes the frame
            d_u = model.denoise_step(guide, x, s.expand(B), action, has_action)
            d = d_u + cfg.history_guidance * (d - d_u)
        return d

    x = _row_noise(shape, generators, dev) * sig[0]
    dtype = next(model.parameters()).dtype
    x = x.to(dtype)
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        if cfg.s_churn > 0 and s_next > 0:  # EDM Alg. 2: raise the noise a little before the step
            gamma = min(cfg.s_churn / cfg.num_steps, 2**0.5 - 1)
            s_hat = s * (1 + gamma)
            x = x + (s_hat**2 - s**2).sqrt() * _row_noise(shape, generators, dev).to(dtype)
            s = s_hat
        denoised = denoise(x, s)
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if cfg.order == 2 and s_next > 0:  # Heun; the final step (to sigma=0) stays Euler
            denoised2 = denoise(x_next, s_next)
            x_next = x + (s_next - s) * 0.5 * (d + (x_next - denoised2) / s_next)
        x = x_next
    # the last call provides the cache entries: for K >= 2 it ran at sigma_min on the nearly finished frame (final
    # Euler step, never churned); for K = 1 it ran at sigma_max on pure noise, so the context the next frames see
    # holds noise, not this frame (K = 2 draws the same frame with proper entries)
    reward, term = model.commit(state)
    if guide is not None:  # the guide's context gets the new frame too, at its own noise level
        x_u = x + cfg.history_sigma * _row_noise(shape, generators, dev).to(dtype)
        model.denoise_step(guide, x_u, sig.new_full((B,), cfg.history_sigma), action, has_action)
        model.commit(guide)
    return x, reward, term


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


@torch.no_grad()
def imagine(model: DartWorldModel, context_frames: torch.Tensor, context_actions: torch.Tensor,
            context_has_action: torch.Tensor, actions: torch.Tensor, generators: Sequence[torch.Generator],
            cfg: SamplerConfig, sigma_ctx: float | None = None, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """Warm up on real context frames (B, c, H, W, 3) uint8, then generate one frame per action (B, S[, D]).
    ``precision``: the model's calls in fp32 or bf16 autocast, as the imagined envs' ``precision``.

    Returns ``frames`` (B, S, H, W, 3) uint8, ``rewards`` (B, S) and ``termination_logits`` (B, S).
    Example: replaying a held-out episode's actions from its first frames (fidelity benchmark, dashboard).
    """
    dev = next(model.parameters()).device
    with inference_autocast(precision, dev):
        B, S = actions.shape[:2]
        state = model.new_state(B, dev)
        warmup(model, state, frames_to_x(context_frames).to(dev), cfg.sigma_min if sigma_ctx is None else sigma_ctx,
               context_actions.to(dev), context_has_action.to(dev), generators, cfg)
        sig = edm_sigmas(cfg, dev)
        has = torch.ones(B, dtype=torch.bool, device=dev)
        frames, rewards, terms = [], [], []
        for s in range(S):
            x, r, t = sample_next_frame(model, state, actions[:, s].to(dev), has, generators, cfg, sig)
            frames.append(x_to_frames(x).cpu())
            rewards.append(symexp(r.float()).cpu())  # fp32 also under bf16 autocast
            terms.append(t.float().cpu())
    return {"frames": torch.stack(frames, 1), "rewards": torch.stack(rewards, 1),
            "termination_logits": torch.stack(terms, 1)}
