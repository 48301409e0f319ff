"""Move a training checkpoint through the device tool's size limits (64 MiB carried in, files of < 16 MB back).

    python scripts/gpu_join.py slim runs/x/checkpoint.pt .carry/init.pt   # weights only, for --init-from
    python scripts/gpu_join.py split runs/gpu/checkpoint.pt OUT            # three pieces of < 16 MB (small)
    python scripts/gpu_join.py join OUT runs/gpu/checkpoint.pt             # put them back together

What travels holds the raw weights (slim: the EMA starts from them) or the raw and EMA weights (split) and
everything else but Adam's moment estimates, 4x the weights' size: a run that continues from the result
(``--init-from`` or ``--resume``) restarts them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from diffusion_world.checkpoint import save_checkpoint

PIECES = ("ckpt_model.pt", "ckpt_ema.pt", "ckpt_rest.pt")


def _load(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _without_moments(optimizer: dict[str, Any]) -> dict[str, Any]:
    return {"state": {}, "param_groups": optimizer["param_groups"]}


def slim(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """The checkpoint with the EMA replaced by the raw weights (the same tensors: saved once) and no moments."""
    ckpt = _load(src)
    ckpt["ema"] = dict(ckpt["model"])
    ckpt["optimizer"] = _without_moments(ckpt["optimizer"])
    torch.save(ckpt, dst)
    return ckpt


def split(src: str | Path, out_dir: str | Path) -> None:
    ckpt = _load(src)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt.pop("model"), out_dir / PIECES[0])
    torch.save(ckpt.pop("ema"), out_dir / PIECES[1])
    ckpt["optimizer"] = _without_moments(ckpt["optimizer"])
    torch.save(ckpt, out_dir / PIECES[2])


def join(src_dir: str | Path, dst: str | Path) -> dict[str, Any]:
    src_dir = Path(src_dir)
    ckpt = _load(src_dir / PIECES[2])
    ckpt["model"] = _load(src_dir / PIECES[0])
    ckpt["ema"] = _load(src_dir / PIECES[1])
    save_checkpoint(dst, ckpt)
    return ckpt


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in ("slim", "split", "join"):
        sys.exit(__doc__)
    verb, a, b = argv
    if verb == "slim":
        ckpt = slim(a, b)
        print(f"{b}: step {ckpt['step']}, termination classifier: {ckpt.get('termination_classifier') is not None}")
    elif verb == "split":
        split(a, b)
    else:
        ckpt = join(a, b)
        print(f"{b}: step {ckpt['step']}, {ckpt['num_frames_seen']} supervised frames")


if __name__ == "__main__":
    main(sys.argv[1:])
