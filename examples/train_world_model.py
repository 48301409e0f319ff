"""Train a DART world model from an env card (the card's dataset, [model], [train] and [imagination] settings).

Collect the dataset first (``diffusion-world collect --card envs/cartpole.toml``), then:

    python examples/train_world_model.py --card envs/cartpole.toml --out runs/cartpole
    python examples/train_world_model.py --card envs/cartpole.toml --out runs/cartpole --steps 2000 --resume

The checkpoint (``OUT/checkpoint.pt``) is all the env needs: ``gym.make("DiffusionWorld-v0", world_model=...)``.
Same as ``diffusion-world train --card ... --out ...``.
"""

from __future__ import annotations

import argparse
import sys

from diffusion_world.errors import report_user_errors
from diffusion_world.training.train import train_from_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", default="envs/cartpole.toml", help="env card (TOML)")
    parser.add_argument("--out", default="runs/cartpole", help="output directory")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the card's)")
    parser.add_argument("--batch-size", type=int, help="windows per step (default: the card's)")
    parser.add_argument("--preset", choices=["tiny", "small", "base"], help="model size (default: the card's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_args()
    path = train_from_card(args.card, args.out, resume=args.resume, steps=args.steps, batch_size=args.batch_size,
                           preset=args.preset, device=args.device, seed=args.seed)
    print(f"checkpoint: {path}")
    print(f"try it: diffusion-world play --world-model {path} --steps 100 --out rollout.gif --compare-real")


if __name__ == "__main__":
    sys.exit(report_user_errors("train_world_model.py", main))
