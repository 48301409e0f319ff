"""The DART world model: an action-conditioned causal video-diffusion U-Net with inference caches.

Training (one pass, every frame of the window supervised)::

    frames on the frame axis:  clean_0 .. clean_{T-1} | noisy_{i_0} .. noisy_{i_{N-1}}
    clean frame t  <- clean frames <= t
    noisy frame s  <- clean frames < s, and noisy frame s itself

Frames interact only in the *encoder*, through two layer types:

* ``CausalConv``: ``out_t = Conv_0(in_t) + sum_{j=1}^{k-1} Conv_j(clean_in_{t-j})``. The temporal sum is computed
  once on the clean stream and added to both halves. The encoder's blocks use it, and the input convolution
  too when ``input_temporal_kernel > 1`` (on the raw pixels of the last k frames).
* ``Attention(video=True)``: multi-head cosine attention over the tokens of the visible frames (DART mask),
  RoPE over the frame index. FlexAttention with a block mask on CUDA, SDPA with the same dense mask elsewhere.

The decoder, the bottleneck and the output layer act on each frame alone, so the clean stream stops at the end
of the encoder; the reward and termination heads read that point (clean frame t predicts r_{t-1} and whether
the episode terminated at t).

Inference keeps an :class:`InferenceState`: per causal conv the last k-1 clean inputs, per video attention a KV
ring buffer of W = ``context_window`` frames. A denoiser call for the next frame is the noisy stream of one
frame against those read-only caches; its computation at noise level sigma is exactly the clean stream's at
context noise sigma, so :meth:`DartWorldModel.commit` turns the last call's activations into cache entries and
head outputs without another pass.

Window semantics (tested): query frame t sees clean frames t-W .. t-1 (plus itself), in training when
``window`` is given and at inference always. Cached entries keep what they saw when they were computed.

References: EDM (Karras et al. 2022, arXiv 2206.00364) preconditioning; EDM2 (arXiv 2312.02696) architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from diffusion_world.model.config import ModelConfig
from diffusion_world.model.mp import (
    MPConv,
    MPFourier,
    channels_last_strides,
    compute_dtype,
    conv2d,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
)

AttnBackend = Literal["sdpa", "flex"]


# ----------------------------------------------------------------------------------------------------------
# Inference state


@dataclass
class InferenceState:
    """Caches of a batch of B independent rollouts. Rows are reset independently (:meth:`reset_rows`)."""

    batch_size: int
    window: int
    device: torch.device
    pos: torch.Tensor  # (B,) index of the next frame of each row
    slot_pos: torch.Tensor  # (B, W) frame index held in each KV slot, -1 when empty
    conv: dict[str, torch.Tensor] = field(default_factory=dict)  # (B, k-1, C, H, W) last clean inputs
    # (B, heads, W + 1, n, d): W ring slots (RoPE applied to keys), then the slot of the frame being denoised
    keys: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    temporal: dict[str, torch.Tensor] = field(default_factory=dict)  # this env step's causal-conv sums, masks
    pending: dict[str, torch.Tensor] = field(default_factory=dict)  # last denoiser call's cache entries
    # history guidance (diffusion.sampler): the same rollouts with their context held at a higher noise level
    guide: InferenceState | None = None

    @classmethod
    def empty(cls, batch_size: int, window: int, device: torch.device | str = "cpu") -> InferenceState:
        device = torch.device(device)
        return cls(batch_size, window, device, torch.zeros(batch_size, dtype=torch.long, device=device),
                   torch.full((batch_size, window), -1, dtype=torch.long, device=device))

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Forget everything of the rows given by index or boolean mask (the other rows are untouched)."""
        self.pos[rows] = 0
        self.slot_pos[rows] = -1
        for t in self.conv.values():
            t[rows] = 0
        self.temporal.clear()
        self.pending.clear()
        if self.guide is not None:
            self.guide.reset_rows(rows)

    def load_rows(self, rows: torch.Tensor, other: InferenceState) -> None:
        """Copy ``other`` (a state of len(rows) rows, e.g. freshly warmed up) into ``rows`` of this state, its
        guide (if any) into this state's guide."""
        if other.guide is not None:
            if self.guide is None:
                self.guide = InferenceState.empty(self.batch_size, self.window, self.device)
            self.guide.load_rows(rows, other.guide)
        elif self.guide is not None:
            self.guide.reset_rows(rows)
        self.pos[rows] = other.pos
        self.slot_pos[rows] = other.slot_pos
        for name, store in (("conv", self.conv), ("keys", self.keys), ("values", self.values)):
            src = getattr(other, name)
            for key, t in src.items():
                if key not in store:
                    store[key] = t.new_zeros((self.batch_size, *t.shape[1:]))
                store[key][rows] = t
        self.temporal.clear()
        self.pending.clear()


@dataclass
class _Pass:
    """How the frame axis of the current forward pass is laid out."""

    mode: Literal["train", "clean", "step"]
    positions: torch.Tensor  # (B, F) frame index of every frame on the frame axis
    num_clean: int = 0  # train: the first num_clean frames are the clean stream
    noisy_index: torch.Tensor | None = None  # train: (N,) clean index of each noisy frame
    state: InferenceState | None = None
    window: int | None = None
    attn_backend: AttnBackend = "sdpa"
    frame_mask: torch.Tensor | None = None  # train: (F, F) bool, which frames each frame sees


def dart_frame_mask(num_clean: int, noisy_index: torch.Tensor, window: int | None) -> torch.Tensor:
    """(F, F) bool frame-level DART mask, F = T + N: row = query frame, column = key frame."""
    T, device = num_clean, noisy_index.device
    t = torch.arange(T, device=device)
    q_pos = torch.cat([t, noisy_index])  # (F,)
    q_noisy = torch.cat([torch.zeros(T, dtype=torch.bool, device=device),
                         torch.ones(len(noisy_index), dtype=torch.bool, device=device)])
    k_pos, k_noisy = q_pos, q_noisy
    lo = q_pos[:, None] - (window if window is not None else T)
    # clean key j: visible to clean query t if j <= t, to noisy query s if j < s; both within the window.
    see_clean = ~k_noisy[None, :] & (k_pos[None, :] >= lo) & (
        (k_pos[None, :] <= q_pos[:, None]) & ~q_noisy[:, None] | (k_pos[None, :] < q_pos[:, None]) & q_noisy[:, None])
    see_self = torch.eye(len(q_pos), dtype=torch.bool, device=device) & q_noisy[:, None]
    return see_clean | see_self


def _rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding over the frame index. x: (B, h, F, n, d), positions: (B, F)."""
    d = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float64) * 2 / d)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (B, F, d/2), float64: positions grow
    cos = angles.cos().to(x.dtype)[:, None, :, None, :]  # (B, 1, F, 1, d/2)
    sin = angles.sin().to(x.dtype)[:, None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


_flex_attention_compiled = None


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_mask: torch.Tensor,
                    tokens: int) -> torch.Tensor:
    """FlexAttention with a block mask built from the frame-level DART mask (compiled on CUDA)."""
    global _flex_attention_compiled
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
        return frame_mask[q_idx // tokens, kv_idx // tokens]

    L = q.shape[-2]
    block_mask = create_block_mask(mask_mod, None, None, L, L, device=q.device.type)
    if q.device.type == "cuda":
        if _flex_attention_compiled is None:
            _flex_attention_compiled = torch.compile(flex_attention, dynamic=False)
        return _flex_attention_compiled(q, k, v, block_mask=block_mask)
    import warnings

    with warnings.catch_warnings():  # eager CPU flex is the unfused reference implementation; fine for tests
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block_mask)


def _token_mask(frame_mask: torch.Tensor, tokens: int) -> torch.Tensor:
    return frame_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)


def _dense_dart_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_mask: torch.Tensor,
                          num_clean: int, tokens: int) -> torch.Tensor:
    """SDPA with the dense token-level DART mask (the path FlexAttention is checked against, and the only one
    with a backward pass on CPU), in two calls: the clean frames see no noisy frame (:func:`dart_frame_mask`), so
    the clean queries attend to the clean keys only, which skips the masked quarter of the full (T+N)^2 mask."""
    c = num_clean * tokens
    clean = F.scaled_dot_product_attention(q[:, :, :c], k[:, :, :c], v[:, :, :c],
                                           attn_mask=_token_mask(frame_mask[:num_clean, :num_clean], tokens))
    noisy = F.scaled_dot_product_attention(q[:, :, c:], k, v, attn_mask=_token_mask(frame_mask[num_clean:], tokens))
    return torch.cat([clean, noisy], dim=2)


# ----------------------------------------------------------------------------------------------------------
# Layers. Activations are (B, F, C, H, W) at every layer boundary.


class CausalConv(nn.Module):
    """3x3 spatial, k-frame causal temporal convolution over the clean stream (magnitude preserving)."""

    def __init__(self, name: str, in_channels: int, out_channels: int, temporal_kernel: int) -> None:
        super().__init__()
        self.name, self.k = name, temporal_kernel
        # One MP weight over all taps: the k taps together are one fan-in, so the sum stays unit variance.
        self.conv = MPConv(in_channels, out_channels, (temporal_kernel, 3, 3))

    def _past_sum(self, w_past: torch.Tensor, past: torch.Tensor, num_new: int) -> torch.Tensor:
        """past: (B, k-1+num_new, C, H, W) clean inputs, oldest first. Returns the temporal sums of the frames
        that follow the first k-1 (B, num_new, C_out, H, W), as one conv over the stacked previous inputs.
        With num_new=1 and past = the cache, that is the next frame's sum (its own input is not read)."""
        B = past.shape[0]
        # concatenated on 4-D views: that keeps a channels-last layout (a 5-D concatenation would not)
        stacked = torch.cat([past[:, self.k - 1 - j: self.k - 1 - j + num_new].flatten(0, 1)
                             for j in range(1, self.k)], dim=1)
        return conv2d(stacked, w_past).unflatten(0, (B, num_new))

    def forward(self, x: torch.Tensor, p: _Pass) -> torch.Tensor:
        B, Fr = x.shape[:2]
        dtype = compute_dtype(x)
        # w: (out, in, k, 3, 3); tap 0 acts on the frame itself, taps j=1..k-1 (stacked along in-channels) on
        # the k-1 previous clean inputs
        y = conv2d(x.flatten(0, 1), self.conv.weight_for(dtype, tag="now", derive=lambda w: w[:, :, 0]))
        y = y.unflatten(0, (B, Fr))
        if self.k == 1:
            return y
        w_past = self.conv.weight_for(dtype, tag="past", derive=lambda w: torch.cat(
            [w[:, :, j] for j in range(1, self.k)], dim=1))
        pad_shape = (B, self.k - 1, *x.shape[2:])
        if p.mode == "train":
            T = p.num_clean
            past = torch.cat([x.new_zeros(pad_shape), x[:, :T]], dim=1)
            temporal = self._past_sum(w_past, past, T)  # computed once, used by both halves
            assert p.noisy_index is not None
            return y + torch.cat([temporal, temporal[:, p.noisy_index]], dim=1)
        state = p.state
        assert state is not None
        cache = state.conv.get(self.name)
        if cache is None:
            cache = state.conv[self.name] = x.new_zeros(pad_shape)
        if p.mode == "clean":
            past = torch.cat([cache, x], dim=1)
            state.conv[self.name] = past[:, -(self.k - 1):].clone()
            return y + self._past_sum(w_past, past, Fr)
        # step: the temporal sum depends only on the cache, so it is computed once per env step
        if self.name not in state.temporal:
            state.temporal[self.name] = self._past_sum(w_past, cache, 1)
        temporal = state.temporal[self.name]
        state.pending[self.name] = x
        return y + temporal

    def commit(self, state: InferenceState) -> None:
        if self.k > 1:
            state.conv[self.name] = torch.cat([state.conv[self.name][:, 1:], state.pending.pop(self.name)], dim=1)


class Attention(nn.Module):
    """Cosine multi-head self-attention (EDM2 App. B.2). ``video=False``: within each frame. ``video=True``:
    across frames with the DART mask, RoPE over the frame index and a KV cache at inference."""

    def __init__(self, name: str, channels: int, head_dim: int, video: bool, rope_base: float) -> None:
        super().__init__()
        self.name, self.video, self.rope_base = name, video, rope_base
        self.heads = channels // head_dim
        self.qkv = MPConv(channels, channels * 3, (1, 1))
        self.proj = MPConv(channels, channels, (1, 1))

    def forward(self, x: torch.Tensor, p: _Pass) -> torch.Tensor:
        B, Fr, C, H, W = x.shape
        qkv = self.qkv(x.flatten(0, 1))  # (B*F, 3C, H, W)
        qkv = rearrange(qkv, "(b f) (h d three) y x -> three b h f (y x) d", b=B, h=self.heads, three=3)
        if qkv.is_cpu:  # d is strided here; the per-head norm over a contiguous d is ~7x faster on CPU
            qkv = qkv.contiguous()
        q, k, v = normalize(qkv, dim=-1).unbind(0)  # (B, h, F, n, d), unit RMS per head (cosine attention)
        if not self.video:
            y = F.scaled_dot_product_attention(q, k, v)  # each frame's n tokens attend to themselves
        else:
            q, k = _rope(q, p.positions, self.rope_base), _rope(k, p.positions, self.rope_base)
            y = self._video(q, k, v, p)
        if y.is_cpu:  # straight into the channels-last layout the CPU convolutions use (mp.conv2d)
            y = rearrange(y, "b h f (y x) d -> (b f) y x (h d)", y=H).permute(0, 3, 1, 2)
        else:
            y = rearrange(y, "b h f (y x) d -> (b f) (h d) y x", y=H)
        return self.proj(y).unflatten(0, (B, Fr))

    def _video(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: _Pass) -> torch.Tensor:
        B, h, Fr, n, d = q.shape
        flat = lambda t: t.flatten(2, 3)  # noqa: E731  (B, h, F*n, d)
        if p.mode == "train":
            assert p.frame_mask is not None
            if p.attn_backend == "flex":
                y = _flex_attention(flat(q), flat(k), flat(v), p.frame_mask, n)
            else:
                y = _dense_dart_attention(flat(q), flat(k), flat(v), p.frame_mask, p.num_clean, n)
            return y.unflatten(2, (Fr, n))
        state = p.state
        assert state is not None
        Wn = state.window
        if self.name not in state.keys:  # W ring slots + 1 for the frame a step is denoising
            state.keys[self.name] = k.new_zeros((B, h, Wn + 1, n, d))
            state.values[self.name] = v.new_zeros((B, h, Wn + 1, n, d))
        ck, cv = state.keys[self.name], state.values[self.name]
        q_pos = p.positions  # (B, F)
        mask = state.temporal.get(f"mask{n}") if p.mode == "step" else None  # one per env step and token count
        if mask is None:
            # cached frame j visible to query t iff present and t-W <= j < t (j < t holds by construction)
            cache_ok = (state.slot_pos[:, None, :] >= 0) & (state.slot_pos[:, None, :] >= q_pos[:, :, None] - Wn)
            new_ok = (q_pos[:, None, :] <= q_pos[:, :, None]) & (q_pos[:, None, :] >= q_pos[:, :, None] - Wn)
            frame_ok = torch.cat([cache_ok, new_ok], dim=2)  # (B, F, W+F)
            # (B, 1, F*n, (W+F)*n); one query row broadcast over the tokens when F = 1
            mask = frame_ok.repeat_interleave(n, 2)
            mask = (mask if Fr == 1 else mask.repeat_interleave(n, 1))[:, None]
            if p.mode == "step":
                state.temporal[f"mask{n}"] = mask
        if p.mode == "step":  # the new frame goes into the spare slot: no copy of the whole cache per call
            ck[:, :, Wn], cv[:, :, Wn] = k[:, :, 0], v[:, :, 0]
            keys, values = flat(ck), flat(cv)
        else:
            keys = torch.cat([flat(ck[:, :, :Wn]), flat(k)], dim=2)
            values = torch.cat([flat(cv[:, :, :Wn]), flat(v)], dim=2)
        y = F.scaled_dot_product_attention(flat(q), keys, values, attn_mask=mask)
        if p.mode == "clean":  # committed at once; only the last W new frames can stay in the ring
            keep = min(Fr, Wn)
            rows = torch.arange(B, device=q.device)[:, None]
            slots = q_pos[:, Fr - keep:] % Wn  # (B, keep)
            ck[rows, :, slots] = k[:, :, Fr - keep:].transpose(1, 2)
            cv[rows, :, slots] = v[:, :, Fr - keep:].transpose(1, 2)
        else:
            state.pending[self.name + ".k"], state.pending[self.name + ".v"] = k[:, :, 0], v[:, :, 0]
        return y.unflatten(2, (Fr, n))

    def commit(self, state: InferenceState) -> None:
        rows = torch.arange(state.batch_size, device=state.device)
        slots = state.pos % state.window
        state.keys[self.name][rows, :, slots] = state.pending.pop(self.name + ".k")
        state.values[self.name][rows, :, slots] = state.pending.pop(self.name + ".v")


class Block(nn.Module):
    """EDM2 residual block (App. B.2, Fig. 21) on (B, F, C, H, W) activations, with optional causal conv and
    per-frame or video attention."""

    def __init__(self, name: str, cfg: ModelConfig, in_channels: int, out_channels: int, flavor: str,
                 resample: str = "keep", attention: str | None = None, temporal: bool = False,
                 uses_skip: bool = False) -> None:
        super().__init__()
        self.flavor, self.resample, self.uses_skip = flavor, resample, uses_skip
        self.conv_res0: nn.Module
        if temporal:
            self.conv_res0 = CausalConv(name + ".conv", out_channels if flavor == "enc" else in_channels,
                                        out_channels, cfg.temporal_kernel)
        else:
            self.conv_res0 = _FrameConv(out_channels if flavor == "enc" else in_channels, out_channels)
        self.emb_linear = MPConv(cfg.emb_channels, out_channels)
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn = None
        if attention is not None:
            self.attn = Attention(name + ".attn", out_channels, cfg.attention_head_dim, attention == "video",
                                  cfg.rope_base)
        self.res_balance, self.attn_balance = cfg.res_balance, cfg.attn_balance

    def forward(self, x: torch.Tensor, emb: torch.Tensor, p: _Pass) -> torch.Tensor:
        B, Fr = x.shape[:2]
        frames = lambda t: t.unflatten(0, (B, Fr))  # noqa: E731
        x = channels_last_strides(x.flatten(0, 1))
        if self.resample == "down":
            x = F.avg_pool2d(x, 2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm (EDM2 Sec. 2.3)
        y = self.conv_res0(frames(mp_silu(x)), p).flatten(0, 1)
        c = self.emb_linear(emb.flatten(0, 1), gain=self.emb_gain) + 1  # (B*F, C)
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, self.res_balance)
        if self.attn is not None:
            x = mp_sum(x, self.attn(frames(x), p).flatten(0, 1), self.attn_balance)
        return frames(x.clamp(-256, 256))  # EDM2's activation clipping, for fp16/bf16 safety


class _FrameConv(nn.Module):
    """A per-frame 3x3 MP convolution with the same call signature as :class:`CausalConv`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = MPConv(in_channels, out_channels, (3, 3))

    def forward(self, x: torch.Tensor, p: _Pass) -> torch.Tensor:
        return self.conv(x.flatten(0, 1)).unflatten(0, x.shape[:2])


# ----------------------------------------------------------------------------------------------------------
# The model


@dataclass
class ModelOutput:
    denoised: torch.Tensor | None  # (B, N, C, H, W) D(x; sigma) of the noisy frames (train/step)
    reward: torch.Tensor  # (B, F_clean) predicted symlog reward of the transition into each clean frame
    termination_logit: torch.Tensor  # (B, F_clean)
    logvar: torch.Tensor | None = None  # (B, N) EDM2 loss uncertainty u(sigma) of the noisy frames (train)


MAX_ACTION_HALF_RANGE = 1e6  # wider Box bounds mean "unbounded" (e.g. float32's max): not scaled by


def box_action_scaling(action_space: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Per dimension of a Box action space (as ``action_space_to_dict`` describes it): the centre and half range
    that map its bounds to [-1, 1]. A dimension without bounds, or with bounds so wide that scaling would erase
    the action (float32's max, which some envs use for "unbounded"), is taken as it is (0, 1); a fixed one
    (low == high) becomes 0 (it was 0 / 0 = NaN)."""
    mid, half = [], []
    for lo, hi in zip(action_space["low"], action_space["high"]):
        h = None if lo is None or hi is None else (hi - lo) / 2
        if h is None or not 0 < h <= MAX_ACTION_HALF_RANGE:
            mid.append(float(lo) if h == 0 else 0.0)
            half.append(1.0)
        else:
            mid.append((lo + hi) / 2)
            half.append(h)
    return mid, half


class DartWorldModel(nn.Module):
    action_mid: torch.Tensor  # Box actions: (low + high) / 2 and (high - low) / 2 where finite
    action_half: torch.Tensor

    """EDM-preconditioned DART denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` with heads.

    Example::

        cfg = preset_config("tiny", action_space={"type": "discrete", "n": 2})
        model = DartWorldModel(cfg)
        out = model(x_noisy, sigma, x_clean, sigma_ctx, actions, has_action)   # training mode
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E = cfg.emb_channels
        self.emb_fourier = MPFourier(E)
        self.emb_noise = MPConv(E, E)
        self.emb_action = MPConv(cfg.action_features, E)
        if cfg.action_space["type"] == "box":
            mid, half = box_action_scaling(cfg.action_space)
            self.register_buffer("action_mid", torch.tensor(mid), persistent=False)
            self.register_buffer("action_half", torch.tensor(half), persistent=False)
        self.logvar_fourier = MPFourier(E)  # EDM2 learned loss uncertainty u(sigma), used by the loss only
        self.logvar_linear = MPConv(E, 1)

        res, ch = cfg.resolutions, cfg.channels
        self.enc = nn.ModuleList()
        self.conv_in: MPConv | CausalConv = (  # +1: constant channel (EDM2)
            MPConv(cfg.image_channels + 1, ch[0], (3, 3)) if cfg.input_temporal_kernel == 1
            else CausalConv("conv_in", cfg.image_channels + 1, ch[0], cfg.input_temporal_kernel))
        cin = ch[0]
        for level, (r, c) in enumerate(zip(res, ch)):
            video = "video" if r in cfg.video_attention else ("frame" if r in cfg.frame_attention else None)
            if level > 0:
                self.enc.append(Block(f"enc{r}d", cfg, cin, c, "enc", "down", temporal=True))
            for i in range(cfg.enc_blocks[level]):
                self.enc.append(Block(f"enc{r}b{i}", cfg, c if (i or level) else cin, c, "enc",
                                      attention=video, temporal=True))
            cin = c
        self.head_in = MPConv(ch[-1], cfg.head_channels)
        self.head_out = nn.Linear(cfg.head_channels, 2)  # symlog reward, termination logit
        self.dec = nn.ModuleList()
        for level in reversed(range(len(ch))):
            r, c = res[level], ch[level]
            attn = "frame" if r in cfg.frame_attention or r in cfg.video_attention else None
            if level == len(ch) - 1:
                self.dec.append(Block(f"dec{r}in0", cfg, cin, c, "dec", attention=attn))
                self.dec.append(Block(f"dec{r}in1", cfg, c, c, "dec"))
            else:
                self.dec.append(Block(f"dec{r}up", cfg, cin, c, "dec", "up"))
            for i in range(cfg.enc_blocks[level] + 1):  # one per encoder skip of this level (EDM2)
                self.dec.append(Block(f"dec{r}b{i}", cfg, 2 * c, c, "dec", attention=attn, uses_skip=True))
            cin = c
        self.conv_out = MPConv(ch[0], cfg.image_channels, (3, 3))
        self.out_gain = nn.Parameter(torch.zeros([]))
        self._temporal = [m for m in self.modules() if isinstance(m, CausalConv) and m.k > 1] + [
            m for m in self.modules() if isinstance(m, Attention) and m.video]

    # ---- conditioning

    def encode_actions(self, actions: torch.Tensor, has_action: torch.Tensor) -> torch.Tensor:
        """(B, F[, D]) actions and (B, F) flags -> (B, F, A) unit-variance features."""
        if self.cfg.action_space["type"] == "discrete":
            n = int(self.cfg.action_space["n"])
            idx = torch.where(has_action, actions.long(), torch.full_like(actions.long(), n))
            return F.one_hot(idx, n + 1).to(self._fp) * math.sqrt(n + 1)
        a = (actions.to(self._fp).flatten(2) - self.action_mid) / self.action_half
        a = torch.where(has_action[..., None], a, torch.zeros_like(a))
        return torch.cat([a, has_action[..., None].to(self._fp) * 2 - 1], dim=-1)

    @property
    def _fp(self) -> torch.dtype:
        """Precision of conditioning, preconditioning and heads: fp32 (fp64 when the model is fp64)."""
        return torch.promote_types(self.emb_noise.weight.dtype, torch.float32)

    def embed(self, sigma: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor) -> torch.Tensor:
        """Per-frame embedding of (sigma, action that led to the frame): (B, F) -> (B, F, E)."""
        c_noise = sigma.to(self._fp).log() / 4  # EDM Table 1
        e_noise = self.emb_noise(self.emb_fourier(c_noise.flatten()).unflatten(0, c_noise.shape))
        e_action = self.emb_action(self.encode_actions(actions, has_action))
        return mp_silu(mp_sum(e_noise, e_action, self.cfg.emb_balance))

    def logvar(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM2 learned uncertainty u(sigma) of the loss, any shape."""
        c_noise = sigma.to(self._fp).log() / 4
        return self.logvar_linear(self.logvar_fourier(c_noise.flatten())).reshape(sigma.shape)

    def _precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """EDM (Karras et al. 2022) Table 1: c_skip, c_out, c_in for sigma of shape (B, F)."""
        sd = self.cfg.sigma_data
        s = sigma.to(self._fp)[..., None, None, None]
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + s**2).sqrt()
        return c_skip, c_out, c_in

    # ---- the network

    def _network(self, x_in: torch.Tensor, emb: torch.Tensor, p: _Pass, decode: slice | None
                 ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """x_in: (B, F, C, H, W) preconditioned input. Runs the encoder on all F frames and the decoder on
        ``decode`` frames. Returns (F output of the decoded frames, encoder output of all frames)."""
        B, Fr = x_in.shape[:2]
        x = torch.cat([x_in, torch.ones_like(x_in[:, :, :1])], dim=2)
        if isinstance(self.conv_in, CausalConv):
            x = self.conv_in(x, p)
        else:
            x = self.conv_in(x.flatten(0, 1)).unflatten(0, (B, Fr))
        skips = [x]
        for block in self.enc:
            x = block(x, emb, p)
            skips.append(x)
        features = x
        if decode is None:
            return None, features
        x, emb = x[:, decode], emb[:, decode]
        skips = [s[:, decode] for s in skips]
        for block in self.dec:
            if block.uses_skip:  # on 4-D views, which keeps a channels-last layout (see _past_sum)
                x = mp_cat(x.flatten(0, 1), skips.pop().flatten(0, 1), dim=1,
                           t=self.cfg.concat_balance).unflatten(0, x.shape[:2])
            x = block(x, emb, p)
        out = self.conv_out(mp_silu(x).flatten(0, 1), gain=self.out_gain)
        return out.unflatten(0, x.shape[:2]), features

    def _heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = mp_silu(self.head_in(features.to(self._fp).mean(dim=(-2, -1))))  # (B, F, head_channels)
        out = self.head_out(h)
        return out[..., 0], out[..., 1]

    def forward(self, x_noisy: torch.Tensor, sigma: torch.Tensor, x_clean: torch.Tensor,
                sigma_ctx: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
                noisy_index: torch.Tensor | None = None, window: int | None = None,
                attn_backend: AttnBackend = "sdpa") -> ModelOutput:
        """Training mode: the doubled sequence in one pass.

        x_clean: (B, T, C, H, W) context-noised clean frames; sigma_ctx: (B, T) their noise level (> 0).
        x_noisy: (B, N, C, H, W) noised copies of clean frames ``noisy_index`` (default: all T, i.e. N = T);
        sigma: (B, N). actions / has_action: (B, T[, D]) / (B, T), the action that led to each frame.
        ``window``: restrict attention to the last ``window`` frames (the inference cache semantics).
        """
        B, T = x_clean.shape[:2]
        if noisy_index is None:
            noisy_index = torch.arange(T, device=x_clean.device)
        pos = torch.cat([torch.arange(T, device=x_clean.device), noisy_index])[None].expand(B, -1)
        p = _Pass("train", pos, num_clean=T, noisy_index=noisy_index, window=window, attn_backend=attn_backend,
                  frame_mask=dart_frame_mask(T, noisy_index, window))
        sig = torch.cat([sigma_ctx, sigma], dim=1)
        x = torch.cat([x_clean, x_noisy], dim=1)
        emb = self.embed(sig, torch.cat([actions, actions[:, noisy_index]], 1),
                         torch.cat([has_action, has_action[:, noisy_index]], 1))
        c_skip, c_out, c_in = self._precondition(sig)
        out, features = self._network((c_in * x).to(x.dtype), emb, p, decode=slice(T, None))
        assert out is not None
        n = slice(T, None)
        denoised = c_skip[:, n] * x_noisy.to(self._fp) + c_out[:, n] * out.to(self._fp)
        reward, term = self._heads(features[:, :T])
        return ModelOutput(denoised.to(x_noisy.dtype), reward, term, self.logvar(sigma))

    # ---- inference

    def new_state(self, batch_size: int, device: torch.device | str | None = None) -> InferenceState:
        """Empty caches for ``batch_size`` independent rollouts."""
        device = torch.device(device if device is not None else next(self.parameters()).device)
        return InferenceState.empty(batch_size, self.cfg.context_window, device)

    def warmup(self, state: InferenceState, x_clean: torch.Tensor, sigma_ctx: float | torch.Tensor,
               actions: torch.Tensor, has_action: torch.Tensor) -> ModelOutput:
        """Feed real clean frames (B, F, C, H, W) through the clean stream in one causal pass and commit them
        to the caches. Returns the heads for those frames."""
        B, Fr = x_clean.shape[:2]
        sig = torch.as_tensor(sigma_ctx, device=x_clean.device, dtype=self._fp).expand(B, Fr)
        pos = state.pos[:, None] + torch.arange(Fr, device=x_clean.device)
        p = _Pass("clean", pos, state=state)
        emb = self.embed(sig, actions, has_action)
        _, _, c_in = self._precondition(sig)
        _, features = self._network((c_in * x_clean).to(x_clean.dtype), emb, p, decode=None)
        keep = min(Fr, state.window)
        rows = torch.arange(B, device=pos.device)[:, None]
        state.slot_pos[rows, pos[:, Fr - keep:] % state.window] = pos[:, Fr - keep:]
        state.pos += Fr
        state.temporal.clear()
        reward, term = self._heads(features)
        return ModelOutput(None, reward, term)

    def denoise_step(self, state: InferenceState, x_noisy: torch.Tensor, sigma: torch.Tensor,
                     action: torch.Tensor, has_action: torch.Tensor) -> torch.Tensor:
        """One denoiser call for the next frame of every row: x_noisy (B, C, H, W), sigma (B,), action (B[, D]),
        has_action (B,). Caches are read only; this call's activations are kept for :meth:`commit`."""
        sig = sigma.to(self._fp)[:, None]
        p = _Pass("step", state.pos[:, None], state=state)
        emb = self.embed(sig, action[:, None], has_action[:, None])
        c_skip, c_out, c_in = self._precondition(sig)
        x = x_noisy[:, None]
        out, features = self._network((c_in * x).to(x.dtype), emb, p, decode=slice(None))
        assert out is not None
        state.pending["features"] = features
        return (c_skip * x.to(self._fp) + c_out * out.to(self._fp)).to(x_noisy.dtype)[:, 0]

    def commit(self, state: InferenceState) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn the last :meth:`denoise_step` into the cache entries of the new frame (its computation at
        sigma is the clean stream's at context noise sigma) and return its (reward, termination_logit)."""
        if "features" not in state.pending:
            raise RuntimeError("commit() needs a denoise_step() first")
        for m in self._temporal:
            m.commit(state)
        rows = torch.arange(state.batch_size, device=state.device)
        state.slot_pos[rows, state.pos % state.window] = state.pos
        state.pos += 1
        state.temporal.clear()
        reward, term = self._heads(state.pending.pop("features"))
        state.pending.clear()
        return reward[:, 0], term[:, 0]


def grow_input_temporal_kernel(state_dict: dict[str, torch.Tensor], old_k: int, new_k: int
                               ) -> dict[str, torch.Tensor]:
    """Weights of a model with ``input_temporal_kernel=old_k`` for one with ``new_k > old_k``: the input
    convolution's new taps (older frames) start at zero, so the grown model computes what the old one did (up
    to the weight normalisation's epsilon, 1e-4 relative), and training can then make it read the frames
    before. Weights are stored normalised (EDM2's forced weight normalisation), so the grown weight is
    normalised again, which leaves its effective weight as it was."""
    if new_k < old_k:
        raise ValueError(f"cannot shrink input_temporal_kernel from {old_k} to {new_k}")
    out = dict(state_dict)
    w = out.pop("conv_in.weight")[:, :, None] if old_k == 1 else out.pop("conv_in.conv.weight")  # (O, I, k, 3, 3)
    w = torch.cat([w, w.new_zeros((*w.shape[:2], new_k - old_k, *w.shape[3:]))], dim=2)
    out["conv_in.conv.weight" if new_k > 1 else "conv_in.weight"] = (
        normalize(w.to(torch.promote_types(w.dtype, torch.float32))).to(w.dtype) if new_k > 1 else w[:, :, 0])
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_gflops_per_frame(model: DartWorldModel) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one denoiser call for one frame, and of one training frame (clean +
    noisy stream, forward only), measured with torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    H, W = cfg.frame_size
    T = 8
    dev = next(model.parameters()).device
    actions = (torch.zeros(1, T, dtype=torch.long, device=dev) if cfg.action_space["type"] == "discrete"
               else torch.zeros(1, T, cfg.action_features - 1, device=dev))
    has = torch.ones(1, T, dtype=torch.bool, device=dev)
    x = torch.randn(1, T, cfg.image_channels, H, W, device=dev)
    with torch.no_grad():
        state = model.new_state(1)
        model.warmup(state, x, 0.01, actions, has)
        with FlopCounterMode(display=False) as fc:
            model.denoise_step(state, x[:, 0], torch.ones(1, device=dev), actions[:, 0], has[:, 0])
        step = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model(x, torch.ones(1, T, device=dev), x, torch.full((1, T), 0.01, device=dev), actions, has)
        train = fc.get_total_flops() / T
    return {"denoiser_call_gflops": step / 1e9, "train_gflops_per_supervised_frame": train / 1e9}
