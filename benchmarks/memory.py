"""Memory benchmark on this machine: recall of a colour cue after n distractor steps, ours vs short memory.

    OMP_NUM_THREADS=1 python benchmarks/memory.py            # the full run (n=24), about 27 minutes on 2 CPU cores
    OMP_NUM_THREADS=1 python benchmarks/memory.py --quick    # a few minutes: checks the pipeline, not the accuracy

Collects CueMemory episodes into a temporary Minari root, trains both models with the same budget, and writes
``benchmarks/results/memory.json`` (``memory_quick.json`` with ``--quick``) and the PNG next to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_world.bench.common import write_result
from diffusion_world.bench.memory import run_memory

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="distractor steps between the cue and its reappearance")
    parser.add_argument("--steps", type=int, help="optimiser steps of each model (default: run_memory's)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work-dir", type=Path, help="keep the dataset and checkpoints here (default: temporary)")
    args = parser.parse_args()
    work = {"datasets_path": args.work_dir / "minari", "work_dir": args.work_dir / "runs"} if args.work_dir else {}
    result = run_memory(args.out, n=args.n, quick=args.quick, steps=args.steps, **work)
    path = write_result(args.out / ("memory_quick.json" if args.quick else "memory.json"), result)
    print(f"wrote {path}: {result['headline']}")


if __name__ == "__main__":
    main()
