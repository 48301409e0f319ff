"""A termination classifier on single frames, separate from the diffusion model.

The DART model's own termination head reads the pooled bottleneck of the clean stream, where a thin object's
exact pose (CartPole's pole passing 12°) is barely represented: the decoder gets fine detail through the skip
connections instead. Like DIAMOND's separate reward/termination model, this small CNN looks at the frame itself.
It is trained on real frames (``diffusion_world.training.termination``) and applied to every imagined frame; a
checkpoint that has one uses it in place of the head (:meth:`WorldModel.termination_probability`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffusion_world.errors import UserError


@dataclass
class TerminationClassifierConfig:
    frame_size: tuple[int, int] = (64, 64)
    image_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 64)  # one stride-2 conv per entry, until the map is 4x4 or smaller

    def __post_init__(self) -> None:
        self.frame_size = (int(self.frame_size[0]), int(self.frame_size[1]))
        self.channels = tuple(int(c) for c in self.channels)
        if min(self.frame_size) < 4 or not self.channels or min(self.channels) < 1:
            raise UserError(f"bad termination classifier config: {self}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_size"], d["channels"] = list(self.frame_size), list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TerminationClassifierConfig:
        return cls(**d)


class TerminationClassifier(nn.Module):
    """Frames (..., C, H, W) in [-1, 1] -> termination logits (...). Strided 4x4 convolutions with SiLU halve
    the map until it is at most 4x4 (at most ``len(channels)`` of them), then one linear layer."""

    def __init__(self, cfg: TerminationClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in, (h, w) = cfg.image_channels, cfg.frame_size
        for c in cfg.channels:
            if max(h, w) <= 4:
                break
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in, h, w = c, h // 2, w // 2  # k=4, s=2, p=1 halves (rounding down)
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c_in * h * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        if tuple(x.shape[-3:]) != (self.cfg.image_channels, *self.cfg.frame_size):
            raise UserError(f"termination classifier expects frames of shape "
                            f"{(self.cfg.image_channels, *self.cfg.frame_size)}, got {tuple(x.shape[-3:])}")
        h = self.features(x.reshape(-1, *x.shape[-3:]).to(self.out.weight.dtype))
        return self.out(h.flatten(1))[:, 0].reshape(lead)
