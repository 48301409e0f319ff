"""What this installation has and what it will do here: ``diffusion-world info``.

The versions, the CPU (and whether it has native bf16, which decides training's ``precision="auto"`` and whether
an imagined env gains from ``precision="bf16"``), the CUDA devices, the Minari root with its datasets, and the
world models shipped in the package with where they came from. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import resources
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from diffusion_world import precision
from diffusion_world.bench.common import cpu_model
from diffusion_world.checkpoint import SHIPPED
from diffusion_world.data.dataset import _minari_root
from diffusion_world.model.config import PRESETS
from diffusion_world.training.train import TrainConfig


def _describe_dataset(dataset_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Episodes, steps, what its observations are, and what it takes to train a world model on them."""
    from minari.serialization import deserialize_space

    entry: dict[str, Any] = {"episodes": int(meta.get("total_episodes", 0)), "steps": int(meta.get("total_steps", 0))}
    try:
        space = deserialize_space(meta["observation_space"])
    except Exception:  # an exotic or missing space must not hide the rest
        entry["observations"], entry["to_train"] = "unknown", None
        return entry
    shape = tuple(space.shape or ()) if isinstance(space, gym.spaces.Box) else ()
    image = isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and (
        len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4)))
    if image:
        entry["observations"] = "frames " + "x".join(map(str, shape))
        # the default preset's U-Net halves the frame (levels - 1) times
        step = 2 ** (len(PRESETS[TrainConfig.preset]["channels"]) - 1)
        fits = len(shape) == 3 and shape[2] == 3 and shape[0] % step == 0 and shape[1] % step == 0
        entry["to_train"] = None if fits else "train --frame-size 64"
    else:
        entry["observations"] = f"states {space}"
        entry["to_train"] = f"diffusion-world render {dataset_id} --dataset-id NEW"
    return entry


def _local_datasets() -> dict[str, dict[str, Any]] | str:
    """The Minari root's datasets (id -> :func:`_describe_dataset`), or why they could not be listed."""
    import minari

    try:
        local = minari.list_local_datasets()
    except Exception as e:  # a broken dataset in the root must not hide the rest of the report
        return f"could not list: {type(e).__name__}: {e}"
    return {d: _describe_dataset(d, dict(local[d])) for d in sorted(local)}


def _shipped() -> list[dict[str, Any]]:
    models = []
    for name in SHIPPED:
        root = resources.files("diffusion_world") / "shipped"
        weights, card = root / f"{name}.pt", root / f"{name}.json"
        entry: dict[str, Any] = {"name": name, "installed": weights.is_file()}
        if weights.is_file():
            entry["size_mb"] = round(os.path.getsize(str(weights)) / 1e6, 1)
        if card.is_file():
            meta = json.loads(card.read_text())
            prov = meta.get("provenance", {})
            entry.update({"training_step": prov.get("exported_from_step"),
                          "dataset_id": meta.get("dataset", {}).get("dataset_id"),
                          "frame_size": meta.get("dataset", {}).get("frame_size"), "status": prov.get("status")})
        models.append(entry)
    return models


def collect_info() -> dict[str, Any]:
    from diffusion_world import __version__

    cuda = torch.cuda.is_available()
    native = precision.cpu_has_native_bf16()
    return {
        "diffusion_world": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": native,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        # what training's default precision="auto" runs in on each device, and what an imagined env should ask for
        "training_precision": {"cpu": "bf16" if precision.use_bf16("auto", torch.device("cpu")) else "fp32",
                               **({"cuda": "bf16"} if cuda else {})},
        "env_precision_advice": ("'bf16' (native here: faster; frames differ from fp32's by rounding) or 'fp32'"
                                 if native else "'fp32' (bf16 is emulated here: several times slower)"),
        "minari_datasets_path": str(_minari_root()), "datasets": _local_datasets(),
        "shipped_world_models": _shipped(),
    }


def format_info(info: dict[str, Any]) -> str:
    cuda = ", ".join(info["cuda_devices"]) or "none"
    lines = [
        f"diffusion_world {info['diffusion_world']}, torch {info['torch']}, Python {info['python']}",
        f"platform:        {info['platform']}",
        f"CPU:             {info['cpu']} ({info['cpu_count']} logical cores, {info['torch_threads']} torch threads)",
        "native bf16:     " + ("yes (AMX or AVX512-BF16)" if info["cpu_native_bf16"]
                                 else "no (neither AMX nor AVX512-BF16)"),
        f"CUDA devices:    {cuda}",
        "training:        precision='auto' runs in " + ", ".join(
            f"{p} on {d}" for d, p in info["training_precision"].items()),
        f"imagined envs:   on the CPU, precision={info['env_precision_advice']}",
        f"Minari root:     {info['minari_datasets_path']}",
    ]
    datasets = info["datasets"]
    if isinstance(datasets, str):
        lines.append(f"datasets:        {datasets}")
    else:
        lines.append(f"datasets:        {len(datasets)}" + "".join(
            f"\n  {d}: {m['episodes']} episodes, {m['steps']} steps, {m['observations']}"
            + (f" (to train on it: {m['to_train']})" if m["to_train"] else "") for d, m in datasets.items()))
    lines.append("shipped world models (gym.make('DiffusionWorld-v0', world_model=NAME)):")
    for m in info["shipped_world_models"]:
        if not m["installed"]:
            lines.append(f"  {m['name']}: missing from this installation")
            continue
        size = "x".join(map(str, m.get("frame_size") or [])) or "?"
        lines.append(f"  {m['name']}: {m['size_mb']} MB, training step {m.get('training_step')}, {size} frames of "
                     f"{m.get('dataset_id')}" + (f"; {m['status']}" if m.get("status") else ""))
    return "\n".join(lines)
