"""Which autocast precision to run in: shared by training (``TrainConfig.precision``) and the imagined envs
(``ImaginationCore(precision=...)``)."""

from __future__ import annotations

import torch


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
