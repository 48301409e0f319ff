"""DART model speed on this machine (``diffusion-world benchmark speed`` without a checkpoint).

    python benchmarks/model_speed.py                      # small preset, 64x64, CPU
    python benchmarks/model_speed.py --device cuda        # the same on a GPU (bf16 autocast, flex attention)

Writes ``benchmarks/results/speed_<preset>_<device>.json``. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_world.bench.common import write_result
from diffusion_world.bench.speed import run_speed

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run_speed(preset=args.preset, device=args.device, quick=args.quick)
    out = args.out or RESULTS / f"speed_{args.preset}_{args.device}.json"
    write_result(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
