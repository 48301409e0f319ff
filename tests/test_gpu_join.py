"""scripts/gpu_join.py: the pieces a checkpoint travels in to and from a GPU lease put it back together, and
what comes back (or goes out slimmed) continues training with --init-from and --resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from test_training import tiny_cfg

from diffusion_world.checkpoint import load_checkpoint
from diffusion_world.training.train import train

_spec = importlib.util.spec_from_file_location("gpu_join", Path(__file__).parents[1] / "scripts" / "gpu_join.py")
gpu_join = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_join)


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_split_join_round_trip_and_continue(tiny_dataset_id: str, tmp_path: Path) -> None:
    run = train(tiny_cfg(tiny_dataset_id, tmp_path / "run", steps=2))
    original = load_checkpoint(run)
    assert original["optimizer"]["state"]  # Adam's moments exist before the trip
    gpu_join.split(run, tmp_path / "pieces")
    assert sorted(p.name for p in (tmp_path / "pieces").iterdir()) == sorted(gpu_join.PIECES)
    joined = gpu_join.join(tmp_path / "pieces", tmp_path / "back" / "checkpoint.pt")
    assert _same_tensors(joined["model"], original["model"])
    assert _same_tensors(joined["ema"], original["ema"])
    assert not _same_tensors(original["ema"], original["model"])  # so the test tells them apart
    assert joined["optimizer"] == {"state": {}, "param_groups": original["optimizer"]["param_groups"]}
    for key in ("step", "num_frames_seen", "model_config", "dataset", "train_config"):
        assert joined[key] == original[key], key
    # what came back resumes where it stopped (Adam restarting its moments)
    resumed = train(tiny_cfg(tiny_dataset_id, tmp_path / "back", steps=3), resume=True)
    assert load_checkpoint(resumed)["step"] == 3


def test_slim_keeps_the_weights_and_starts_a_run(tiny_dataset_id: str, tmp_path: Path) -> None:
    run = train(tiny_cfg(tiny_dataset_id, tmp_path / "run", steps=2))
    original = load_checkpoint(run)
    slim = tmp_path / "init.pt"
    gpu_join.slim(run, slim)
    loaded = torch.load(slim, weights_only=True)
    assert _same_tensors(loaded["model"], original["model"]) and _same_tensors(loaded["ema"], original["model"])
    assert loaded["optimizer"]["state"] == {}
    assert slim.stat().st_size < run.stat().st_size / 2  # weights once, no moments
    started = train(tiny_cfg(tiny_dataset_id, tmp_path / "next", steps=3, init_from=str(slim)))
    assert load_checkpoint(started)["step"] == 3
