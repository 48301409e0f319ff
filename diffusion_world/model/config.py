"""Model configuration and the named presets (``tiny``, ``small``, ``base``)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from diffusion_world.errors import UserError


def _kind(default: Any) -> tuple[str, Any]:
    """What a config field whose default is ``default`` takes: (its name, a check of one value)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int | np.integer) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)

    if isinstance(default, bool):
        return "true or false", lambda v: isinstance(v, bool | np.bool_)
    if isinstance(default, int):
        return "an integer", is_int
    if isinstance(default, float):
        return "a number", is_number
    if isinstance(default, str):
        return "a string", lambda v: isinstance(v, str)
    if isinstance(default, dict):
        return "a table", lambda v: isinstance(v, dict)
    if isinstance(default, tuple):
        item = "integers" if all(is_int(x) for x in default) else "numbers"
        check = is_int if item == "integers" else is_number
        return f"a list of {item}", lambda v: isinstance(v, list | tuple) and all(check(x) for x in v)
    return "", lambda v: True  # None defaults: the field's own validation says more


def check_field_types(config: Any, where: str) -> None:
    """A clear :class:`UserError` naming the first field of the dataclass ``config`` whose value is not of its
    default's kind (e.g. ``steps = "2"`` in a card), before anything compares or iterates it."""
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kind, ok = _kind(default)
        value = getattr(config, f.name)
        if kind and not ok(value):
            raise UserError(f"{where} {f.name} must be {kind}, got {value!r}")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the DART denoiser. Saved as JSON inside every checkpoint.

    Resolutions are frame sizes in pixels of each U-Net level (level 0 is the full frame).
    """

    frame_size: tuple[int, int] = (64, 64)
    image_channels: int = 3
    # {"type": "discrete", "n": N} or {"type": "box", "shape": [D], "low": [...], "high": [...]}
    action_space: dict[str, Any] = field(default_factory=lambda: {"type": "discrete", "n": 2})
    channels: tuple[int, ...] = (16, 32, 64, 128)  # per level, each level halves the resolution
    # encoder blocks per level (temporal: causal convs, video attention); the per-frame decoder has one more
    # per level, each taking an encoder skip (EDM2's pairing)
    enc_blocks: tuple[int, ...] = (1, 1, 1, 2)
    frame_attention: tuple[int, ...] = (16,)  # resolutions with per-frame self-attention
    video_attention: tuple[int, ...] = (8,)  # resolutions whose encoder blocks use DART video attention
    attention_head_dim: int = 32
    emb_channels: int = 128
    temporal_kernel: int = 3  # k of the causal 3D convolutions
    # k of the input convolution over frames: 1 = each frame alone (frames first meet at the next level, after
    # a 2x downsampling); k > 1 makes it a causal conv over the raw pixels of the last k frames, where motion of
    # a thin object by a fraction of a pixel is still visible
    input_temporal_kernel: int = 1
    context_window: int = 32  # W: frames kept in the KV cache (and attention's reach in training windows longer than W)
    sigma_data: float = 0.5
    head_channels: int = 128  # reward / termination heads
    rope_base: float = 10_000.0
    res_balance: float = 0.3
    attn_balance: float = 0.3
    concat_balance: float = 0.5
    emb_balance: float = 0.5

    def __post_init__(self) -> None:
        check_field_types(self, "model config")
        self.frame_size = tuple(self.frame_size)  # type: ignore[assignment]
        for name in ("channels", "enc_blocks", "frame_attention", "video_attention"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def warn_if_no_video_attention(self) -> None:
        """Warn where no U-Net level reaches ``video_attention``: frames then meet only through the causal
        convolutions. Said when a model is trained, not each time one is loaded."""
        if self.video_attention and not set(self.video_attention) & set(self.resolutions):
            warnings.warn(f"no video attention at {self.frame_size[0]}x{self.frame_size[1]} frames: the U-Net's levels "
                          f"are at {self.resolutions} and video_attention at {list(self.video_attention)}, so frames "
                          "meet only through the causal convolutions (a memory of a few frames); use frames or a "
                          "preset whose levels reach it", stacklevel=3)

    def validate(self) -> None:
        h, w = self.frame_size
        levels = len(self.channels)
        if len(self.enc_blocks) != levels:
            raise UserError("channels and enc_blocks must have one entry per level")
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise UserError(f"frame size {h}x{w} is not divisible by 2^{levels - 1} for {levels} U-Net levels")
        if any(c % self.attention_head_dim for c, r in zip(self.channels, self.resolutions)
               if r in self.frame_attention or r in self.video_attention):
            raise UserError("attention channels must be a multiple of attention_head_dim")
        if self.temporal_kernel < 1 or self.input_temporal_kernel < 1 or self.context_window < 1:
            raise UserError("temporal_kernel, input_temporal_kernel and context_window must be >= 1")
        kind = self.action_space.get("type")
        if kind not in ("discrete", "box"):
            raise UserError(f"unsupported action space {self.action_space!r}: need Discrete or Box")

    @property
    def resolutions(self) -> list[int]:
        return [self.frame_size[0] >> i for i in range(len(self.channels))]

    @property
    def action_features(self) -> int:
        """Width of the encoded action (one-hot with a "no action" slot, or the Box vector plus a flag)."""
        if self.action_space["type"] == "discrete":
            return int(self.action_space["n"]) + 1
        return int(np.prod(self.action_space["shape"])) + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


def action_space_to_dict(space: gym.spaces.Space) -> dict[str, Any]:
    """JSON description of a Gymnasium action space (Discrete or Box)."""
    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise UserError("Discrete action spaces with a non-zero start are not supported")
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        def finite(a: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in a.reshape(-1)]
        return {"type": "box", "shape": list(space.shape), "low": finite(space.low), "high": finite(space.high)}
    raise UserError(f"unsupported action space {space}: need Discrete or Box")


def action_space_from_dict(d: dict[str, Any]) -> gym.spaces.Space:
    if d["type"] == "discrete":
        return gym.spaces.Discrete(int(d["n"]))
    low = np.array([-np.inf if v is None else v for v in d["low"]], dtype=np.float32).reshape(d["shape"])
    high = np.array([np.inf if v is None else v for v in d["high"]], dtype=np.float32).reshape(d["shape"])
    return gym.spaces.Box(low, high, dtype=np.float32)


PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: 16x16 frames, two levels, video attention at 8x8; ~130k parameters.
    "tiny": dict(frame_size=(16, 16), channels=(12, 24), enc_blocks=(1, 1),
                 frame_attention=(), video_attention=(8,), attention_head_dim=8, emb_channels=32,
                 head_channels=32, context_window=16),
    # CPU, 64x64 (~4M parameters, ~1 GFLOP per denoiser call): narrow 64x64 and 32x32 levels without
    # encoder blocks, the capacity at 16x16 and 8x8 (video attention); no per-frame attention at 16x16.
    "small": dict(frame_size=(64, 64), channels=(16, 32, 64, 128), enc_blocks=(0, 0, 1, 1),
                  frame_attention=(), video_attention=(8,), attention_head_dim=32,
                  emb_channels=128, head_channels=128, context_window=32),
    # GPU, 64x64, larger than DIAMOND's denoiser (~21M parameters, ~6 GFLOP per denoiser call).
    "base": dict(frame_size=(64, 64), channels=(32, 64, 128, 256), enc_blocks=(1, 1, 1, 2),
                 frame_attention=(16,), video_attention=(8,), attention_head_dim=64,
                 emb_channels=256, head_channels=256, context_window=32),
}


def suggested_frame_size(shape: tuple[int, ...], channels: tuple[int, ...] = PRESETS["small"]["channels"]) -> int:
    """The ``--frame-size`` to resize frames of ``shape`` (H, W, ...) to for a U-Net with these ``channels`` levels,
    which halves the frame once per level after the first: the larger side rounded up to that multiple, at most
    64 (the presets' frame size)."""
    step = 2 ** (len(channels) - 1)
    return min(64, -(-max(shape[:2]) // step) * step)


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with ``overrides`` (e.g. ``frame_size``, ``action_space``) applied."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if set(overrides) - known:
        raise UserError(f"unknown model config key(s) {', '.join(sorted(set(overrides) - known))} "
                        f"(allowed: preset, {', '.join(sorted(known))})")
    return ModelConfig(**{**PRESETS[name], **overrides})
