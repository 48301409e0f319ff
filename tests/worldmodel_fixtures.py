"""Tiny world-model checkpoints for the env tests (random weights, 16x16 frames, the ``tiny`` preset).

A random model is enough to test the env machinery: its frames depend on the context, the actions and the
sampler noise, which is what determinism, batching and reset tests need. The scalar gains (zero at init, which
would make the network output nothing) are randomised, and the termination head's bias is set so episodes end
only through ``horizon`` or ``termination_threshold`` (both tests' choice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_world.checkpoint import save_checkpoint
from diffusion_world.model.config import preset_config
from diffusion_world.model.dart import DartWorldModel

DISCRETE = {"type": "discrete", "n": 2}
BOX = {"type": "box", "shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0]}


def random_tiny_model(action_space: dict[str, Any], seed: int = 0, termination_bias: float = -6.0,
                      **overrides: Any) -> DartWorldModel:
    torch.manual_seed(seed)
    model = DartWorldModel(preset_config("tiny", action_space=action_space, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 0:
                p.fill_(0.5 + torch.rand(()).item())
        model.head_out.bias[1] = termination_bias
    return model


def cache_contexts(cache: Any, num: int = 3, length: int = 8) -> dict[str, torch.Tensor]:
    """The first ``length`` frames of the first ``num`` episodes of a FrameCache with that many frames."""
    episodes = np.flatnonzero(cache.episode_lengths >= length)[:num]
    index = cache.episode_starts[episodes][:, None] + np.arange(length)  # (num, length)
    return {"frames": torch.from_numpy(np.array(cache.frames[index])),
            "actions": torch.from_numpy(cache.prev_actions[index]),
            "has_action": torch.from_numpy(cache.has_prev_action[index])}


def random_contexts(action_space: dict[str, Any], frame_size: tuple[int, int] = (16, 16), num: int = 3,
                    length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num, length, *frame_size, 3), dtype=np.uint8)
    if action_space["type"] == "discrete":
        actions = rng.integers(0, action_space["n"], (num, length)).astype(np.int64)
    else:
        actions = rng.uniform(-1, 1, (num, length, *action_space["shape"])).astype(np.float32)
    has_action = np.ones((num, length), dtype=bool)
    has_action[:, 0] = False
    return {"frames": torch.from_numpy(frames), "actions": torch.from_numpy(actions),
            "has_action": torch.from_numpy(has_action)}


def make_tiny_checkpoint(path: str | Path, *, cache: Any = None, action_space: dict[str, Any] | None = None,
                         dataset_id: str | None = None, seed: int = 0, imagination: dict[str, Any] | None = None,
                         contexts: dict[str, torch.Tensor] | None = None, **overrides: Any) -> Path:
    """Write a tiny random checkpoint. With ``cache`` (a FrameCache) its dataset and contexts are recorded;
    without, ``dataset_id`` (default: a dataset that does not exist) and random contexts."""
    action_space = action_space or DISCRETE
    model = random_tiny_model(action_space, seed=seed, **overrides)
    cfg = model.cfg
    if contexts is None:
        contexts = cache_contexts(cache) if cache is not None else random_contexts(action_space, cfg.frame_size)
    dataset = {
        "dataset_id": cache.dataset_id if cache is not None else (dataset_id or "diffusion_world_test/absent-v0"),
        "frame_size": list(cfg.frame_size),
        "action_space": action_space,
        "env_spec": cache.env_spec if cache is not None else None,
    }
    path = Path(path)
    save_checkpoint(path, {
        "model_config": cfg.to_dict(),
        "train_config": {"val_fraction": 0.2, "seed": 0},
        "dataset": dataset,
        "imagination": imagination if imagination is not None else
        {"sampler_steps": 3, "horizon": 50, "context_frames": 4},
        "contexts": contexts,
        "model": model.state_dict(),
        "ema": None,
        "step": 0,
    })
    return path
