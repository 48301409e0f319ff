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
from diffusion_world.data.dataset import _action_dtype, _check_image_space, _image_shaped, minari_datasets_root
from diffusion_world.errors import UserError
from diffusion_world.model.config import PRESETS, suggested_frame_size
from diffusion_world.registration import PIXEL_ENV_ID
from diffusion_world.training.train import TrainConfig


def _space_summary(space: gym.Space) -> str:
    """A one-line description of a space: ``Box(float32, (8,))`` rather than its bounds."""
    if isinstance(space, gym.spaces.Box):
        return f"Box({space.dtype}, {space.shape})"
    if isinstance(space, gym.spaces.Dict):
        return "Dict(" + ", ".join(f"{k}: {_space_summary(v)}" for k, v in space.spaces.items()) + ")"
    if isinstance(space, gym.spaces.Tuple):
        return "Tuple(" + ", ".join(_space_summary(v) for v in space.spaces) + ")"
    return " ".join(str(space).split())


def _env_id(meta: dict[str, Any]) -> str | None:
    """The env a dataset was recorded in (for a diffusion_world pixel dataset, the env it rendered)."""
    try:
        spec = json.loads(meta["env_spec"])
        return str(spec["kwargs"]["env_id"] if spec["id"] == PIXEL_ENV_ID else spec["id"])
    except Exception:  # no env spec, or one in an unexpected form
        return None


def _why_not_renderable(dataset_id: str) -> str | None:
    """Why ``render`` cannot replay a dataset of states (as :func:`render_dataset` checks), or None if it can."""
    import minari

    try:
        dataset = minari.load_dataset(dataset_id)
        if dataset.env_spec is None:
            return "it records no env spec, so `render` has no env to replay it in"
        metas = list(dataset.storage.get_episode_metadata(dataset.episode_indices))
    except Exception:  # unreadable here: render will say why
        return None
    unseeded = sum(m.get("seed") is None for m in metas)
    if unseeded:
        return f"{unseeded} of {len(metas)} episodes record no reset seed, so `render` cannot replay them"
    return None


def _describe_dataset(dataset_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Its env, episodes, steps, what its observations are, and what it takes to train a world model on them
    (``to_train``: a command, or None if nothing; ``cannot_train``: why neither ``train`` nor ``render`` can
    make a world model of it, or None)."""
    from minari.serialization import deserialize_space

    entry: dict[str, Any] = {"env_id": _env_id(meta), "episodes": int(meta.get("total_episodes", 0)),
                             "steps": int(meta.get("total_steps", 0)), "cannot_train": None}
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
        entry["to_train"] = None if fits else f"train --frame-size {suggested_frame_size(shape)}"
    elif _image_shaped(space) or isinstance(space, gym.spaces.Dict) and any(map(_image_shaped, space.spaces.values())):
        entry["observations"] = f"images {_space_summary(space)}"  # float images, or a Dict holding one
        entry["to_train"] = None
    else:
        entry["observations"] = f"states {_space_summary(space)}"
        why = _why_not_renderable(dataset_id)
        entry["cannot_train"] = None if why is None else f"cannot be rendered to frames: {why}"
        entry["to_train"] = None if why else f"diffusion-world render {dataset_id} --dataset-id NEW"
    # what train would refuse (the frame cache's checks): its images' type or levels, its action space
    try:
        if not entry["observations"].startswith("states"):
            _check_image_space(dataset_id, space, None if entry["to_train"] is None else 64)
        _action_dtype(dataset_id, deserialize_space(meta["action_space"]))
    except UserError as e:
        entry["to_train"], entry["cannot_train"] = None, f"cannot train on it: {e}"
    except Exception:  # an exotic or missing action space: train will say
        pass
    return entry


def _local_datasets() -> dict[str, dict[str, Any]] | str:
    """The Minari root's datasets (id -> :func:`_describe_dataset`), or why they could not be listed."""
    import minari

    try:
        local = minari.list_local_datasets()
    except Exception as e:  # e.g. a stray folder whose path is no dataset id: list the others one by one
        listed = _list_one_by_one()
        if listed is None:
            return f"could not list: {type(e).__name__}: {e}"
        local, unlisted = listed
        return {**{d: _describe_dataset(d, dict(local[d])) for d in sorted(local)},
                **{folder: {"env_id": None, "episodes": 0, "steps": 0, "observations": "unreadable",
                            "to_train": None, "cannot_train": f"not a dataset Minari can read: {why}"}
                   for folder, why in sorted(unlisted.items())}}
    return {d: _describe_dataset(d, dict(local[d])) for d in sorted(local)}


def _list_one_by_one() -> tuple[dict[str, Any], dict[str, str]] | None:
    """What ``minari.list_local_datasets`` lists, asked of each dataset folder on its own (Minari fails for all
    of them when one folder's path is not a dataset id), and why each folder it fails for failed; None where the
    root cannot be walked."""
    import minari

    root = minari_datasets_root()
    found: dict[str, Any] = {}
    failed: dict[str, str] = {}
    try:
        folders = [p.parent.relative_to(root).as_posix() for p in root.rglob("data") if p.is_dir()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    except OSError:
        return None
    for folder in folders:
        try:
            found.update(minari.list_local_datasets(prefix=folder))
        except Exception as e:
            failed[folder] = f"{type(e).__name__}: {e}"
    return found, failed


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
        "minari_datasets_path": str(minari_datasets_root()), "datasets": _local_datasets(),
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
            f"\n  {d}: {m['env_id'] or 'no env spec'}, {m['episodes']} episode{'s' * (m['episodes'] != 1)}, "
            f"{m['steps']} steps, "
            f"{m['observations']}" + (f" (to train on it: {m['to_train']})" if m["to_train"] else "")
            + (f" ({m['cannot_train']})" if m["cannot_train"] else "")
            for d, m in datasets.items()))
    lines.append("shipped world models (gym.make('DiffusionWorld-v0', world_model=NAME)):")
    for m in info["shipped_world_models"]:
        if not m["installed"]:
            lines.append(f"  {m['name']}: missing from this installation")
            continue
        size = "x".join(map(str, m.get("frame_size") or [])) or "?"
        lines.append(f"  {m['name']}: {m['size_mb']} MB, training step {m.get('training_step')}, {size} frames of "
                     f"{m.get('dataset_id')}" + (f"; {m['status']}" if m.get("status") else ""))
    return "\n".join(lines)
