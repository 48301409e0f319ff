"""Export a training checkpoint as a shipped world model (slim fp16 EMA weights + provenance).

    python scripts/export_shipped.py runs/cartpole_small/checkpoint.pt cartpole \\
        --note "collect=diffusion-world collect --card envs/cartpole.toml --policy runs/cartpole_expert.zip ..."
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from diffusion_world.bench.common import machine_info
from diffusion_world.checkpoint import export_for_inference, load_checkpoint
from diffusion_world.errors import report_user_errors

SHIPPED = Path(__file__).resolve().parents[1] / "diffusion_world" / "shipped"


def key_value(note: str) -> tuple[str, str]:
    key, sep, value = note.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"takes KEY=VALUE, not {note!r}")
    return key, value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("name")
    parser.add_argument("--note", action="append", default=[], type=key_value,
                        help="KEY=VALUE provenance notes (repeatable)")
    parser.add_argument("--out", default=str(SHIPPED),
                        help="folder to write NAME.pt and NAME.json into (default: the package's shipped models; "
                             "another folder: benchmark the exact file first, then copy both files in to ship it)")
    parser.add_argument("--no-termination-classifier", action="store_true",
                        help="leave the checkpoint's termination classifier out: the model's own head scores "
                             "terminations")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    notes = dict(args.note)
    notes.update({"exported_from_step": ckpt["step"], "training_elapsed_s": ckpt.get("elapsed_s"),
                  "num_frames_seen": ckpt.get("num_frames_seen"), "machine": machine_info()})
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    out = export_for_inference(args.checkpoint, folder / f"{args.name}.pt", notes,
                               termination_classifier=not args.no_termination_classifier)
    (folder / f"{args.name}.json").write_text(json.dumps(
        {"provenance": notes, "train_config": ckpt["train_config"], "dataset": ckpt["dataset"],
         "termination_classifier": None if args.no_termination_classifier
         else (ckpt.get("termination_classifier") or {}).get("report"),
         "size_bytes": out.stat().st_size}, indent=2, default=str) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {args.name}.json")


if __name__ == "__main__":
    sys.exit(report_user_errors("export_shipped.py", main))
