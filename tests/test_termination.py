"""The termination head learns what a terminal frame looks like, not where it sits in a training window.

A dot random-walks on a 16x16 screen and the episode terminates when it reaches the left or right edge (like
CartPole's cart limits): the cue is a small spatial one. With windows that run past episode ends (padded and
masked) and terminal windows oversampled, terminations appear at every window position, so the head has no
position shortcut; the test checks it on held-out episodes at early positions and on non-terminal frames at the
last position. (The same training with ``pad_episode_ends=False``, where a termination is always a window's last
frame, gave a head that fired at none of the early-position terminations when this test was written.)
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from diffusion_world.checkpoint import load_world_model
from diffusion_world.data.collect import collect
from diffusion_world.data.dataset import FrameCache, WindowSampler
from diffusion_world.diffusion.sampler import frames_to_x
from diffusion_world.training.train import TrainConfig, train

EDGE_ENV_ID = "diffusion_world_test/EdgeWalk-v0"
CELLS = 7  # the dot walks over cells 0..6 (2 px each, centred); cells 0 and 6 terminate


class EdgeWalkEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    observation_space = gym.spaces.Box(0, CELLS - 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode: str | None = "rgb_array") -> None:
        self.render_mode = render_mode
        self.cell = CELLS // 2

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cell = int(self.np_random.integers(2, CELLS - 2))
        return np.array([self.cell], np.float32), {}

    def step(self, action):
        self.cell += 1 if int(action) == 1 else -1
        terminated = self.cell in (0, CELLS - 1)
        return np.array([self.cell], np.float32), 1.0, terminated, False, {}

    def render(self) -> np.ndarray:
        frame = np.zeros((16, 16, 3), np.uint8)
        frame[6:10, 2 * self.cell + 1 : 2 * self.cell + 3] = 255
        return frame


@pytest.fixture
def edge_walk_dataset(minari_root: Path) -> str:
    if EDGE_ENV_ID not in gym.registry:
        gym.register(id=EDGE_ENV_ID, entry_point=EdgeWalkEnv, max_episode_steps=64)
    collect(EDGE_ENV_ID, "tt/edge-walk-v0", steps=1500, size=16, seed=0, progress=False)
    return "tt/edge-walk-v0"


def termination_probabilities(wm, batch: dict) -> np.ndarray:
    """Teacher-forced p(termination) at every frame of real windows (clean stream, tiny context noise)."""
    x = frames_to_x(torch.from_numpy(np.ascontiguousarray(batch["frames"])))
    sigma_ctx = torch.full(x.shape[:2], 0.002)
    with torch.no_grad():
        out = wm.model(x, sigma_ctx, x, sigma_ctx, torch.from_numpy(batch["actions"]),
                       torch.from_numpy(batch["has_action"]))
    return wm.termination_probability(out.termination_logit).numpy()  # calibrated, as the env uses it


def test_termination_head_learns_the_frame_not_the_window_position(edge_walk_dataset: str, tmp_path: Path) -> None:
    T = 6
    cfg = TrainConfig(dataset_id=edge_walk_dataset, out_dir=str(tmp_path / "run"), preset="tiny", steps=150,
                      batch_size=8, seq_len=T, lr=1e-2, warmup_steps=10, eval_every=10_000, checkpoint_every=10_000,
                      log_every=50, progress=False, precision="fp32", val_fraction=0.25, terminal_fraction=0.25,
                      ema_halflife_steps=20)
    wm = load_world_model(train(cfg))
    assert wm.termination_pos_weight > 1  # terminations are the rare class
    cache = FrameCache.open(edge_walk_dataset, progress=False)
    _, val = cache.episode_split(cfg.val_fraction, cfg.seed)
    windows = WindowSampler(cache, T, val, pad_ends=True)
    assert windows.terminal_windows.size >= 10 * T
    terminal = windows.get(windows.terminal_windows)
    p_terminal = termination_probabilities(wm, terminal)[terminal["terminations"]]
    positions = np.argmax(terminal["terminations"], axis=1)
    full = windows.get(np.arange(windows.num_windows))
    full = {k: v[full["valid"].all(axis=1) & ~full["terminations"].any(axis=1)] for k, v in full.items()}
    p_last = termination_probabilities(wm, full)[:, -1]  # non-terminal frames at the last position
    early = positions < T - 1
    assert (p_terminal[early] > 0.5).mean() >= 0.9, p_terminal[early]  # fires wherever the termination is
    assert (p_terminal[~early] > 0.5).mean() >= 0.9, p_terminal[~early]
    assert (p_last < 0.5).mean() >= 0.95, np.sort(p_last)[-10:]  # and not because a window ends there
