"""The main job end to end at a tiny budget: every stage runs, the report folder is complete, and the printed
numbers are the ones its own result files hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffusion_world.errors import UserError

CARD = """
[env]
id = "CartPole-v1"
size = 16

[collect]
dataset_id = "diffusion_world_test/mainjob-v0"
policy = "random"
steps = 200

[model]
preset = "tiny"

[train]
seq_len = 4

[imagination]
horizon = 20
context_frames = 2
"""


def test_main_job_tiny(tiny_world_model: str, tmp_path: Path) -> None:
    from diffusion_world.bench.report import render
    from diffusion_world.main_job import run_main_job, summary_table

    card = tmp_path / "card.toml"
    card.write_text(CARD)
    out = tmp_path / "report"
    record = tmp_path / "results" / "main_job.json"
    s = run_main_job(out, str(card), tiny_world_model, collect_steps=200, train_steps=4, batch_size=2,
                     fidelity_windows=2, horizon=4, agent_steps=64, eval_episodes=1, record=str(record),
                     progress=False)
    stages = s["stages"]
    assert list(stages) == ["collect", "train", "fidelity", "rl"]
    assert s["total_seconds"] >= sum(st["seconds"] for st in stages.values())
    assert stages["collect"]["frames"] == 200
    assert stages["train"]["steps"] == 4 and not stages["train"]["stopped_by_time"]  # 4 steps within 4 minutes
    for name in ("summary.md", "summary.json", "training_loss.png", "fidelity.png", "fidelity_rollout.gif", "rl.png",
                 "fidelity.json", "rl.json"):
        assert (out / name).exists(), name

    # the training numbers come from the run's own metrics log
    logged = [json.loads(line) for line in (out / "world_model" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["diffusion"] for row in logged if "diffusion" in row]
    assert stages["train"]["loss_first"] == losses[0] and stages["train"]["loss_curve"] == losses

    # the summary prints what the stage result files hold
    fid = json.loads((out / "fidelity.json").read_text())
    rl = json.loads((out / "rl.json").read_text())
    table = summary_table(s)
    assert f"PSNR h=1 {fid['model']['1']['psnr']['mean']:.2f} dB" in table
    assert f"foreground retention h=4 {fid['foreground_retention']['model']['4']:.2f}" in table
    assert f"motion h=4 {fid['motion']['model']['4']:.2f} of the real change" in table
    assert f"random {rl['random']['mean']:,.1f}" in table
    assert (f"sampling the agents' actions: imagination-trained {rl['imagination']['stochastic']['mean']:,.1f}, "
            f"real-trained {rl['real_trained']['stochastic']['mean']:,.1f}") in table
    assert table in (out / "summary.md").read_text()
    assert table in render("main_job", json.loads(record.read_text()))


def test_main_job_train_minutes_caps_training(tiny_world_model: str, tmp_path: Path) -> None:
    """On a slow machine the training stage stops at --train-minutes, and the report says so."""
    from diffusion_world.main_job import run_main_job, summary_table

    card = tmp_path / "card.toml"
    card.write_text(CARD)
    s = run_main_job(tmp_path / "report", str(card), tiny_world_model, collect_steps=200, train_steps=50,
                     batch_size=2, fidelity_windows=1, horizon=2, agent_steps=32, eval_episodes=1, progress=False,
                     train_minutes=1e-9)
    t = s["stages"]["train"]
    assert t["steps"] == 1 and t["steps_planned"] == 50 and t["stopped_by_time"]
    assert t["supervised_frames"] == 1 * 2 * 4  # the step done x batch 2 x the card's seq_len 4
    assert "1 steps (of 50: stopped by the 1e-09-minute cap)" in summary_table(s)
    assert (tmp_path / "report" / "world_model" / "dashboard.png").exists()
    with pytest.raises(UserError, match="train_minutes"):
        run_main_job(tmp_path / "bad", str(card), tiny_world_model, train_minutes=-1, progress=False)


def test_main_job_outside_the_repository_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a pip install, `python -m diffusion_world.main_job` elsewhere: its card is the repository's."""
    from diffusion_world.main_job import run_main_job

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="runs from the root of the diffusion_world repository"):
        run_main_job(tmp_path / "out")
    assert not (tmp_path / "out").exists()
