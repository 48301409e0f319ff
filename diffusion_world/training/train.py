"""Train a DART world model on a Minari image dataset: ``train(TrainConfig(...))`` top to bottom.

Every step draws its global batch (windows, sigmas, noise) from an RNG seeded by ``(seed, step)``; DDP ranks
and gradient-accumulation micro-batches take equal slices of it. Hence resuming continues exactly, and N
processes compute what one process computes on the combined batch.

Multi-GPU / multi-node: launch the same command with ``torchrun --nproc_per_node=G -m diffusion_world.cli train
...``; rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from diffusion_world.checkpoint import check_device, load_checkpoint, run_lock, save_checkpoint
from diffusion_world.data.dataset import FrameCache, WindowSampler
from diffusion_world.data.pixel_env import MIN_FRAME_SIZE
from diffusion_world.diffusion.sampler import frames_to_x
from diffusion_world.errors import Interrupted, UserError, writable_dir
from diffusion_world.model.config import (
    PRESETS,
    ModelConfig,
    action_space_to_dict,
    check_field_types,
    preset_config,
    suggested_frame_size,
)
from diffusion_world.model.dart import (
    MAX_ACTION_HALF_RANGE,
    AttnBackend,
    DartWorldModel,
    count_parameters,
    grow_input_temporal_kernel,
)
from diffusion_world.model.mp import normalize_weights_
from diffusion_world.precision import use_bf16, warn_if_emulated
from diffusion_world.training.loss import LossConfig, dart_loss, draw_noise
from diffusion_world.training.monitor import Monitor


@dataclass
class TrainConfig:
    """All training settings. Saved (resolved) inside every checkpoint."""

    dataset_id: str = ""
    # N: train on the dataset's frames resized to N x N RGB (grey, RGBA, large or odd-sized datasets such as
    # Minari's 210x160 Atari); the real env of the checkpoint is resized the same way. None: the frames as stored
    frame_size: int | None = None
    out_dir: str = "runs/world_model"
    preset: str = "small"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's ModelConfig fields
    steps: int = 20_000  # optimiser steps
    max_minutes: float = 0.0  # > 0: stop (and save) after this much wall-clock time in the training loop
    batch_size: int = 8  # windows per optimiser step, over all ranks and micro-batches
    grad_accum: int = 1
    seq_len: int = 16  # T
    lr: float = 2e-3
    warmup_steps: int = 200
    lr_decay_steps: int = 2_000  # EDM2 inverse square root decay: lr / sqrt(max(step / lr_decay_steps, 1))
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_halflife_steps: float = 500.0
    ema_rampup: float = 0.1  # EMA half-life at most this fraction of the steps done so far
    loss: LossConfig = field(default_factory=LossConfig)
    val_fraction: float = 0.1
    pad_episode_ends: bool = True  # windows may run past an episode's end (padded, masked out of the loss)
    terminal_fraction: float = 0.0  # share of windows drawn from those containing a termination
    init_from: str = ""  # start from a run's weights, optimiser, step and counters, or an export / shipped model's EMA
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    attn_backend: str = "auto"  # auto (flex on CUDA, sdpa elsewhere) | flex | sdpa
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with native bf16: AMX/AVX512-BF16) | bf16 | fp32
    log_every: int = 25
    eval_every: int = 500  # validation loss + PNG dashboard
    checkpoint_every: int = 500
    num_val_windows: int = 16
    num_contexts: int = 16  # real episode starts stored in the checkpoint, so the env runs without the dataset
    context_length: int = 8
    imagination: dict[str, Any] = field(default_factory=dict)  # env defaults from the card, stored as-is
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        for name in ("out_dir", "init_from"):  # paths as str, so that the config stays JSON
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        check_field_types(self, "train config")
        check_field_types(self.loss, "train config")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    def validate(self) -> None:
        check_field_types(self, "train config")  # set after construction too (e.g. by the CLI)
        check_field_types(self.loss, "train config")
        if not self.dataset_id:
            raise UserError("a dataset id is needed (--dataset-id or a card's [collect] dataset_id)")
        from_data = {"frame_size": "resize its frames with frame_size ([train] frame_size, --frame-size)",
                     "action_space": "the dataset's action space", "image_channels": "RGB frames: 3"}
        given = [k for k in from_data if k in self.model]
        if given:  # passed twice to the model config (a raw TypeError), or a model the data cannot feed
            raise UserError(f"the model's {', '.join(given)} come(s) from the dataset, not the model settings ("
                            + "; ".join(f"{k}: {from_data[k]}" for k in given) + ")")
        if self.frame_size is not None and (isinstance(self.frame_size, bool) or not isinstance(self.frame_size, int)
                                            or self.frame_size < MIN_FRAME_SIZE):
            raise UserError(f"frame_size must be an integer >= {MIN_FRAME_SIZE}, got {self.frame_size!r}")
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_minutes >= 0:  # nan too (it meant no limit)
            raise UserError(f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")
        if self.seq_len < 2:
            raise UserError(f"seq_len must be >= 2 (a window of one frame has no past frame to predict it from), "
                            f"got {self.seq_len}")
        if not 0 < self.lr < 1:
            raise UserError(f"lr must be in (0, 1), got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda":
            check_device("cuda")
        if self.attn_backend not in ("auto", "flex", "sdpa"):
            raise UserError(f"attn_backend must be auto, flex or sdpa, got {self.attn_backend!r}")
        if not 0.0 <= self.terminal_fraction < 1.0:
            raise UserError(f"terminal_fraction must be in [0, 1), got {self.terminal_fraction!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.loss.supervision not in ("dart", "last_frame"):
            raise UserError(f"supervision must be 'dart' or 'last_frame', got {self.loss.supervision!r}")
        if not 0 < self.loss.sigma_ctx_min <= self.loss.sigma_ctx_max:
            raise UserError("need 0 < sigma_ctx_min <= sigma_ctx_max")
        from diffusion_world.cards import check_imagination

        check_imagination("imagination", self.imagination)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        loss_known = {f.name for f in dataclasses.fields(LossConfig)}
        unknown = sorted(set(d) - known) + sorted(set(d.get("loss", {})) - loss_known)
        if unknown:  # a card's [train] holds both
            allowed = sorted((known | loss_known) - {"loss", "model", "imagination", "out_dir", "progress"})
            raise UserError(f"unknown train config key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
        return cls(**d)


FLEX_MIN_HEAD_DIM = 16  # FlexAttention's CUDA kernels (torch 2.11: "NYI: embedding dimension ... at least 16")


def resolve_attn_backend(requested: str, device_type: str, head_dim: int) -> AttnBackend:
    """The video attention used in training: ``auto`` is FlexAttention on CUDA when the heads are wide enough
    for its kernels, else the dense-mask SDPA reference; an explicit ``flex`` that cannot run is refused."""
    flex_ok = head_dim >= FLEX_MIN_HEAD_DIM
    if requested == "flex" and device_type != "cuda":  # refused now, not at the first backward
        raise UserError(f"--attn-backend flex trains on CUDA only: FlexAttention has no backward pass on "
                        f"{device_type} (torch {torch.__version__}); use sdpa, the same attention with a dense mask")
    if requested == "flex" and device_type == "cuda" and not flex_ok:
        raise UserError(f"--attn-backend flex needs attention heads of >= {FLEX_MIN_HEAD_DIM} channels on CUDA; "
                        f"this model's attention_head_dim is {head_dim} (use sdpa)")
    if requested == "auto":
        return "flex" if device_type == "cuda" and flex_ok else "sdpa"
    return requested  # type: ignore[return-value]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then EDM2's inverse square root decay (EDM2 Sec. 2.4, Eq. 16)."""
    lr = cfg.lr / math.sqrt(max(step / cfg.lr_decay_steps, 1))
    return lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))


def _step_rng(seed: int, step: int, device: torch.device | str = "cpu") -> tuple[np.random.Generator, torch.Generator]:
    """The step's window sampler RNG and its noise generator, on the training device (the same seed gives
    the same noise on the same kind of device, so a resumed run repeats the uninterrupted one)."""
    rng = np.random.default_rng([seed, step])
    return rng, torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))


def _batch_to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {  # frames travel as uint8 (4x fewer bytes) and become floats on the device
        "x0": frames_to_x(torch.from_numpy(np.ascontiguousarray(batch["frames"])).to(device)),
        "actions": torch.from_numpy(batch["actions"]).to(device),
        "has_action": torch.from_numpy(batch["has_action"]).to(device),
        "rewards": torch.from_numpy(batch["rewards"]).to(device),
        "terminations": torch.from_numpy(batch["terminations"]).to(device),
        "valid": torch.from_numpy(batch["valid"]).to(device),
        "termination_weights": torch.from_numpy(batch["termination_weights"]).to(device),
    }


def _reset_contexts(cache: FrameCache, episodes: np.ndarray, num: int, length: int) -> dict[str, torch.Tensor]:
    """The first ``length`` frames of up to ``num`` episodes (those long enough), for the checkpoint. As the
    dataset's contexts (:class:`~diffusion_world.envs.core.DatasetContexts`): never a frame recorded after a
    termination, nor one that ends on the terminal frame, unless no episode is long enough for that."""
    lengths = cache.live_lengths
    need = length + 1 if any(lengths[e] >= length + 1 for e in episodes) else length
    long_enough = [e for e in episodes if lengths[e] >= need][:num]
    if not long_enough:
        return {}
    idx = cache.episode_starts[long_enough][:, None] + np.arange(length)
    return {"frames": torch.from_numpy(np.asarray(cache.frames[idx])),
            "actions": torch.from_numpy(cache.prev_actions[idx]),
            "has_action": torch.from_numpy(cache.has_prev_action[idx])}


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),  # type: ignore[index]
            "python": random.getstate()[1]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def train(cfg: TrainConfig, resume: bool = False, card: str | os.PathLike | None = None) -> Path:
    """Train (or resume) and return the path of the final checkpoint ``out_dir/checkpoint.pt``. ``card``: the env
    card ``cfg`` took settings from, to warn where the dataset was recorded in another env than the card's.

    Example::

        train(TrainConfig(dataset_id="diffusion_world/cartpole-pixels-v0", out_dir="runs/cp", preset="small"))
    """
    cfg.validate()
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {str(out_dir)!r} is a file, not a directory")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {str(out_dir)!r}: {e.strerror}") from e
    try:
        writable_dir(out_dir, "--out")  # before the data and the model (a read-only --out failed at its first log)
        if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 holds the lock for the run
            return _train(cfg, resume, out_dir, ckpt_path, card)
        with run_lock(out_dir, "`diffusion-world train`"):
            # a save that a kill -9 cut short (never a checkpoint); only under the lock: the other ranks of a
            # launch that the lock refuses would delete the running run's checkpoint being written
            for stale in out_dir.glob(f".{ckpt_path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            return _train(cfg, resume, out_dir, ckpt_path, card)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):  # a refused run leaves no empty --out
            out_dir.rmdir()
        raise


def _train(cfg: TrainConfig, resume: bool, out_dir: Path, ckpt_path: Path,
           card: str | os.PathLike | None = None) -> Path:
    if not resume and ckpt_path.exists():  # hours of training are not overwritten by a forgotten --resume
        step_done = load_checkpoint(ckpt_path).get("step", "?")
        raise UserError(f"{ckpt_path} holds a run (step {step_done}): continue it with --resume, or train into "
                        "another --out (or delete it)")
    if resume and ckpt_path.exists():  # before the data: the frames to read depend on it
        _check_resumable(ckpt_path, load_checkpoint(ckpt_path), cfg)

    # ---- devices and processes
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    rank, world = _init_distributed(device)
    per_step = cfg.batch_size // (world * cfg.grad_accum)
    if per_step * world * cfg.grad_accum != cfg.batch_size:
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by world size {world} x grad_accum "
                        f"{cfg.grad_accum}")
    warn_if_emulated(cfg.precision, device)
    amp = use_bf16(cfg.precision, device)  # bf16 autocast; fp32 master weights, optimiser and EMA everywhere

    # ---- data
    cache = FrameCache.open(cfg.dataset_id, progress=cfg.progress and rank == 0, frame_size=cfg.frame_size)
    train_eps, val_eps = cache.episode_split(cfg.val_fraction, cfg.seed)
    with warnings.catch_warnings():  # the same data warnings on every process: rank 0 says them once
        if rank != 0:
            warnings.simplefilter("ignore")
        _warn_env_mismatch(cfg, cache, card)
        train_windows = WindowSampler(cache, cfg.seq_len, train_eps, pad_ends=cfg.pad_episode_ends,
                                      terminal_fraction=cfg.terminal_fraction)
    val_windows = None
    if len(val_eps) and (cache.episode_lengths[val_eps] >= cfg.seq_len).any():
        val_windows = WindowSampler(cache, cfg.seq_len, val_eps, pad_ends=cfg.pad_episode_ends)
    if cfg.loss.termination_pos_weight is None:  # balance the classes as the sampler yields them
        rate = train_windows.termination_rate()
        cfg.loss.termination_pos_weight = float(np.clip((1 - rate) / rate, 1.0, 100.0)) if rate > 0 else 1.0

    # ---- model, EMA, optimiser
    _warn_unscaled_box_actions(action_space_to_dict(cache.action_space), cache.dataset_id)
    try:
        model_cfg = preset_config(cfg.preset, frame_size=tuple(cache.frame_size),
                                  action_space=action_space_to_dict(cache.action_space), **cfg.model)
    except UserError as e:
        if cfg.frame_size is None and str(e).startswith("frame size"):
            channels = cfg.model.get("channels", PRESETS[cfg.preset]["channels"])
            raise UserError(f"{e}: resize the dataset's frames with --frame-size N ([train] frame_size), e.g. "
                            f"{suggested_frame_size(tuple(cache.frame_size), tuple(channels))}") from e
        raise
    if rank == 0:
        model_cfg.warn_if_no_video_attention()
    attn_backend = resolve_attn_backend(cfg.attn_backend, device.type, model_cfg.attention_head_dim)
    torch.manual_seed(cfg.seed)
    model = DartWorldModel(model_cfg).to(device)
    normalize_weights_(model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    dataset_info = {"dataset_id": cfg.dataset_id, "frame_size": list(cache.frame_size),
                    "action_space": action_space_to_dict(cache.action_space), "env_spec": cache.env_spec,
                    "observation_shape": list(cache.observation_space.shape),
                    # terminal frames in the training episodes: none, and the env never terminates
                    "training_terminations": _terminations(cache, train_eps),
                    # what the env clips predicted rewards to: the rewards of the training transitions
                    "reward_range": _reward_range(cache, train_eps),
                    # the env and every reader of the dataset resize its frames as training did
                    **({"resize": cfg.frame_size, "resized_from": list(cache.resized_from or ())}
                       if cfg.frame_size is not None else {})}
    # episode starts of the validation episodes, else of training episodes (none long enough: e.g. one short one)
    contexts = (_reset_contexts(cache, val_eps, cfg.num_contexts, cfg.context_length)
                or _reset_contexts(cache, train_eps, cfg.num_contexts, cfg.context_length))
    if not contexts and rank == 0:
        warnings.warn(f"no episode has context_length={cfg.context_length} frames: the checkpoint stores no reset "
                      "contexts, so its env needs the dataset on the machine", stacklevel=2)
    step, num_frames_seen, elapsed = 0, 0, 0.0
    extra: dict[str, Any] = {}  # carried over (resume, init-from): a termination classifier sees frames, not the model
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["model_config"] != model_cfg.to_dict():
            changed = ", ".join(f"{k} {ckpt['model_config'].get(k)!r} (now {v!r})"
                                for k, v in model_cfg.to_dict().items() if ckpt["model_config"].get(k) != v)
            raise UserError(f"{ckpt_path} was trained with another model config ({changed or 'other fields'}); "
                            f"use a new --out or the same preset/card (checkpoint: preset "
                            f"{ckpt['train_config'].get('preset')!r})")
        if ckpt["dataset"]["dataset_id"] != cfg.dataset_id:
            raise UserError(f"{ckpt_path} was trained on {ckpt['dataset']['dataset_id']!r}, not {cfg.dataset_id!r}")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, num_frames_seen, elapsed = ckpt["step"], ckpt["num_frames_seen"], ckpt.get("elapsed_s", 0.0)
        _set_rng_state(ckpt["rng"])
        extra = {k: ckpt[k] for k in ("termination_classifier",) if ckpt.get(k) is not None}
        if rank == 0:
            print(f"resuming {ckpt_path} at step {step}" + (f" (--init-from {cfg.init_from} only starts a new run)"
                                                           if cfg.init_from else ""))
    elif cfg.init_from:
        step, num_frames_seen, elapsed, extra, how = _init_from(cfg.init_from, model_cfg.to_dict(), model, ema,
                                                                opt, cache.env_spec)
        if rank == 0:
            print(f"initialised from {cfg.init_from} at step {step} ({num_frames_seen} supervised frames): {how}")
    elif resume and rank == 0:
        print(f"no checkpoint in {out_dir} to resume from: starting from scratch")
    if step >= cfg.steps and rank == 0:  # --steps counts from 0 across the runs a run continues (--init-from too)
        warnings.warn(f"the run starts at step {step}, which is already --steps {cfg.steps}: nothing to train "
                      f"(--steps is the total, counted from the first run; pass --steps {step + cfg.steps} for "
                      f"{cfg.steps} more steps)", stacklevel=2)
    net: Any = model  # the model, or its DDP / compiled wrapper
    if world > 1:
        _grads_in_param_layout(model)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if cfg.compile:
        net = torch.compile(net)

    def save() -> None:
        if rank != 0:
            return
        save_checkpoint(ckpt_path, {
            "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(), "dataset": dataset_info,
            "imagination": dict(cfg.imagination), "contexts": contexts,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "step": step, "num_frames_seen": num_frames_seen, "elapsed_s": elapsed, "rng": _rng_state(),
            "num_parameters": count_parameters(model), **extra,
        })

    monitor = Monitor(out_dir, cfg, total_steps=cfg.steps, start_step=step, enabled=rank == 0)
    if rank == 0:
        monitor.banner(model_cfg, count_parameters(model), train_windows, val_windows, device, world)

    # ---- the loop
    frame_shape = (model_cfg.image_channels, *model_cfg.frame_size)
    t_loop = time.monotonic()
    # SIGTERM (a scheduler's pre-emption, `kill`, a job's time limit) stops like Ctrl-C: checkpoint, then exit
    # (with several processes, all of them after the step in which any got it). Either waits while a step
    # commits (optimiser step to EMA update and log), so that a checkpoint never holds a step's weights under the
    # step before's number.
    stop = _Interrupts(deferred=world > 1)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = ({sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
                if on_main_thread else {})
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            lr = learning_rate(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            rng, gen = _step_rng(cfg.seed, step, device)
            batch = _batch_to_tensors(train_windows.sample(cfg.batch_size, rng), device)
            draw = draw_noise(cfg.batch_size, cfg.seq_len, frame_shape, cfg.loss, gen)
            totals = {"loss": 0.0, "diffusion": 0.0, "reward": 0.0, "termination": 0.0}
            supervised = 0
            for micro in range(cfg.grad_accum):
                lo = (rank * cfg.grad_accum + micro) * per_step
                rows = slice(lo, lo + per_step)
                sync = micro == cfg.grad_accum - 1 or world == 1
                ctx = net.no_sync() if not sync and hasattr(net, "no_sync") else _nullcontext()
                with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = dart_loss(net, batch["x0"][rows], batch["actions"][rows], batch["has_action"][rows],
                                    batch["rewards"][rows], batch["terminations"][rows], draw[rows], cfg.loss,
                                    model_cfg.sigma_data, attn_backend, window=model_cfg.context_window,
                                    valid=batch["valid"][rows],
                                    termination_weights=batch["termination_weights"][rows])
                    (out.total / cfg.grad_accum).backward()
                totals["loss"] += out.total.item() / cfg.grad_accum
                totals["diffusion"] += out.diffusion.item() * out.num_supervised  # a sum: normalised below
                totals["reward"] += out.reward.item() / cfg.grad_accum
                totals["termination"] += out.termination.item() / cfg.grad_accum
                supervised += out.num_supervised
            if world > 1:  # the logged losses and counts are the whole batch's, as one process computes them
                summed = torch.tensor([*totals.values(), supervised], dtype=torch.float64, device=device)
                dist.all_reduce(summed)
                totals = {k: v if k == "diffusion" else v / world for k, v in zip(totals, summed[:-1].tolist())}
                supervised = round(float(summed[-1]))
            # the mean error per supervised frame of the whole batch (a mean of the parts' means was not, where
            # padding gives the parts different numbers of supervised frames)
            totals["diffusion"] /= max(supervised, 1)
            for p in model.parameters():  # NaN-safe, as EDM2
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=0, neginf=0, out=p.grad)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            stop.hold()
            opt.step()
            opt.zero_grad(set_to_none=True)
            normalize_weights_(model)  # forced weight normalisation (EDM2 Sec. 2.3)
            step += 1
            num_frames_seen += supervised
            halflife = min(cfg.ema_halflife_steps, max(step * cfg.ema_rampup, 1.0))
            beta = 0.5 ** (1.0 / halflife)
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm.detach(), 1 - beta)
            dt = time.perf_counter() - t0
            elapsed += dt
            if rank == 0:
                monitor.log(step, totals, lr=lr, grad_norm=float(grad_norm), dt=dt,
                            supervised=supervised, num_frames_seen=num_frames_seen)
            stop.release()  # a signal that came meanwhile interrupts here
            # not held: a SIGTERM during a long validation saves at once (a scheduler kills ~30 s later), at the
            # price of that step's validation row, which a resumed run does not repeat (one process; several stop
            # after the step's validation and checkpoint, where they agree)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                if rank == 0:
                    monitor.evaluate(step, ema, val_windows or train_windows, cfg, device, attn_backend,
                                     held_out=val_windows is not None)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save()
            out_of_time, signum = _agree_to_stop(t_loop, cfg.max_minutes, stop, device, world, rank)
            if signum:  # every rank, after the same step: the checkpoint is saved below
                raise Interrupted(signum)
            if out_of_time:
                if step % cfg.checkpoint_every and step != cfg.steps:
                    save()
                if rank == 0 and step % cfg.eval_every and step != cfg.steps:  # validation + dashboard at the stop
                    monitor.evaluate(step, ema, val_windows or train_windows, cfg, device, attn_backend,
                                     held_out=val_windows is not None)
                if rank == 0:
                    print(f"stopped at step {step} after --max-minutes {cfg.max_minutes:g}: checkpoint saved to "
                          f"{ckpt_path} (continue with --resume)")
                break
        # still under the deferring handlers: a signal to one rank during this save waits for the barrier
        if not ckpt_path.exists():  # nothing was left to train (e.g. --init-from a run already at --steps)
            save()
        _wait_for_rank_0(world)
    except KeyboardInterrupt:
        save()
        _wait_for_rank_0(world)
        if rank == 0:
            print(f"\ninterrupted at step {step}: checkpoint saved to {ckpt_path} (resume with --resume)")
        raise
    finally:
        monitor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return ckpt_path


def _wait_for_rank_0(world: int) -> None:
    """With several processes, the others wait here until rank 0 has saved: a rank that exited first (with a
    signal's exit status) made torchrun stop rank 0, and kill it 30 s later, in the middle of a long save."""
    if world > 1:
        dist.barrier()


# Settings that decide what a run computes: a resumed run keeps them (the rest, e.g. --steps, --max-minutes, the
# device, logging, may change between the parts of a run).
RUN_SETTINGS = ("batch_size", "grad_accum", "seq_len", "lr", "warmup_steps", "lr_decay_steps", "betas", "grad_clip",
                "ema_halflife_steps", "ema_rampup", "loss", "val_fraction", "pad_episode_ends", "terminal_fraction",
                "seed")


def _check_resumable(ckpt_path: Path, ckpt: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to resume a run that is not a training state, or with other settings than it ran with (it would
    not continue the run: a --seed even moves episodes between training and validation). The loss's class
    weight the run computed from its data is taken over."""
    missing = [k for k in ("model", "ema", "optimizer", "rng") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise UserError(f"{ckpt_path} is not a training state (no {', '.join(missing)}; an export?): it cannot be "
                        f"resumed; start a new run from its weights with --init-from {ckpt_path}")
    stored = ckpt.get("dataset", {}).get("resize")
    if stored != cfg.frame_size:
        def said(n: int | None) -> str:
            return f"--frame-size {n}" if n else "no --frame-size"
        raise UserError(f"{ckpt_path} was trained with {said(stored)}: resume with the same, not "
                        f"{said(cfg.frame_size)}")
    try:  # the run's settings, today's defaults for those it predates
        run = TrainConfig.from_dict({k: v for k, v in ckpt.get("train_config", {}).items()
                                     if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    except (UserError, TypeError):
        return  # an unreadable config: nothing to compare against
    if cfg.loss.termination_pos_weight is None:  # computed from the data by the run's first part: the same
        cfg.loss.termination_pos_weight = run.loss.termination_pos_weight
    differ = []
    for name in RUN_SETTINGS:
        if name == "loss":
            differ += [f"loss.{f.name} {getattr(run.loss, f.name)!r} (now {getattr(cfg.loss, f.name)!r})"
                       for f in dataclasses.fields(LossConfig)
                       if getattr(run.loss, f.name) != getattr(cfg.loss, f.name)]
        elif getattr(run, name) != getattr(cfg, name):
            differ.append(f"{name} {getattr(run, name)!r} (now {getattr(cfg, name)!r})")
    if differ:
        raise UserError(f"{ckpt_path} ran with {', '.join(differ)}: --resume continues a run with its own "
                        "settings; give the same (flags or card), or start a new run from it with --init-from")


def _terminations(cache: FrameCache, episodes: np.ndarray) -> int:
    """The number of terminal frames in ``episodes``."""
    terminal = np.asarray(cache.terminations)
    return int(sum(terminal[s: s + n].sum() for s, n in zip(cache.episode_starts[episodes],
                                                           cache.episode_lengths[episodes])))


def _reward_range(cache: FrameCache, episodes: np.ndarray) -> list[float] | None:
    """[min, max] of the rewards of the transitions in ``episodes`` (an episode's first frame has none)."""
    rewards = np.concatenate([np.asarray(cache.rewards[s + 1: s + n]) for s, n in
                              zip(cache.episode_starts[episodes], cache.episode_lengths[episodes])] or [np.zeros(0)])
    return [float(rewards.min()), float(rewards.max())] if rewards.size else None


def _grads_in_param_layout(model: torch.nn.Module) -> None:
    """Give each gradient its parameter's strides. On CPU a 1x1 convolution's weight gradient comes back
    channels-last: the same memory order as the (O, I, 1, 1) weight, but other strides on the size-1 dims, which
    makes DDP warn "Grad strides do not match bucket view strides" at the first step."""
    def hook(strides: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda g: g if g.stride() == strides else g.clone(memory_format=torch.contiguous_format)

    for p in model.parameters():
        if p.requires_grad and p.is_contiguous():
            p.register_hook(hook(p.stride()))


class _Interrupts:
    """SIGINT / SIGTERM as KeyboardInterrupt, held back between :meth:`hold` and :meth:`release`. ``deferred``
    (several processes): always held back, in ``pending``, for the ranks to agree on after the step
    (:func:`_agree_to_stop`): a rank that stopped alone left the others failing in their next collective,
    without a checkpoint."""

    def __init__(self, deferred: bool = False) -> None:
        self.holding = False
        self.deferred = deferred
        self.pending: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.holding or self.deferred:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        if self.pending is not None and not self.deferred:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)


def _agree_to_stop(t_start: float, max_minutes: float | None, stop: _Interrupts, device: torch.device, world: int,
                   rank: int) -> tuple[bool, int | None]:
    """After a step: whether the wall-clock budget (``max_minutes``) is spent, and the signal to stop on, if any.
    One process: its clock, and no signal (its handler raises at once). Several: one collective in which rank 0's
    clock decides the budget and a signal that reached any rank (a pre-emption notice that reached one node)
    stops them all, so that every rank stops after the same step and the checkpoint is saved."""
    out = bool(max_minutes) and time.monotonic() - t_start > (max_minutes or 0) * 60
    if world == 1:
        return out, None
    flags = torch.tensor([float(out and rank == 0), float(stop.pending or 0)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0].item()), int(flags[1].item()) or None


def _init_from(path: str, model_cfg: dict[str, Any], model: torch.nn.Module, ema: torch.nn.Module,
               opt: torch.optim.Optimizer, env_spec: dict[str, Any] | None = None
               ) -> tuple[int, int, float, dict[str, Any], str]:
    """Load another run's weights, EMA, optimiser and counters into a new run whose model config may differ
    in fields that hold no parameters (e.g. the context window: a short-memory baseline that shares the
    first part of its training budget with the long-memory model). Also returns what the new run carries
    over: the termination classifier, when the new run's frames come from the same pixel env (``env_spec``),
    and what it loaded, in words.

    ``path`` may also be an inference export or a shipped model's name (``"cartpole"``): it has EMA weights
    only, so both the weights and the EMA start from them (in fp32) and the optimiser starts fresh."""
    from diffusion_world.checkpoint import resolve_world_model

    ckpt = load_checkpoint(resolve_world_model(path))
    weights_only = "optimizer" not in ckpt
    if weights_only and not isinstance(ckpt.get("ema"), dict):
        raise UserError(f"{path} holds neither a training state nor EMA weights")
    old_k, new_k = ckpt["model_config"].get("input_temporal_kernel", 1), model_cfg.get("input_temporal_kernel", 1)
    if new_k < old_k:
        raise UserError(f"{path} has input_temporal_kernel {old_k}: a run from it can grow it, not shrink it "
                        f"to {new_k}")

    def adapt(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return grow_input_temporal_kernel(weights, old_k, new_k) if new_k != old_k else weights

    fresh_optimizer = weights_only or new_k != old_k  # Adam's moments do not fit a grown weight
    try:
        if weights_only:
            ema_fp32 = {k: v.float() if v.is_floating_point() else v for k, v in adapt(ckpt["ema"]).items()}
            model.load_state_dict(ema_fp32)
            ema.load_state_dict(ema_fp32)
        else:
            model.load_state_dict(adapt(ckpt["model"]))
            ema.load_state_dict(adapt(ckpt["ema"]))
    except RuntimeError as e:
        from diffusion_world.model.config import ModelConfig

        try:  # the stored config with today's defaults for fields it predates
            old_cfg = ModelConfig.from_dict(ckpt["model_config"]).to_dict()
        except (UserError, TypeError):
            old_cfg = ckpt["model_config"]
        changed = ", ".join(f"{k} {old_cfg.get(k)!r} there, {v!r} here" for k, v in model_cfg.items()
                            if old_cfg.get(k) != v)
        lines = [ln.strip() for ln in str(e).splitlines()]
        first = next((ln for ln in lines if ln.startswith("size mismatch")), lines[0].rstrip(":"))
        preset = (ckpt.get("train_config") or {}).get("preset")
        hint = f"; it was trained with --preset {preset}" if preset else ""
        raise UserError(f"{path} does not fit this model ({changed or 'same config'}): {first}{hint}") from e
    if not fresh_optimizer:
        opt.load_state_dict(ckpt["optimizer"])
    # the same env, whether or not its spec records the time limit and where to make it (recorded since 2026-12-08)
    where = ("max_episode_steps", "entry_point", "registered_kwargs")
    bare = lambda spec: {k: v for k, v in (spec or {}).items() if k not in where}  # noqa: E731
    same_env = env_spec is not None and bare(ckpt.get("dataset", {}).get("env_spec")) == bare(env_spec)
    extra = {"termination_classifier": ckpt["termination_classifier"]} if (
        same_env and ckpt.get("termination_classifier") is not None) else {}
    how = ("the EMA weights of an export, a fresh optimiser" if weights_only else
           f"its weights and EMA, a fresh optimiser (input_temporal_kernel {old_k} -> {new_k})" if fresh_optimizer
           else "its weights, EMA and optimiser")
    return ckpt["step"], ckpt["num_frames_seen"], ckpt.get("elapsed_s", 0.0), extra, how


def _warn_unscaled_box_actions(space: dict[str, Any], dataset_id: str) -> None:
    """Box action dimensions without usable bounds enter the model as they are (see :func:`box_action_scaling`):
    the magnitude-preserving embedding expects values of about unit size."""
    if space["type"] != "box":
        return
    unscaled = [i for i, (lo, hi) in enumerate(zip(space["low"], space["high"]))
                if lo is None or hi is None or (hi - lo) / 2 > MAX_ACTION_HALF_RANGE]
    if unscaled:
        warnings.warn(f"the Box actions of {dataset_id!r} have no usable bounds in dimension(s) {unscaled} "
                      f"(infinite, or wider than ±{MAX_ACTION_HALF_RANGE:g}): they enter the model unscaled, and "
                      "values far from [-1, 1] swamp its conditioning; collect through a wrapper that bounds them "
                      "(e.g. gymnasium.wrappers.RescaleAction) if they can be large", stacklevel=3)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _warn_env_mismatch(cfg: TrainConfig, cache: FrameCache, card: str | os.PathLike | None) -> None:
    """Warn where the card's ``[env]`` is not the env the dataset was recorded in (its settings, e.g. its
    ``[imagination] horizon``, were chosen for another env), and where the imagined env's horizon outlasts the
    time limit of the dataset's env."""
    from diffusion_world.data.pixel_env import recorded_time_limit

    if card is not None:
        from diffusion_world.cards import card_env_differences, load_card

        differences = card_env_differences(load_card(card).env, cache.env_spec)
        if differences:
            warnings.warn(f"card {str(card)!r} is not for the env that {cfg.dataset_id!r} was recorded in: "
                          f"{'; '.join(differences)}. Its [model], [train] and [imagination] settings were chosen "
                          "for its own env (e.g. the imagined env's horizon); give the card of this dataset's env, "
                          "or none", stacklevel=3)
    horizon, limit = cfg.imagination.get("horizon"), recorded_time_limit(cache.env_spec)
    if horizon is not None and limit is not None and horizon > limit:
        warnings.warn(f"the imagined env's horizon, {horizon} steps ([imagination] horizon), is longer than the "
                      f"time limit of {cfg.dataset_id!r}'s env, {limit} steps: imagined episodes would outlast every "
                      "real one", stacklevel=3)


def train_from_card(card_path: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
                    **overrides: Any) -> Path:
    """Train with a card's ``[collect] dataset_id``, ``[model]``, ``[train]`` and ``[imagination]`` settings;
    ``overrides`` (TrainConfig fields) win over the card."""
    cfg = config_from_card(card_path, out_dir=str(out_dir), **overrides)
    return train(cfg, resume=resume, card=card_path)


# What a resumed run takes from its checkpoint where the card and flags do not say (not where or how it runs: the
# device, precision, compilation, attention backend, time budget and output may differ between its parts)
INHERITED_ON_RESUME = ("dataset_id", "frame_size", "preset", "model", "steps", *RUN_SETTINGS, "log_every",
                       "eval_every", "checkpoint_every", "num_val_windows", "num_contexts", "context_length",
                       "imagination")


def resume_settings(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings of the run in ``out_dir`` that ``--resume`` continues with unless told otherwise (see
    ``INHERITED_ON_RESUME``); empty when there is no run there or its checkpoint records none."""
    ckpt_path = Path(out_dir) / "checkpoint.pt"
    if not ckpt_path.exists():
        return {}
    run = load_checkpoint(ckpt_path).get("train_config")
    return {k: v for k, v in run.items() if k in INHERITED_ON_RESUME} if isinstance(run, dict) else {}


def config_from_card(card_path: str | os.PathLike | None, model_overrides: dict[str, Any] | None = None,
                     base: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Build a TrainConfig: defaults < ``base`` (e.g. :func:`resume_settings`) < card < overrides (``None``
    overrides are ignored); ``model_overrides`` update single fields of the card's ``[model]`` section, and the
    card's ``[model]``, ``[imagination]`` and loss settings update those of ``base`` field by field."""
    d: dict[str, Any] = copy.deepcopy(base) if base else {}
    if card_path is not None:
        from diffusion_world.cards import load_card

        card = load_card(card_path)
        d["dataset_id"] = card.collect.get("dataset_id", "")
        model = dict(card.model)
        if "preset" in model:
            d["preset"] = model.pop("preset")
        d["model"] = {**d.get("model", {}), **model}
        model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
        if set(model) - model_keys:
            raise UserError(f"card {str(card_path)!r} [model]: unknown key(s) "
                            f"{', '.join(sorted(set(model) - model_keys))} (allowed: preset, "
                            f"{', '.join(sorted(model_keys))})")
        train_section = dict(card.train)
        elsewhere = {"dataset_id": "[collect] dataset_id", "preset": "[model] preset", "model": "[model]",
                     "imagination": "[imagination]", "loss": "the loss keys directly in [train]",
                     "out_dir": "train --out", "progress": "train --quiet"}
        misplaced = [f"{k} (give {elsewhere[k]})" for k in train_section if k in elsewhere]
        if misplaced:
            raise UserError(f"card {str(card_path)!r} [train]: {', '.join(misplaced)} do not belong here")
        loss_keys = {f.name for f in dataclasses.fields(LossConfig)}
        train_keys = {f.name for f in dataclasses.fields(TrainConfig)} | loss_keys
        if set(train_section) - train_keys:
            raise UserError(f"card {str(card_path)!r} [train]: unknown key(s) "
                            f"{', '.join(sorted(set(train_section) - train_keys))} "
                            f"(allowed: {', '.join(sorted(train_keys - set(elsewhere)))})")
        loss = {k: train_section.pop(k) for k in list(train_section) if k in loss_keys}
        d.update(train_section)
        if loss:
            d["loss"] = {**d.get("loss", {}), **loss}
        d["imagination"] = {**d.get("imagination", {}), **card.imagination}
    for k, v in overrides.items():
        if v is None:
            continue
        if k in {f.name for f in dataclasses.fields(LossConfig)}:
            d.setdefault("loss", {})[k] = v
        else:
            d[k] = v
    if model_overrides:
        d["model"] = {**d.get("model", {}), **model_overrides}
    return TrainConfig.from_dict(d)
