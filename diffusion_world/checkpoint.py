"""Checkpoints: one ``.pt`` file holding everything needed to resume training or rebuild the env.

Written atomically (temporary file + rename) and read with ``torch.load(..., weights_only=True)``: a checkpoint
is plain tensors, numbers, strings, lists and dicts, never pickled code.

Keys: ``format``, ``format_version``, ``package_version``, ``model_config`` (dict), ``train_config`` (dict),
``dataset`` (id, frame size, action space, pixel-env spec), ``imagination`` (env defaults from the card),
``contexts`` (a few real episode starts so the env works without the dataset), ``model`` / ``ema`` (state
dicts), ``optimizer``, ``step``, ``num_frames_seen``, ``rng``; optionally ``termination_classifier`` (config,
state dict and fit report of a :class:`~diffusion_world.model.termination.TerminationClassifier`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from diffusion_world.cards import IMAGINATION_KEYS
from diffusion_world.diffusion.sampler import SamplerConfig
from diffusion_world.errors import UserError
from diffusion_world.files import atomic_file, held_lock_file
from diffusion_world.model.config import ModelConfig
from diffusion_world.model.dart import DartWorldModel
from diffusion_world.model.termination import TerminationClassifier, TerminationClassifierConfig

FORMAT = "diffusion_world.checkpoint"
FORMAT_VERSION = 1
SHIPPED = ("cartpole",)  # names of world models shipped inside the package (diffusion_world/shipped/NAME.pt)


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` to ``path`` atomically: a crash leaves the previous file (or none), never half a file."""
    from diffusion_world import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__, **ckpt}
    try:
        with atomic_file(path, sync=True) as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as e:  # a full disk: torch's zip writer says "unexpected pos"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        full = shutil.disk_usage(path.parent).free < 2 * sum(t.numel() * t.element_size() for t in _tensors(ckpt))
        raise UserError(f"cannot write the checkpoint {path}: {'no space left on the device; ' if full else ''}"
                        f"{reason} ({'the previous one is intact' if path.exists() else 'nothing was written'})"
                        ) from e


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)


def resolve_world_model(name_or_path: str | os.PathLike) -> Path:
    """A shipped model name (e.g. ``"cartpole"``) or a checkpoint path -> the checkpoint file."""
    s = str(name_or_path)
    if s in SHIPPED:
        p = Path(str(resources.files("diffusion_world") / "shipped" / f"{s}.pt"))
        if not p.exists():
            raise UserError(f"shipped world model {s!r} is missing from this installation ({p})")
        return p
    p = Path(s).expanduser()
    if not p.exists():
        hint = f" (shipped models: {', '.join(SHIPPED)})" if SHIPPED else ""
        raise UserError(f"world model {s!r} not found: not a shipped name nor an existing file{hint}")
    if p.is_dir():
        for cand in (p / "checkpoint.pt", p / "latest.pt"):
            if cand.exists():
                return cand
        raise UserError(f"{p} is a directory without checkpoint.pt")
    return p


def world_model_fingerprint(name_or_path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of a world model's checkpoint file: which weights (and termination
    classifier) a result came from, where the name and training step do not tell (e.g. the same step with and
    without a classifier)."""
    digest = hashlib.sha256()
    with open(resolve_world_model(name_or_path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    torch's zip format stores a CRC-32 of every tensor but ``torch.load`` does not check them, so a checkpoint
    damaged on disk or in transfer (a flipped bit) would load as slightly wrong weights: the CRCs are checked
    first (about 10 ms for the shipped model)."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # a text file, a card: torch's own errors mislead
        raise UserError(f"{path} is not a readable diffusion_world checkpoint (not a torch zip file; a checkpoint "
                        "is the checkpoint.pt a training run writes, or a shipped name such as 'cartpole')")
    _check_zip_crcs(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or pickled objects we refuse to load
        raise UserError(f"{path} is not a readable diffusion_world checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a diffusion_world checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format version {ckpt.get('format_version')}, "
                        f"this diffusion_world reads version {FORMAT_VERSION}")
    return ckpt


def _check_zip_crcs(path: Path) -> None:
    """Raise a UserError naming the first damaged entry of a zip checkpoint; other files are left to torch."""
    try:
        if not zipfile.is_zipfile(path):
            return  # not a zip: load_checkpoint says so
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except OSError:
        return  # unreadable: torch.load gives the error
    except (zipfile.BadZipFile, EOFError) as e:
        bad = f"({e})"
    if bad is not None:
        raise UserError(f"{path} is damaged: its entry {bad!r} does not match its CRC-32 checksum (the file changed "
                        "after it was written: copy or download it again, or use another checkpoint)")


@dataclass
class WorldModel:
    """A loaded world model: the denoiser (EMA weights, eval mode) and what the env needs around it."""

    model: DartWorldModel
    config: ModelConfig
    dataset: dict[str, Any]  # dataset_id, frame_size, action_space, env_spec, training_terminations, reward_range
    imagination: dict[str, Any] = field(default_factory=dict)  # card defaults: sampler_steps, horizon, ...
    contexts: dict[str, torch.Tensor] = field(default_factory=dict)  # frames (N, L, H, W, 3) uint8, actions, ...
    path: str = ""
    step: int = 0
    termination_pos_weight: float = 1.0  # the loss's weight on positive (terminal) frames during training
    termination_classifier: TerminationClassifier | None = None  # scores frames; replaces the head when present
    # the clean stream's context noise in training (LossConfig sigma_ctx_min / max): the noise levels at which
    # inference may put frames into the caches; None where the checkpoint does not record it
    context_noise_range: tuple[float, float] | None = None

    def termination_probability(self, logits: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """p(termination) of generated frames. With a :attr:`termination_classifier`, the classifier's on
        ``frames`` ((..., C, H, W) in [-1, 1], the frames the logits came with; required then). Otherwise the
        head's ``logits``, calibrated: training weights terminal frames by ``termination_pos_weight`` (w, to
        balance rare terminations), which multiplies the odds the head predicts by w; dividing them back out
        gives the probability the data implies."""
        if self.termination_classifier is not None:
            if frames is None:
                raise ValueError("this world model scores terminations with its classifier: pass the frames")
            device = next(self.termination_classifier.parameters()).device
            return torch.sigmoid(self.termination_classifier(frames.to(device)).float()).to(frames.device)
        return self.head_termination_probability(logits)

    def clip_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """Predicted rewards (symexp of the head) clipped to the range of the training data's rewards: the head
        regresses symlog(reward), and symexp turns an error of a barely trained model into rewards no real step
        pays (e.g. -5 per step in Pong, whose rewards are -1, 0 and 1). Checkpoints from before the range was
        recorded are not clipped."""
        lo_hi = self.dataset.get("reward_range")
        return rewards if lo_hi is None else rewards.clamp(float(lo_hi[0]), float(lo_hi[1]))

    def head_termination_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's own termination head, calibrated (see :meth:`termination_probability`); 0 where its
        training episodes held no termination (the head had nothing to learn to fire on, and an undertrained one
        says about 0.5 everywhere). Checkpoints from before that count was recorded use the head."""
        if self.dataset.get("training_terminations") == 0:
            return torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        return torch.sigmoid(logits.float() - math.log(self.termination_pos_weight))

    def sampler_config(self, sampler_steps: int | None = None,
                       history_guidance: float | None = None) -> SamplerConfig:
        """The sampler its imagined envs use: the arguments given, else the :attr:`imagination` defaults
        (``sampler_steps``, ``sampler_order``, ``history_guidance``, ``history_sigma``), else the sampler's own.
        Validated."""
        imagination = self.imagination
        base = SamplerConfig()
        K = sampler_steps if sampler_steps is not None else imagination.get("sampler_steps", base.num_steps)
        if isinstance(K, bool) or not hasattr(K, "__index__") or K < 1:  # numpy integers too
            raise UserError(f"sampler_steps must be an integer >= 1, got {K!r}")
        cfg = SamplerConfig(num_steps=int(K), order=int(imagination.get("sampler_order", base.order)),
                            history_guidance=(history_guidance if history_guidance is not None
                                              else imagination.get("history_guidance", base.history_guidance)),
                            history_sigma=float(imagination.get("history_sigma", base.history_sigma)))
        cfg.validate()
        cfg.history_guidance = float(cfg.history_guidance)  # a numpy float given as a kwarg
        return cfg


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a clear :class:`UserError` when it is malformed or names CUDA and torch
    sees no CUDA device (rather than torch's assertion from deep inside the first ``.to``)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"invalid device {device!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r}, but torch sees no CUDA device (torch {torch.__version__})")
    return device


def load_world_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                     use_ema: bool = True) -> WorldModel:
    """Load a shipped model name or a checkpoint path for inference.

    Example::

        wm = load_world_model("runs/cartpole/checkpoint.pt")
        state = wm.model.new_state(batch_size=1)
    """
    device = check_device(device)
    path = resolve_world_model(name_or_path)
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        model = DartWorldModel(cfg)
        weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
        if weights is None:
            raise KeyError("no weights")
        model.load_state_dict({k: v.float() for k, v in weights.items()})
    except (KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"{path}: checkpoint does not match this version's model ({e})") from e
    model.to(device).eval().requires_grad_(False)
    classifier = None
    if ckpt.get("termination_classifier") is not None:
        try:
            tc = ckpt["termination_classifier"]
            classifier = TerminationClassifier(TerminationClassifierConfig.from_dict(tc["config"]))
            classifier.load_state_dict({k: v.float() for k, v in tc["state_dict"].items()})
        except (KeyError, RuntimeError, TypeError) as e:
            raise UserError(f"{path}: termination classifier does not match this version's ({e})") from e
        classifier.to(device).eval().requires_grad_(False)
    imagination = dict(ckpt.get("imagination", {}))
    unknown = sorted(set(imagination) - set(IMAGINATION_KEYS))
    if unknown:  # a typo stored before cards were checked: say it is not used, but load the model
        warnings.warn(f"{path}: its imagination defaults hold unknown key(s) {', '.join(unknown)}, which are "
                      f"ignored (known: {', '.join(IMAGINATION_KEYS)})", UserWarning, stacklevel=2)
    return WorldModel(model=model, config=cfg, dataset=dict(ckpt.get("dataset", {})),
                      imagination=imagination, contexts=dict(ckpt.get("contexts", {})),
                      path=str(path), step=int(ckpt.get("step", 0)),
                      termination_pos_weight=float(ckpt.get("train_config", {}).get("loss", {})
                                                   .get("termination_pos_weight") or 1.0),
                      termination_classifier=classifier,
                      context_noise_range=_context_noise_range(ckpt.get("train_config", {}).get("loss", {})))


def _context_noise_range(loss: dict[str, Any]) -> tuple[float, float] | None:
    lo, hi = loss.get("sigma_ctx_min"), loss.get("sigma_ctx_max")
    return (float(lo), float(hi)) if isinstance(lo, int | float) and isinstance(hi, int | float) else None


def export_for_inference(src: str | os.PathLike, dst: str | os.PathLike, notes: dict[str, Any] | None = None,
                         termination_classifier: bool = True) -> Path:
    """Write a slim copy of a training checkpoint for shipping: EMA weights in fp16, the configs, dataset spec,
    imagination defaults, reset contexts and the termination classifier if any (fp16; with
    ``termination_classifier=False`` it is left out and the model's own head scores terminations); no optimiser
    or RNG state. ``notes`` (command, hardware, ...) are stored under ``"provenance"``."""
    ckpt = load_checkpoint(src)
    keep = ("model_config", "train_config", "dataset", "imagination", "contexts", "step", "num_frames_seen",
            "elapsed_s", "num_parameters")
    slim: dict[str, Any] = {k: ckpt[k] for k in keep if k in ckpt}
    slim["ema"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    slim["model"] = None
    if termination_classifier and ckpt.get("termination_classifier") is not None:
        tc = ckpt["termination_classifier"]
        slim["termination_classifier"] = {**tc, "state_dict": {k: v.half() if v.is_floating_point() else v
                                                               for k, v in tc["state_dict"].items()}}
    slim["provenance"] = dict(notes or {})
    save_checkpoint(dst, slim)
    return Path(dst)


RUN_LOCK = ".train.lock"  # held by the `train` process writing a run directory


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, holder: str) -> Iterator[None]:
    """Hold ``directory``'s run lock while writing its checkpoint (``holder`` names the writer, for the message):
    a second `train` into the same ``--out``, or `fit-termination` in place on a checkpoint that a `train` is
    still writing, is refused instead of each silently overwriting the other's checkpoint. An OS lock (flock):
    a killed holder releases it. Where the OS or the filesystem has none, nothing is locked."""
    path = Path(directory) / RUN_LOCK
    handle = held_lock_file(path)
    if handle is None:
        other = path.read_text().strip() if path.exists() else ""
        raise UserError(f"{directory} is being written by {other or 'another process'}: wait for it to finish or "
                        "stop it (two writers would overwrite each other's checkpoint)")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{holder} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # before the unlock: a waiting writer then makes a fresh file
                path.unlink(missing_ok=True)
    finally:
        handle.close()
