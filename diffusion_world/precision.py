"""Which autocast precision to run in: shared by training (``TrainConfig.precision``) and the imagined envs
(``ImaginationCore(precision=...)``)."""

from __future__ import annotations

import warnings

import torch

from diffusion_world.errors import UserError

PRECISIONS = ("fp32", "bf16", "auto")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (Intel AMX or AVX512-BF16), where oneDNN runs bf16
    convolutions ~1.7x faster than fp32 (measured on the small preset); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # private helpers that older/newer torch may not have
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """``"bf16"`` / ``"fp32"`` as asked; ``"auto"``: bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def warn_if_emulated(precision: str, device: torch.device | str, stacklevel: int = 3) -> None:
    """Warn where ``precision="bf16"`` is asked for on a CPU that only emulates bf16: there it runs several
    times slower than fp32 (an AMD EPYC with AVX2 stepped 16 imagined envs 6x slower, ``env_speed_amd_epyc``),
    which ``"auto"`` would have avoided."""
    if precision == "bf16" and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("precision='bf16' on a CPU without native bf16 (no AMX or AVX512-BF16): bf16 is emulated "
                      "there and runs several times slower than fp32; use 'fp32' or 'auto'", stacklevel=stacklevel)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def inference_autocast(precision: str, device: torch.device | str) -> torch.autocast:
    """The autocast context of a model's inference calls in ``precision`` (a no-op context for fp32)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(check_precision(precision), device))
