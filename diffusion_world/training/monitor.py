"""Training progress: the progress bar, ``metrics.jsonl``, validation loss and the PNG dashboard."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_world.data.dataset import WindowSampler
from diffusion_world.diffusion.sampler import SamplerConfig, frames_to_x, imagine
from diffusion_world.files import atomic_write_text, save_figure
from diffusion_world.model.config import ModelConfig
from diffusion_world.model.dart import DartWorldModel
from diffusion_world.training.loss import dart_loss, draw_noise

if TYPE_CHECKING:
    from diffusion_world.training.train import TrainConfig

DASHBOARD_CONTEXT = 4  # real frames given before generating the rest of the validation window


class Monitor:
    def __init__(self, out_dir: Path, cfg: TrainConfig, total_steps: int, start_step: int, enabled: bool) -> None:
        self.enabled, self.cfg, self.out_dir = enabled, cfg, out_dir
        self.history: list[dict[str, Any]] = []
        self._fps: float | None = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        if start_step > 0 and path.exists():  # keep the curve of the steps done before a resume
            rows = []
            for number, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut by a kill: its row is lost, the curve goes on
                    if line.strip():
                        warnings.warn(f"{path}: line {number} is not a JSON row (cut short?): dropped", stacklevel=2)
            self.history = [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= start_step]
            # a kill while rewriting must not cut the file
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.history))
        elif path.exists():
            path.unlink()
        self.file = path.open("a")
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not cfg.progress, unit="step",
                        dynamic_ncols=True, desc="train")

    def banner(self, model_cfg: ModelConfig, num_params: int, train: WindowSampler, val: WindowSampler | None,
               device: torch.device, world: int) -> None:
        cfg = self.cfg
        print(f"world model: preset {cfg.preset!r}, {num_params / 1e6:.2f}M parameters, frames "
              f"{model_cfg.frame_size[0]}x{model_cfg.frame_size[1]}, window T={cfg.seq_len}, supervision "
              f"{cfg.loss.supervision}; data: {train.num_windows} train windows, "
              f"{val.num_windows if val else 0} validation windows; device {device} x{world}", flush=True)
        if val is None:
            print(f"no validation episode has {cfg.seq_len} frames (--seq-len): the EMA's loss is measured on "
                  "training windows, logged as train_eval_loss", flush=True)

    def log(self, step: int, totals: dict[str, float], lr: float, grad_norm: float, dt: float, supervised: int,
            num_frames_seen: int) -> None:
        fps = supervised / max(dt, 1e-9)
        self._fps = fps if self._fps is None else 0.9 * self._fps + 0.1 * fps
        self.bar.set_postfix(loss=f"{totals['loss']:.4f}", frames_per_s=f"{self._fps:.1f}", refresh=False)
        self.bar.update(1)
        if step % self.cfg.log_every == 0 or step == 1:
            row = {"step": step, **totals, "lr": lr, "grad_norm": grad_norm, "supervised_frames_per_s": fps,
                   "num_frames_seen": num_frames_seen, "time": time.time()}
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    @torch.no_grad()
    def evaluate(self, step: int, model: DartWorldModel, windows: WindowSampler, cfg: TrainConfig,
                 device: torch.device, attn_backend: str, held_out: bool = True) -> dict[str, float]:
        """Validation loss on fixed windows and noise (EMA weights), and the dashboard PNG. ``held_out=False``:
        the windows are training windows (no validation episode is long enough), and the row says so: its keys
        are ``train_eval_*`` instead of ``val_*``."""
        rng = np.random.default_rng(12345)
        batch = windows.sample(cfg.num_val_windows, rng)
        x0 = frames_to_x(torch.from_numpy(np.ascontiguousarray(batch["frames"]))).to(device)
        gen = torch.Generator().manual_seed(12345)
        draw = draw_noise(x0.shape[0], x0.shape[1], tuple(x0.shape[2:]), cfg.loss, gen)
        t = {k: torch.from_numpy(batch[k]).to(device)
             for k in ("actions", "has_action", "rewards", "terminations", "valid", "termination_weights")}
        out = dart_loss(model, x0, t["actions"], t["has_action"], t["rewards"], t["terminations"], draw, cfg.loss,
                        model.cfg.sigma_data, attn_backend, window=model.cfg.context_window,  # type: ignore[arg-type]
                        valid=t["valid"], termination_weights=t["termination_weights"])
        p = "val" if held_out else "train_eval"
        row = {"step": step, f"{p}_loss": out.total.item(), f"{p}_diffusion": out.diffusion.item(),
               f"{p}_reward": out.reward.item(), f"{p}_termination": out.termination.item()}
        self._write(row)
        c = min(DASHBOARD_CONTEXT, x0.shape[1] - 1)
        # two windows without padding (padded ones only when there are not two others)
        rows = np.argsort(~batch["valid"].all(axis=1), kind="stable")[:2]
        fr = torch.from_numpy(np.ascontiguousarray(batch["frames"][rows]))
        act, has = torch.from_numpy(batch["actions"][rows]), torch.from_numpy(batch["has_action"][rows])
        gens = [torch.Generator().manual_seed(i) for i in range(fr.shape[0])]
        gen_frames = imagine(model, fr[:, :c], act[:, :c], has[:, :c], act[:, c:], gens, SamplerConfig())["frames"]
        self.dashboard(step, fr[:, c:].numpy(), gen_frames.numpy(), held_out, context=c)
        return row

    def dashboard(self, step: int, real: np.ndarray, generated: np.ndarray, held_out: bool = True,
                  context: int = DASHBOARD_CONTEXT) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(12, 6.5), constrained_layout=True)
        grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.6])
        ax = fig.add_subplot(grid[:, 0])
        tr = [(r["step"], r["loss"]) for r in self.history if "loss" in r]
        key = "val_loss" if held_out else "train_eval_loss"
        va = [(r["step"], r[key]) for r in self.history if key in r]
        if tr:
            ax.plot(*zip(*tr), "o-" if len(tr) < 20 else "-", ms=3, label="train loss (one batch per point)",
                    lw=1)
        if va:
            ax.plot(*zip(*va), "o-", ms=3, label="validation loss (EMA)" if held_out else
                    "loss of the EMA on training windows (no validation episode is long enough)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (uncertainty-normalised; can be negative)")
        ax.set_title(f"{self.cfg.dataset_id} — step {step}")
        ax.legend()
        ax.grid(alpha=0.3)
        n = min(real.shape[1], 12)
        for row, (name, frames) in enumerate((("real", real[0, :n]), ("imagined", generated[0, :n]))):
            a = fig.add_subplot(grid[row, 1])
            bar = np.full((frames.shape[1], max(1, frames.shape[1] // 32), frames.shape[3]), 128, dtype=frames.dtype)
            a.imshow(np.concatenate([part for f in frames for part in (f, bar)][:-1], axis=1),
                     interpolation="nearest")
            a.set_axis_off()
            a.set_title(f"{name}: {n} frames after {context} real context frames "
                        f"({'validation' if held_out else 'training'} episode)")
        save_figure(fig, self.out_dir / "dashboard.png", dpi=110)
        plt.close(fig)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.file.close()
