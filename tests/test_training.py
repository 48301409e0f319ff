"""Training: overfitting, exact resume, DDP == one process, interrupts, checkpoints, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from diffusion_world.checkpoint import load_checkpoint, load_world_model, save_checkpoint
from diffusion_world.cli import main
from diffusion_world.errors import UserError
from diffusion_world.training.train import TrainConfig, config_from_card, train


def tiny_cfg(dataset_id: str, out: Path, **kw) -> TrainConfig:
    base = dict(dataset_id=dataset_id, out_dir=str(out), preset="tiny", steps=4, batch_size=4, seq_len=6,
                lr=1e-2, warmup_steps=2, eval_every=1000, checkpoint_every=1000, log_every=1, progress=False,
                num_val_windows=2, precision="fp32")  # exactness tests must not depend on the CPU's bf16 support
    base.update(kw)
    return TrainConfig(**base)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_overfits(tiny_dataset_id: str, tmp_path: Path) -> None:
    """The EDM-weighted denoising error falls by >= 5x within a short budget."""
    cfg = tiny_cfg(tiny_dataset_id, tmp_path, steps=160, warmup_steps=10, eval_every=160)
    train(cfg)
    diff = [r["diffusion"] for r in metrics(tmp_path) if "diffusion" in r]
    first, last = sum(diff[:5]) / 5, sum(diff[-20:]) / 20
    assert first / last >= 5, (first, last)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert any("val_loss" in r for r in metrics(tmp_path))


def test_resume_is_exact(tiny_dataset_id: str, tmp_path: Path) -> None:
    """N steps in one go == N/2 steps, then --resume for the other N/2: identical weights and optimiser (with
    oversampled terminal windows, whose importance weights enter the reward and termination terms)."""
    train(tiny_cfg(tiny_dataset_id, tmp_path / "once", steps=4, terminal_fraction=0.5))
    train(tiny_cfg(tiny_dataset_id, tmp_path / "twice", steps=2, terminal_fraction=0.5))
    train(tiny_cfg(tiny_dataset_id, tmp_path / "twice", steps=4, terminal_fraction=0.5), resume=True)
    a = load_checkpoint(tmp_path / "once" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "twice" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert [r["step"] for r in metrics(tmp_path / "twice") if "loss" in r] == [1, 2, 3, 4]
    # and training does change the weights (the comparison is not between two untouched inits)
    train(tiny_cfg(tiny_dataset_id, tmp_path / "other", steps=4, seed=1))
    c = load_checkpoint(tmp_path / "other" / "checkpoint.pt")
    assert not torch.equal(c["model"]["conv_out.weight"], a["model"]["conv_out.weight"])
    # and a second run with the same seed trains the same weights (as the README says)
    train(tiny_cfg(tiny_dataset_id, tmp_path / "again", steps=4, terminal_fraction=0.5))
    d = load_checkpoint(tmp_path / "again" / "checkpoint.pt")
    assert all(torch.equal(t, d[key][name]) for key in ("model", "ema") for name, t in a[key].items())


@pytest.mark.slow
def test_compiled_training_equals_eager(tiny_dataset_id: str, tmp_path: Path) -> None:
    """``--compile`` on CPU (inductor) trains what eager mode trains: the same losses step by step and weights
    that differ only by float rounding (fused kernels sum in another order)."""
    eager = train(tiny_cfg(tiny_dataset_id, tmp_path / "eager", steps=3))
    compiled = train(tiny_cfg(tiny_dataset_id, tmp_path / "compiled", steps=3, compile=True))
    le = [r["loss"] for r in metrics(tmp_path / "eager") if "loss" in r]
    lc = [r["loss"] for r in metrics(tmp_path / "compiled") if "loss" in r]
    assert len(le) == len(lc) == 3
    assert max(abs(a - b) for a, b in zip(le, lc)) < 1e-4, (le, lc)
    a, b = load_checkpoint(eager)["model"], load_checkpoint(compiled)["model"]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-3


def test_ddp_two_processes_equal_one_process(tiny_dataset_id: str, tmp_path: Path) -> None:
    """torchrun with 2 gloo processes == 1 process with the combined batch (tolerance: float reduction order)."""
    args = ["train", "--dataset-id", tiny_dataset_id, "--preset", "tiny", "--steps", "3", "--batch-size", "4",
            "--seq-len", "6", "--quiet", "--device", "cpu", "--eval-every", "1000",
            "--terminal-fraction", "0.5"]  # importance weights in the reward and termination terms, per window
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "diffusion_world.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "diffusion_world.cli", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Grad strides do not match" not in two.stderr  # a 1x1 conv's gradient is given its weight's strides
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["model"]
    for name, t in a.items():
        torch.testing.assert_close(b[name], t, atol=2e-5, rtol=1e-4, msg=f"{name} differs between 1 and 2 ranks")
    # the logged losses and counts are the whole batch's (they were rank 0's half, and its count times 2)
    rows_one, rows_two = ([r for r in metrics(tmp_path / d) if "loss" in r] for d in ("one", "two"))
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        assert r1["num_frames_seen"] == r2["num_frames_seen"]
        for key in ("loss", "diffusion", "reward", "termination"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), key


def test_resume_keeps_the_runs_settings(tiny_dataset_id: str, tmp_path: Path, capsys) -> None:
    """--resume continues a run only with the settings it ran with (they used to be replaced silently by the
    card's or the defaults: another batch, lr, or a --seed that moves episodes into training); an export cannot
    be resumed; a changed model field is named."""
    from diffusion_world.checkpoint import save_checkpoint

    train(tiny_cfg(tiny_dataset_id, tmp_path, steps=1, batch_size=2, lr=1e-3))
    with pytest.raises(UserError, match=r"ran with batch_size 2 \(now 4\), lr 0.001 \(now 0.01\): --resume"):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=2), resume=True)
    with pytest.raises(UserError, match=r"ran with seed 0 \(now 3\)"):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=2, batch_size=2, lr=1e-3, seed=3), resume=True)
    with pytest.raises(UserError, match=r"loss.supervision 'dart' \(now 'last_frame'\)"):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=2, batch_size=2, lr=1e-3,
                       loss={"supervision": "last_frame"}), resume=True)
    with pytest.raises(UserError, match=r"another model config \(context_window 16 \(now 4\)\)"):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=2, batch_size=2, lr=1e-3, model={"context_window": 4}),
              resume=True)
    # what may change between the parts of a run: the steps, the time budget, logging
    capsys.readouterr()
    train(tiny_cfg(tiny_dataset_id, tmp_path, steps=2, batch_size=2, lr=1e-3, eval_every=7, init_from="x.pt"),
          resume=True)
    assert "resuming " in capsys.readouterr().out and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    export = {k: v for k, v in load_checkpoint(tmp_path / "checkpoint.pt").items() if k not in ("model", "optimizer")}
    save_checkpoint(tmp_path / "export" / "checkpoint.pt", export)
    with pytest.raises(UserError, match="is not a training state .*start a new run from its weights with --init-from"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "export", steps=3, batch_size=2, lr=1e-3), resume=True)


def test_cli_resume_takes_the_runs_settings_from_its_checkpoint(tiny_dataset_id: str, tmp_path: Path,
                                                                 capsys) -> None:
    """`train --out RUN --resume` needs no card or flags again (it needed the dataset id and preset, and every
    run setting given as a flag, else refused them as changed); a card or flag still overrides, and a changed
    run setting is still refused."""
    out = tmp_path / "run"
    first = ["train", "--dataset-id", tiny_dataset_id, "--out", str(out), "--preset", "tiny", "--steps", "3",
             "--max-minutes", "1e-9", "--batch-size", "2", "--seq-len", "6", "--lr", "0.001", "--seed", "5",
             "--context-window", "4", "--precision", "fp32", "--log-every", "1", "--quiet"]
    assert main(first) == 0  # the time budget stops it after its first step
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1
    assert main(["train", "--out", str(out), "--resume", "--precision", "fp32", "--quiet"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 3  # the run's own --steps
    run = ckpt["train_config"]
    assert (run["dataset_id"], run["preset"], run["batch_size"], run["seq_len"], run["lr"], run["seed"],
            run["model"], run["max_minutes"]) == (tiny_dataset_id, "tiny", 2, 6, 1e-3, 5, {"context_window": 4}, 0)
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--precision", "fp32", "--quiet"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3, 4]  # --log-every 1 throughout
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "5", "--batch-size", "4", "--quiet"]) == 2
    assert "ran with batch_size 2 (now 4)" in capsys.readouterr().err


def test_checkpoint_counts_the_training_terminations(tiny_dataset_id: str, tiny_frame_cache, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_dataset_id, tmp_path, steps=1)
    train(cfg)
    recorded = load_checkpoint(tmp_path / "checkpoint.pt")["dataset"]["training_terminations"]
    train_eps, _ = tiny_frame_cache.episode_split(cfg.val_fraction, cfg.seed)
    per_episode = [int(tiny_frame_cache.terminations[s: s + n].sum()) for s, n in
                   zip(tiny_frame_cache.episode_starts, tiny_frame_cache.episode_lengths)]
    assert recorded == sum(per_episode[e] for e in train_eps) > 0
    assert recorded < sum(per_episode)  # the validation episodes' are not counted
    # the rewards the env clips to: CartPole pays 1 per step (an episode's first frame, stored as 0, has none)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["dataset"]["reward_range"] == [1.0, 1.0]
    assert tiny_frame_cache.rewards[tiny_frame_cache.episode_starts].max() == 0


def test_last_frame_supervision_and_grad_accum(tiny_dataset_id: str, tmp_path: Path) -> None:
    # without padding after episode ends, so that every window has T supervised frames
    train(tiny_cfg(tiny_dataset_id, tmp_path / "a", steps=2, grad_accum=2, pad_episode_ends=False,
                   loss={"supervision": "last_frame"}))
    rows = [r for r in metrics(tmp_path / "a") if "loss" in r]
    assert rows[-1]["num_frames_seen"] == 2 * 4  # one supervised frame per window
    train(tiny_cfg(tiny_dataset_id, tmp_path / "b", steps=2, pad_episode_ends=False))
    rows = [r for r in metrics(tmp_path / "b") if "loss" in r]
    assert rows[-1]["num_frames_seen"] == 2 * 4 * 6  # every frame of every window


def test_interrupt_saves_checkpoint(tiny_dataset_id: str, tmp_path: Path, monkeypatch) -> None:
    from diffusion_world.training import monitor

    real_log = monitor.Monitor.log

    def log(self, step, *a, **kw):  # type: ignore[no-untyped-def]
        real_log(self, step, *a, **kw)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(monitor.Monitor, "log", log)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=10))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_a_signal_while_a_step_commits_waits_for_it(tiny_dataset_id: str, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C / SIGTERM between the optimiser step and the EMA update used to save the new weights under the
    previous step's number (the resume then applied that step twice): the step now commits first."""
    import os
    import signal

    from diffusion_world.training import train as train_module

    real = train_module.normalize_weights_
    calls = []

    def normalize_and_signal(model):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:  # (the first call normalises the new model) after the second optimiser step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model)

    train(tiny_cfg(tiny_dataset_id, tmp_path / "once", steps=3))
    monkeypatch.setattr(train_module, "normalize_weights_", normalize_and_signal)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "split", steps=3))
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 2
    monkeypatch.setattr(train_module, "normalize_weights_", real)
    train(tiny_cfg(tiny_dataset_id, tmp_path / "split", steps=3), resume=True)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("once", "split"))
    for key in ("model", "ema"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, rtol=0, atol=0, msg=f"{key} {name}")


def test_resume_after_a_kill_cut_metrics_and_a_save(tiny_dataset_id: str, tmp_path: Path) -> None:
    """A metrics.jsonl whose last line a kill cut short: the resume drops that line with a warning (it crashed
    with a JSONDecodeError, and so did every later resume)."""
    train(tiny_cfg(tiny_dataset_id, tmp_path, steps=2))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 4.2, "diff')
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # a save cut by kill -9: removed
    with pytest.warns(UserWarning, match="is not a JSON row"):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=3), resume=True)
    assert [r["step"] for r in metrics(tmp_path) if "loss" in r] == [1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))


def test_max_minutes_stops_saves_and_resumes_exactly(tiny_dataset_id: str, tmp_path: Path, capsys) -> None:
    """A spent wall-clock budget stops after the current step with a checkpoint; --resume then ends where an
    uninterrupted run ends."""
    train(tiny_cfg(tiny_dataset_id, tmp_path / "once", steps=3))
    train(tiny_cfg(tiny_dataset_id, tmp_path / "budget", steps=3, max_minutes=1e-9))
    assert load_checkpoint(tmp_path / "budget" / "checkpoint.pt")["step"] == 1
    assert "stopped at step 1 after --max-minutes" in capsys.readouterr().out
    # the stop is validated (metrics row and dashboard) though step 1 is no --eval-every step
    assert [row["step"] for row in metrics(tmp_path / "budget") if "val_loss" in row] == [1]
    assert (tmp_path / "budget" / "dashboard.png").exists()
    train(tiny_cfg(tiny_dataset_id, tmp_path / "budget", steps=3), resume=True)
    a = load_checkpoint(tmp_path / "once" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "budget" / "checkpoint.pt")
    assert a["step"] == b["step"] == 3
    assert all(torch.equal(t, b["model"][name]) for name, t in a["model"].items())
    with pytest.raises(UserError, match="max_minutes"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "bad", max_minutes=-1))


def test_sigterm_saves_checkpoint(tiny_dataset_id: str, tmp_path: Path, monkeypatch) -> None:
    """SIGTERM (pre-emption, `kill`) stops like Ctrl-C, with a checkpoint; the handler is restored afterwards."""
    import signal

    from diffusion_world.training import monitor

    real_log = monitor.Monitor.log

    def log(self, step, *a, **kw):  # type: ignore[no-untyped-def]
        real_log(self, step, *a, **kw)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(monitor.Monitor, "log", log)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as info:
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=10))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == before
    # the command exits as the signal's default action would: 143 (it said 130, SIGINT's, to job scripts)
    assert getattr(info.value, "signum", None) == signal.SIGTERM
    from diffusion_world import cli

    def stopped(*args: object) -> None:
        raise info.value

    monkeypatch.setattr(cli, "report_user_errors", stopped)
    assert main(["info"]) == 143


SIGNAL_RANK_1 = """
import atexit, os, signal, sys, time
from pathlib import Path

import diffusion_world.training.train as train_module
from diffusion_world.cli import main

real, calls, save = train_module.normalize_weights_, [0], train_module.save_checkpoint
times = Path(os.environ["TIMES_DIR"])


def normalize_and_signal(model):  # at the model's start, then once per step
    real(model)
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 3:  # a pre-emption notice that reaches one process, in step 2
        os.kill(os.getpid(), signal.SIGTERM)


def slow_save(*args, **kwargs):  # a large checkpoint on a slow file system
    time.sleep(3)
    path = save(*args, **kwargs)
    (times / "saved").write_text(str(time.time()))
    return path


train_module.normalize_weights_ = normalize_and_signal
train_module.save_checkpoint = slow_save
atexit.register(lambda: (times / f"exit{os.environ['RANK']}").write_text(str(time.time())))
sys.exit(main(sys.argv[1:]))
"""


def test_a_signal_to_one_rank_stops_every_rank_with_a_checkpoint(tiny_dataset_id: str, tmp_path: Path) -> None:
    """SIGTERM to one torchrun process: all of them stop after the same step and rank 0 saves the checkpoint. The
    signalled rank used to stop alone, and rank 0 died in its next collective ("Connection closed by peer")
    without one. The other ranks exit only once rank 0 has saved: one that exited first made torchrun stop rank
    0, and kill it 30 s later, in the middle of a long save."""
    script = tmp_path / "signal_rank_1.py"
    script.write_text(SIGNAL_RANK_1)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), "train", "--dataset-id", tiny_dataset_id, "--preset", "tiny", "--steps", "6",
                          "--batch-size", "2", "--seq-len", "4", "--device", "cpu", "--eval-every", "1000",
                          "--checkpoint-every", "1000", "--out", str(out), "--quiet"],
                         env={**os.environ, "OMP_NUM_THREADS": "1", "TIMES_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0, run.stdout[-2000:]  # stopped, not finished
    assert float((tmp_path / "exit1").read_text()) > float((tmp_path / "saved").read_text())
    assert "interrupted at step 2: checkpoint saved" in run.stdout, run.stderr[-3000:]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert "Connection closed by peer" not in run.stderr


def test_a_refused_launchs_other_ranks_leave_the_running_runs_files(tiny_dataset_id: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranks > 0 of a torchrun launch do not take the run lock (rank 0 does): they deleted the checkpoint that
    a running run was writing (its ``.tmp``) before rank 0 was refused, and that run then failed to save. Only the
    rank holding the lock clears what a killed save left."""
    import diffusion_world.training.train as train_module

    class Refused(Exception):
        pass

    def refused(device):  # type: ignore[no-untyped-def]
        raise Refused  # where torchrun's process group would start: rank 0's refusal ends the launch about here

    half = tmp_path / ".checkpoint.pt.abc123.tmp"
    half.write_bytes(b"being written by a running run")
    monkeypatch.setattr(train_module, "_init_distributed", refused)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(Refused):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=1))
    assert half.exists()
    monkeypatch.setenv("RANK", "0")  # the rank that holds the lock: a killed save's leftovers go
    with pytest.raises(Refused):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=1))
    assert not half.exists()


def test_checkpoint_rebuilds_world_model(tiny_dataset_id: str, tmp_path: Path) -> None:
    path = train(tiny_cfg(tiny_dataset_id, tmp_path, steps=1))
    wm = load_world_model(path)
    assert wm.dataset["dataset_id"] == tiny_dataset_id
    assert wm.context_noise_range == (0.002, 0.1)  # the clean stream's training noise, for inference's checks
    assert wm.contexts["frames"].dtype == torch.uint8 and wm.contexts["frames"].shape[2:] == (16, 16, 3)
    assert not wm.model.training
    ckpt = load_checkpoint(path)
    assert ckpt["train_config"]["preset"] == "tiny" and ckpt["package_version"]
    w = ckpt["train_config"]["loss"]["termination_pos_weight"]
    assert wm.termination_pos_weight == w > 1  # the class balance the loss used...
    # ...is divided back out of the predicted odds: logit log(w) is even odds
    assert float(wm.termination_probability(torch.tensor(math.log(w)))) == pytest.approx(0.5)
    assert not list(tmp_path.glob(".checkpoint.pt.*"))  # no temporary files left behind


def test_bad_checkpoints_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable .*not a torch zip file"):  # said 'KeyError: 101'
        load_world_model(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a diffusion_world checkpoint"):
        load_world_model(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "broken.pt", {"model_config": {"channels": [1]}})
    with pytest.raises(UserError):
        load_world_model(tmp_path / "broken.pt")
    with pytest.raises(UserError, match="not found"):
        load_world_model(tmp_path / "missing.pt")


def test_a_bit_flipped_checkpoint_is_refused(tmp_path: Path) -> None:
    """torch.load does not check the CRCs of its zip entries: a flipped bit in a tensor loaded silently."""
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"ema": {"w": torch.arange(4096, dtype=torch.float32)}})
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        entry = max(z.infolist(), key=lambda i: i.file_size)  # the tensor's storage
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len  # after the entry's local header
    data[start + entry.file_size // 2] ^= 0x10
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data))
    assert not torch.equal(torch.load(flipped, weights_only=True)["ema"]["w"], torch.arange(4096.0))  # torch: fine
    with pytest.raises(UserError, match=rf"damaged: its entry '{entry.filename}' does not match its CRC-32"):
        load_checkpoint(flipped)
    assert load_checkpoint(good)["ema"]["w"].equal(torch.arange(4096.0))


def test_bf16_autocast_on_cpu_matches_fp32(tiny_dataset_id: str, tmp_path: Path) -> None:
    """precision="bf16" (the default on CPUs with AMX/AVX512-BF16) trains the same model as fp32 up to bf16
    rounding: same first-step loss within 2%, and the loss still falls."""
    train(tiny_cfg(tiny_dataset_id, tmp_path / "fp32", steps=30, warmup_steps=5))
    train(tiny_cfg(tiny_dataset_id, tmp_path / "bf16", steps=30, warmup_steps=5, precision="bf16"))
    a = [r["diffusion"] for r in metrics(tmp_path / "fp32") if "diffusion" in r]
    b = [r["diffusion"] for r in metrics(tmp_path / "bf16") if "diffusion" in r]
    assert b[0] == pytest.approx(a[0], rel=0.02)
    assert sum(b[-5:]) / 5 < 0.8 * sum(b[:5]) / 5
    assert sum(b[-5:]) / 5 == pytest.approx(sum(a[-5:]) / 5, rel=0.25)
    with pytest.raises(UserError, match="precision"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "bad", precision="fp16"))


def test_bad_training_input(tiny_dataset_id: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="steps"):
        train(tiny_cfg(tiny_dataset_id, tmp_path, steps=0))
    with pytest.raises(UserError, match="10000 frames"):
        train(tiny_cfg(tiny_dataset_id, tmp_path, seq_len=10_000))
    with pytest.raises(UserError, match="seq_len must be >= 2"):  # one-frame windows: nothing to condition on
        train(tiny_cfg(tiny_dataset_id, tmp_path, seq_len=1))
    with pytest.raises(UserError, match="max_minutes must be >= 0"):  # nan was no limit at all
        train(tiny_cfg(tiny_dataset_id, tmp_path, max_minutes=float("nan")))
    assert main(["train", "--dataset-id", "nobody/nothing-v0", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "nobody/nothing-v0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # a refused run leaves no empty --out behind
    assert main(["train", "--dataset-id", tiny_dataset_id, "--out", str(tmp_path / "cw"), "--preset", "tiny",
                 "--context-window", "0", "--steps", "1", "--quiet"]) == 2  # 0 is refused, not read as "not given"
    assert "context_window" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="torch sees no CUDA device"):
            train(tiny_cfg(tiny_dataset_id, tmp_path, device="cuda"))
    # bf16 asked for on a CPU that only emulates it (several times slower than fp32) trains, with a warning
    from diffusion_world import precision

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(precision, "cpu_has_native_bf16", lambda: False)
        with pytest.warns(UserWarning, match="emulated"):
            train(tiny_cfg(tiny_dataset_id, tmp_path / "emulated", steps=1, precision="bf16"))
    # resuming with another model config is refused, not silently mixed
    train(tiny_cfg(tiny_dataset_id, tmp_path / "r", steps=1))
    with pytest.raises(UserError, match="another model config"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "r", steps=2, model={"emb_channels": 16}), resume=True)
    # a misspelt model setting or imagination default is named, not a TypeError or silently stored
    with pytest.raises(UserError, match=r"unknown model config key\(s\) emb_chanels"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "typo", steps=1, model={"emb_chanels": 16}))
    with pytest.raises(UserError, match=r"imagination: unknown key\(s\) sampler_step"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "typo", steps=1, imagination={"sampler_step": 5}))
    assert not (tmp_path / "typo" / "checkpoint.pt").exists()
    # a run is not overwritten by a forgotten --resume; --out must be a directory it can create
    with pytest.raises(UserError, match=r"holds a run \(step 1\): continue it with --resume"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "r", steps=1))
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 1
    # two writers of one run are refused: they overwrote each other's checkpoint and metrics (a second train into
    # the same --out; fit-termination in place on a checkpoint that a train is still writing)
    from diffusion_world.checkpoint import RUN_LOCK, run_lock
    from diffusion_world.training.termination import fit_termination

    with run_lock(tmp_path / "r", "`diffusion-world train`"):
        with pytest.raises(UserError, match=r"is being written by `diffusion-world train` \(pid \d+\)"):
            train(tiny_cfg(tiny_dataset_id, tmp_path / "r", steps=2), resume=True)
        with pytest.raises(UserError, match="is being written by"):
            fit_termination(tmp_path / "r" / "checkpoint.pt")
    assert not (tmp_path / "r" / RUN_LOCK).exists()
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 1
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match="is a file, not a directory"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "afile", steps=1))
    with pytest.raises(UserError, match="cannot create --out"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "afile" / "sub", steps=1))


def test_card_values_of_the_wrong_type_are_named(tmp_path: Path) -> None:
    """A card's [train] and [model] values are checked against their fields' kinds before anything compares or
    iterates them (before: TypeErrors from deep inside, or batch_size 2.5 "not divisible by world size")."""
    def card(train: str = "", model: str = "") -> Path:
        path = tmp_path / "card.toml"
        path.write_text(f'[env]\nid = "CartPole-v1"\n[collect]\ndataset_id = "a/b-v0"\nsteps = 10\n'
                        f'[model]\npreset = "tiny"\n{model}\n[train]\n{train}\n')
        return path

    for train_line, match in [('steps = "2"', "steps must be an integer, got '2'"),
                              ('lr = "fast"', "lr must be a number, got 'fast'"),
                              ("batch_size = true", "batch_size must be an integer, got True"),
                              ("batch_size = 2.5", "batch_size must be an integer, got 2.5"),
                              ('p_mean = "low"', "p_mean must be a number"),
                              ('betas = ["a", 1]', "betas must be a list of numbers"),
                              ("batchsize = 2", r"card '.*card.toml' \[train\]: unknown key\(s\) batchsize "
                                                r"\(allowed: .*batch_size"),
                              # TrainConfig's own fields that a card's [train] must not set (it replaced [model])
                              ("out_dir = 'y'", r"\[train\]: out_dir \(give train --out\) do not belong here"),
                              ('model = {channels = [8]}', r"model \(give \[model\]\) do not belong here"),
                              ('preset = "small"', r"preset \(give \[model\] preset\)")]:
        with pytest.raises(UserError, match=match):
            config_from_card(card(train=train_line), out_dir="x").validate()
    with pytest.raises(UserError, match=r"card '.*card.toml' \[model\]: unknown key\(s\) chanels"):
        config_from_card(card(model="chanels = [8]"), out_dir="x")
    with pytest.raises(UserError, match=r"the model's frame_size come\(s\) from the dataset.*\[train\] frame_size"):
        config_from_card(card(model="frame_size = [32, 32]"), out_dir="x").validate()
    with pytest.raises(UserError, match=r"the model's image_channels come\(s\) from the dataset.*RGB frames: 3"):
        config_from_card(card(model="image_channels = 1"), out_dir="x").validate()
    cfg = config_from_card(card(model="channels = 8"), out_dir="x")
    with pytest.raises(UserError, match="model config channels must be a list of integers, got 8"):
        from diffusion_world.model.config import preset_config

        preset_config(cfg.preset, **cfg.model)
    assert config_from_card(card(train="steps = 3\nlr = 1"), out_dir=tmp_path).steps == 3  # ints are numbers


def test_short_validation_episodes(tiny_dataset_id: str, tiny_frame_cache, tmp_path: Path, capsys) -> None:
    """Where no validation episode has seq_len frames, the evaluation runs on training windows and says so
    (train_eval_loss, not val_loss), and the reset contexts come from training episodes (before: none stored)."""
    train_eps, val_eps = tiny_frame_cache.episode_split(0.1, 0)
    n = int(tiny_frame_cache.episode_lengths[val_eps].max()) + 1
    long_train = int((tiny_frame_cache.episode_lengths[train_eps] >= n).sum())
    assert long_train >= 2  # the fixture has such episodes
    path = train(tiny_cfg(tiny_dataset_id, tmp_path, steps=1, seq_len=n, context_length=n, eval_every=1,
                          warmup_steps=1))
    rows = [r for r in metrics(tmp_path) if r.get("step") == 1]
    assert any("train_eval_loss" in r for r in rows) and not any("val_loss" in r for r in rows)
    assert "measured on training windows" in capsys.readouterr().out
    contexts = load_checkpoint(path)["contexts"]
    assert contexts["frames"].shape[:2] == (min(long_train, 16), n)


def test_config_from_card_layers(tmp_path: Path) -> None:
    card = tmp_path / "card.toml"
    card.write_text('[env]\nid = "CartPole-v1"\n[collect]\ndataset_id = "a/b-v0"\nsteps = 10\n'
                    '[model]\npreset = "tiny"\n[train]\nsteps = 7\nseq_len = 5\np_mean = -1.0\n'
                    '[imagination]\nhorizon = 9\n')
    cfg = config_from_card(card, steps=11, out_dir="x")
    assert (cfg.dataset_id, cfg.preset, cfg.steps, cfg.seq_len, cfg.loss.p_mean) == ("a/b-v0", "tiny", 11, 5, -1.0)
    assert cfg.imagination == {"horizon": 9} and cfg.loss.sigma_ctx_max == 0.1
    # a loss setting given as a flag (train --sigma-ctx-max) lands in the loss config, next to the card's
    cfg = config_from_card(card, out_dir="x", sigma_ctx_max=0.5)
    assert (cfg.loss.sigma_ctx_max, cfg.loss.p_mean) == (0.5, -1.0)
    with pytest.raises(UserError, match="sigma_ctx"):
        config_from_card(card, out_dir="x", sigma_ctx_max=0.001).validate()


def test_export_for_inference_is_slim_and_equivalent(tiny_dataset_id: str, tmp_path: Path) -> None:
    from diffusion_world.checkpoint import export_for_inference

    path = train(tiny_cfg(tiny_dataset_id, tmp_path, steps=2))
    slim = export_for_inference(path, tmp_path / "slim.pt", {"command": "test"})
    assert slim.stat().st_size < 0.4 * path.stat().st_size  # fp16 EMA only, no optimiser
    full, small = load_world_model(path), load_world_model(slim)
    for (name, a), b in zip(full.model.state_dict().items(), small.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3, msg=name)  # fp16 rounding only
    assert load_checkpoint(slim)["provenance"] == {"command": "test"}
    with pytest.raises(UserError):
        load_world_model(slim, use_ema=False)  # the slim file has no raw weights: say so


def test_training_sees_no_more_frames_than_the_context_window() -> None:
    """With seq_len > context_window, the loss uses the sliding-window mask the inference cache implies."""
    from diffusion_world.model.config import preset_config
    from diffusion_world.model.dart import DartWorldModel
    from diffusion_world.training.loss import LossConfig, dart_loss, draw_noise

    torch.manual_seed(0)
    model = DartWorldModel(preset_config("tiny", context_window=2))
    for p in model.parameters():
        if p.ndim == 0:
            p.data.fill_(1.0)
    x0 = torch.rand(2, 6, 3, 16, 16) * 2 - 1
    a = torch.zeros(2, 6, dtype=torch.long)
    has = torch.ones(2, 6, dtype=torch.bool)
    z = torch.zeros(2, 6)
    cfg = LossConfig()
    draw = draw_noise(2, 6, (3, 16, 16), cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = dart_loss(model, x0, a, has, z, z.bool(), draw, cfg, 0.5).total
        windowed = dart_loss(model, x0, a, has, z, z.bool(), draw, cfg, 0.5, window=2).total
        same = dart_loss(model, x0, a, has, z, z.bool(), draw, cfg, 0.5, window=6).total  # window >= T: no-op
    assert not torch.isclose(full, windowed)  # the window is applied (sliding-window == cache: test_equivalence)
    assert torch.equal(full, same)


def test_padding_after_an_episode_end_is_masked_out_of_the_loss() -> None:
    """A window with k real frames and T - k padded ones gives k / T times the loss of the k frames alone
    (the model is causal, the masks drop the padding), whatever the padded frames contain."""
    from diffusion_world.model.config import preset_config
    from diffusion_world.model.dart import DartWorldModel
    from diffusion_world.training.loss import LossConfig, dart_loss, draw_noise

    torch.manual_seed(0)
    model = DartWorldModel(preset_config("tiny"))
    for p in model.parameters():
        if p.ndim == 0:
            p.data.fill_(0.5)  # non-zero gains: every head and block contributes
    T, k = 6, 4
    x0 = torch.rand(1, T, 3, 16, 16) * 2 - 1
    a = torch.randint(0, 2, (1, T))
    has = torch.ones(1, T, dtype=torch.bool)
    rew = torch.rand(1, T)
    term = torch.zeros(1, T, dtype=torch.bool)
    term[0, k - 1] = True
    valid = torch.arange(T)[None] < k
    cfg = LossConfig(termination_pos_weight=3.0)
    draw = draw_noise(1, T, (3, 16, 16), cfg, torch.Generator().manual_seed(1))
    short = dataclasses.replace(draw, sigma=draw.sigma[:, :k], sigma_ctx=draw.sigma_ctx[:, :k],
                                noise=draw.noise[:, :k], noise_ctx=draw.noise_ctx[:, :k])
    with torch.no_grad():
        alone = dart_loss(model, x0[:, :k], a[:, :k], has[:, :k], rew[:, :k], term[:, :k], short, cfg, 0.5)
        garbage = x0.clone()
        garbage[:, k:] = torch.rand(1, T - k, 3, 16, 16) * 2 - 1
        for frames in (x0, garbage):
            padded = dart_loss(model, frames, a, has & valid, rew * valid, term, draw, cfg, 0.5, valid=valid)
            for name in ("total", "reward", "termination"):
                torch.testing.assert_close(getattr(padded, name), getattr(alone, name) * k / T, msg=name)
            assert padded.num_supervised == k
            torch.testing.assert_close(padded.diffusion, alone.diffusion)  # the logged error: a mean over real frames
        unmasked = dart_loss(model, garbage, a, has, rew, term, draw, cfg, 0.5)
    assert not torch.isclose(unmasked.total, alone.total * k / T)  # the mask is what makes them equal


def test_importance_weights_weigh_the_reward_and_termination_terms_only() -> None:
    """The sampler's importance weights (oversampled terminal windows) weigh each frame of the termination and
    reward terms, so that both heads learn the data's expectations; the diffusion term takes the windows as
    drawn. The reward term ignored them: oversampled absorbing frames (reward 0) pulled look-alike states' rewards
    down."""
    from diffusion_world.model.config import preset_config
    from diffusion_world.model.dart import DartWorldModel
    from diffusion_world.training.loss import LossConfig, dart_loss, draw_noise

    torch.manual_seed(0)
    model = DartWorldModel(preset_config("tiny"))
    for p in model.parameters():
        if p.ndim == 0:
            p.data.fill_(0.5)
    T = 5
    x0 = torch.rand(2, T, 3, 16, 16) * 2 - 1
    a, has = torch.randint(0, 2, (2, T)), torch.ones(2, T, dtype=torch.bool)
    rew, term = torch.rand(2, T), torch.zeros(2, T, dtype=torch.bool)
    term[1, -1] = True
    cfg = LossConfig(termination_pos_weight=3.0)
    draw = draw_noise(2, T, (3, 16, 16), cfg, torch.Generator().manual_seed(1))
    weights = torch.tensor([[0.5] * T, [2.0] * T])  # per window, as the sampler gives them
    with torch.no_grad():
        plain = dart_loss(model, x0, a, has, rew, term, draw, cfg, 0.5)
        weighted = dart_loss(model, x0, a, has, rew, term, draw, cfg, 0.5, termination_weights=weights)
        rows = [dart_loss(model, x0[i:i + 1], a[i:i + 1], has[i:i + 1], rew[i:i + 1], term[i:i + 1],
                          dataclasses.replace(draw, sigma=draw.sigma[i:i + 1], sigma_ctx=draw.sigma_ctx[i:i + 1],
                                              noise=draw.noise[i:i + 1], noise_ctx=draw.noise_ctx[i:i + 1]),
                          cfg, 0.5) for i in range(2)]
    for name in ("reward", "termination"):  # the batch mean of each window's term times its weight
        expected = (0.5 * getattr(rows[0], name) + 2.0 * getattr(rows[1], name)) / 2
        torch.testing.assert_close(getattr(weighted, name), expected, msg=name)
    # the diffusion term of the total is unchanged: the totals differ by the reward and termination terms alone
    torch.testing.assert_close(weighted.total - plain.total, (weighted.reward - plain.reward)
                               + (weighted.termination - plain.termination))
    torch.testing.assert_close(weighted.diffusion, plain.diffusion)
    assert not torch.isclose(weighted.reward, plain.reward)


def test_init_from_another_run(tiny_dataset_id: str, tmp_path: Path, capsys) -> None:
    """--init-from continues another run's weights, optimiser and counters under a new config (here a shorter
    context window, which holds no parameters); a model of another shape is refused with the reason."""
    a = train(tiny_cfg(tiny_dataset_id, tmp_path / "a", steps=2))
    capsys.readouterr()
    b = train(tiny_cfg(tiny_dataset_id, tmp_path / "b", steps=3, init_from=str(a), model={"context_window": 2}))
    assert f"initialised from {a} at step 2 (" in (out := capsys.readouterr().out)
    assert "supervised frames): its weights, EMA and optimiser" in out
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert cb["step"] == 3 and cb["num_frames_seen"] > ca["num_frames_seen"]
    assert cb["model_config"]["context_window"] == 2 != ca["model_config"]["context_window"]
    assert cb["train_config"]["init_from"] == str(a)
    with pytest.warns(UserWarning, match="starts at step 2, which is already --steps 2: nothing to train .* "
                                         "--steps 4"):  # nothing left to do: said, not silent
        same = train(tiny_cfg(tiny_dataset_id, tmp_path / "c", steps=2, init_from=str(a)))
    for name, value in load_checkpoint(a)["model"].items():
        assert torch.equal(load_checkpoint(same)["model"][name], value), name
    with pytest.raises(UserError, match=r"does not fit this model \(head_channels 32 there, 7 here\): size "
                                        r"mismatch for .*[^:]$"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "d", steps=3, init_from=str(a), model={"head_channels": 7}))
    # a checkpoint from before a config field existed reads it as its default, not as a difference
    old = load_checkpoint(a)
    del old["model_config"]["input_temporal_kernel"]
    save_checkpoint(tmp_path / "old.pt", old)
    with pytest.raises(UserError) as info:
        train(tiny_cfg(tiny_dataset_id, tmp_path / "e", steps=3, init_from=str(tmp_path / "old.pt"),
                       model={"head_channels": 7}))
    assert "input_temporal_kernel" not in str(info.value) and "head_channels 32 there, 7 here" in str(info.value)
    assert str(info.value).endswith("; it was trained with --preset tiny")  # the usual fix


def test_init_from_an_inference_export(tiny_dataset_id: str, tmp_path: Path) -> None:
    """Fine-tuning an export (EMA weights only): the weights and the EMA start from its fp16 EMA weights, the step
    count carries over, the optimiser starts fresh; a file without weights is refused."""
    from diffusion_world.checkpoint import export_for_inference

    a = train(tiny_cfg(tiny_dataset_id, tmp_path / "a", steps=2))
    slim = export_for_inference(a, tmp_path / "slim.pt", {"command": "test"})
    with pytest.warns(UserWarning, match="nothing to train"):  # nothing left to do: the start as it is loaded
        start = train(tiny_cfg(tiny_dataset_id, tmp_path / "b", steps=2, init_from=str(slim)))
    exported, began = load_checkpoint(slim), load_checkpoint(start)
    assert began["step"] == 2 and began["optimizer"]["state"] == {}
    for name, value in exported["ema"].items():
        assert began["model"][name].dtype == torch.float32
        assert torch.equal(began["model"][name], value.float()) and torch.equal(began["ema"][name], value.float())
    tuned = load_checkpoint(train(tiny_cfg(tiny_dataset_id, tmp_path / "c", steps=4, init_from=str(slim))))
    assert tuned["step"] == 4 and tuned["optimizer"]["state"]
    assert not all(torch.equal(tuned["model"][k], v.float()) for k, v in exported["ema"].items())
    empty = tmp_path / "empty.pt"
    save_checkpoint(empty, {**{k: v for k, v in exported.items() if k != "ema"}})
    with pytest.raises(UserError, match="neither a training state nor EMA weights"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "d", steps=3, init_from=str(empty)))


def test_init_from_grows_the_input_temporal_kernel(tiny_dataset_id: str, tmp_path: Path) -> None:
    """--init-from a run with a per-frame input convolution into one that reads 3 frames: the old taps carry over,
    the new ones start at zero, Adam starts fresh (its moments do not fit the grown weight) and training then
    moves the new taps; shrinking is refused."""
    a = train(tiny_cfg(tiny_dataset_id, tmp_path / "a", steps=2))
    with pytest.warns(UserWarning, match="nothing to train"):
        start = load_checkpoint(train(tiny_cfg(tiny_dataset_id, tmp_path / "b", steps=2, init_from=str(a),
                                               model={"input_temporal_kernel": 3})))
    old = load_checkpoint(a)["model"]["conv_in.weight"]  # (O, I, 3, 3)
    w = start["model"]["conv_in.conv.weight"]  # (O, I, 3 frames, 3, 3)
    assert start["model_config"]["input_temporal_kernel"] == 3 and start["optimizer"]["state"] == {}
    assert torch.all(w[:, :, 1:] == 0) and torch.allclose(w[:, :, 0] / w[:, :, 0].norm(), old / old.norm())
    grown = train(tiny_cfg(tiny_dataset_id, tmp_path / "c", steps=4, init_from=str(a),
                           model={"input_temporal_kernel": 3}))
    assert load_checkpoint(grown)["model"]["conv_in.conv.weight"][:, :, 1:].abs().max() > 0
    with pytest.raises(UserError, match="can grow it, not shrink it"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "d", steps=5, init_from=str(grown)))


def test_attention_backend_resolution() -> None:
    from diffusion_world.training.train import resolve_attn_backend

    assert resolve_attn_backend("auto", "cpu", 32) == "sdpa"  # FlexAttention has no CPU backward
    assert resolve_attn_backend("auto", "cuda", 32) == "flex"
    assert resolve_attn_backend("auto", "cuda", 8) == "sdpa"  # CUDA flex kernels need >= 16 channels per head
    assert resolve_attn_backend("sdpa", "cuda", 32) == "sdpa"
    with pytest.raises(UserError, match="flex trains on CUDA only: FlexAttention has no backward pass on cpu"):
        resolve_attn_backend("flex", "cpu", 32)  # refused before training, not at the first backward
    with pytest.raises(UserError, match="attention_head_dim is 8"):
        resolve_attn_backend("flex", "cuda", 8)


def test_a_frame_size_whose_levels_miss_video_attention_warns(tiny_dataset_id: str, tmp_path: Path) -> None:
    """tiny on 64x64 frames: levels at 64 and 32, video attention at 8: frames meet only through the causal
    convolutions, which nothing said. Training says it; loading such a model (every gym.make, benchmark and play)
    does not say it again."""
    import warnings

    import gymnasium as gym

    from diffusion_world.model.config import action_space_to_dict, preset_config

    actions = action_space_to_dict(gym.spaces.Discrete(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short = preset_config("tiny", frame_size=(64, 64), action_space=actions)  # as loading a checkpoint does
        preset_config("tiny", frame_size=(16, 16), action_space=actions).warn_if_no_video_attention()
        preset_config("small", frame_size=(64, 64), action_space=actions).warn_if_no_video_attention()
    with pytest.warns(UserWarning, match=r"no video attention at 64x64 frames: .* at \[64, 32\] .* at \[8\]"):
        short.warn_if_no_video_attention()
    # a training run of such a model says it
    with pytest.warns(UserWarning, match=r"no video attention at 16x16 frames"):
        train(TrainConfig(dataset_id=tiny_dataset_id, out_dir=str(tmp_path / "run"), preset="tiny", steps=1,
                          batch_size=1, seq_len=4, precision="fp32", progress=False,
                          model={"video_attention": (4,)}))


def test_box_actions_without_usable_bounds_warn() -> None:
    import warnings

    import numpy as np

    from diffusion_world.training.train import _warn_unscaled_box_actions

    big = float(np.finfo(np.float32).max)
    with pytest.warns(UserWarning, match=r"no usable bounds in dimension\(s\) \[0, 2\]"):
        _warn_unscaled_box_actions({"type": "box", "shape": [4], "low": [None, -1.0, -big, 0.5],
                                    "high": [None, 1.0, big, 0.5]}, "me/x-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_unscaled_box_actions({"type": "box", "shape": [1], "low": [-2.0], "high": [2.0]}, "me/x-v0")


def test_a_full_disk_while_saving_is_named_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A full disk ended in a raw traceback from torch's zip writer ("unexpected pos ..."). It now says so, and
    that the previous checkpoint is intact (it always was: the save is atomic)."""
    import shutil
    from collections import namedtuple

    from diffusion_world import checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.zeros(1000)})

    def full(payload: object, f: object) -> None:
        f.write(b"PK\x03\x04 partial")  # type: ignore[attr-defined]
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 12")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 100))
    with pytest.raises(UserError, match=r"cannot write the checkpoint .*checkpoint.pt: no space left on the device; "
                                        r".*unexpected pos .*\(the previous one is intact\)"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_an_unwritable_out_is_refused_before_the_data(tiny_dataset_id: str, tmp_path: Path, monkeypatch) -> None:
    """A read-only --out failed with a raw OSError at the first metrics line, after the data and the model."""
    import errno

    from diffusion_world import errors
    from diffusion_world.training import train as train_module

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(errors.tempfile, "NamedTemporaryFile", read_only)
    monkeypatch.setattr(train_module.FrameCache, "open", lambda *a, **k: pytest.fail("read the data"))
    (tmp_path / "ro").mkdir()
    with pytest.raises(UserError, match=r"cannot write --out '.*ro': Read-only file system"):
        train(tiny_cfg(tiny_dataset_id, tmp_path / "ro", steps=1))


def test_logged_diffusion_error_is_the_whole_batchs_with_grad_accum(tiny_dataset_id: str, tmp_path: Path) -> None:
    """The logged mean diffusion error was the mean of the parts' means: where padding gives the parts different
    numbers of supervised frames, not what one pass over the batch logs (the loss itself was exact)."""
    logged = {}
    for accum in (1, 4):
        train(tiny_cfg(tiny_dataset_id, tmp_path / str(accum), steps=1, batch_size=4, grad_accum=accum,
                       seq_len=16, pad_episode_ends=True, seed=3))
        logged[accum] = [r for r in metrics(tmp_path / str(accum)) if "loss" in r][0]
    assert logged[4]["num_frames_seen"] == logged[1]["num_frames_seen"]
    assert logged[4]["loss"] == pytest.approx(logged[1]["loss"], rel=1e-5)
    assert logged[4]["diffusion"] == pytest.approx(logged[1]["diffusion"], rel=1e-5)
