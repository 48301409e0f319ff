"""Reassemble the training checkpoint that ``scripts/gpu_train.sh`` brought back in pieces.

    python scripts/gpu_join.py GPU_OUT_DIR runs/gpu/checkpoint.pt

The pieces hold the raw and EMA weights and everything else but the Adam moments (too large to bring back):
the result continues with ``--init-from`` or ``--resume`` (Adam restarts its moment estimates).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from diffusion_world.checkpoint import save_checkpoint


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    ckpt = torch.load(src / "ckpt_rest.pt", map_location="cpu", weights_only=True)
    ckpt["model"] = torch.load(src / "ckpt_model.pt", map_location="cpu", weights_only=True)
    ckpt["ema"] = torch.load(src / "ckpt_ema.pt", map_location="cpu", weights_only=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, ckpt)
    print(f"{dst}: step {ckpt['step']}, {ckpt['num_frames_seen']} supervised frames")


if __name__ == "__main__":
    main()
