"""The shipped default world model: `gym.make("DiffusionWorld-v0")` works with no dataset on the machine."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import diffusion_world  # noqa: F401  (registers the envs)
from diffusion_world.checkpoint import SHIPPED, load_checkpoint, resolve_world_model


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_slim_and_documented(name: str) -> None:
    path = resolve_world_model(name)
    assert path.stat().st_size <= 20e6
    ckpt = load_checkpoint(path)
    assert ckpt["provenance"]["exported_from_step"] == ckpt["step"] > 0
    assert ckpt["contexts"]["frames"].shape[0] >= 4  # reset contexts travel with the weights


def test_default_env_runs_without_the_dataset(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # an empty Minari root: no dataset here
    env = gym.make("DiffusionWorld-v0", horizon=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    steps = 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        assert isinstance(reward, float) and isinstance(terminated, bool)
        if terminated or truncated:
            break
    assert steps <= 3
    named = gym.make("DiffusionWorld-v0", world_model="cartpole")
    assert named.observation_space == env.observation_space


def test_cartpole_data_script_names_the_shipped_models_data(monkeypatch) -> None:
    """scripts/cartpole_data.sh (dry run): every command parses with today's CLI, its training mix is the one
    cartpole.json records, and its held-out sets are the ones the committed benchmark results replayed."""
    import json
    import shlex
    import subprocess
    from pathlib import Path

    from diffusion_world.cards import load_card
    from diffusion_world.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("DRY_RUN", "1")
    out = subprocess.run(["bash", str(root / "scripts" / "cartpole_data.sh")], capture_output=True, text=True,
                         check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines()]
    assert len(commands) == 5 and all(c[0] == "diffusion-world" for c in commands)
    parser, _ = build_parser()
    parsed = [parser.parse_args(c[1:]) for c in commands]
    provenance = json.loads((root / "diffusion_world" / "shipped" / "cartpole.json").read_text())["provenance"]
    record = provenance["collect"] + provenance["data"]
    expert = load_card(root / "envs" / "cartpole.toml").collect  # the expert's episodes: the card's settings
    assert commands[0][-2:] == ["--card", "envs/cartpole.toml"] and parsed[0].dataset_id is None
    assert f"--epsilon {expert['epsilon']} --steps {expert['steps']}" in provenance["collect"]
    for c in commands[1:3]:  # random play with post-terminal steps, and the mix: as recorded
        assert " ".join(c[c.index("--card") + 2 if "--card" in c else 1:]) in record
    results = root / "benchmarks" / "results"
    fidelity = json.loads((results / "fidelity.json").read_text())
    tails = json.loads((results / "termination_tails_fp32.json").read_text())
    held_out = {a.dataset_id: a for a in parsed[3:]}
    assert set(held_out) == {fidelity["dataset_id"], tails["dataset_id"]}
    assert held_out[fidelity["dataset_id"]].seed == fidelity["heldout_episode_seeds"][0]


def test_benchmark_candidate_script_replays_the_shipped_models_benchmarks(monkeypatch, tmp_path) -> None:
    """scripts/benchmark_candidate.sh (dry run): every command parses with today's CLI and runs one candidate
    family on the held-out data and contexts of the shipped model's result it is compared with."""
    import json
    import shlex
    import subprocess
    from pathlib import Path

    from diffusion_world.bench.report import CANDIDATE_FAMILIES, CANDIDATE_RL, candidate_stems
    from diffusion_world.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "benchmark_candidate.sh"
    monkeypatch.setenv("DRY_RUN", "1")
    assert subprocess.run(["bash", str(script)], capture_output=True, text=True).returncode == 2  # usage
    out = subprocess.run(["bash", str(script), "runs/cp/checkpoint.pt", "cp1"], capture_output=True, text=True,
                         check=True).stdout
    parser, _ = build_parser()
    parsed = [parser.parse_args(shlex.split(line)[1:]) for line in out.splitlines()]
    assert [a.name for a in parsed] == [f"{family}_cp1" for family in CANDIDATE_FAMILIES]
    assert all(a.world_model == "runs/cp/checkpoint.pt" and a.out == "benchmarks/results" for a in parsed)
    results = {p.stem: json.loads(p.read_text()) for p in (root / "benchmarks" / "results").glob("*.json")}
    refs, _ = candidate_stems(results)
    assert set(refs) - {CANDIDATE_RL} == set(CANDIDATE_FAMILIES)  # committed candidates: compared in every family
    for family, a in zip(CANDIDATE_FAMILIES, parsed):
        ref = results[refs[family]]
        assert a.dataset_id == ref.get("dataset_id")
        if family == "random_play":
            assert a.context_source == "checkpoint" and "stored in the checkpoint" in ref["contexts"]
    # results already in OUT are kept: only the missing ones run
    monkeypatch.setenv("OUT", str(tmp_path))
    (tmp_path / "control_cp1.json").write_text("{}")
    out = subprocess.run(["bash", str(script), "runs/cp/checkpoint.pt", "cp1"], capture_output=True, text=True,
                         check=True).stdout
    assert [parser.parse_args(shlex.split(line)[1:]).name for line in out.splitlines()] == [
        f"{family}_cp1" for family in CANDIDATE_FAMILIES if family != "control"]
    monkeypatch.delenv("OUT")
    # RL_SEEDS: each seed its own result (two at a time, side by side), then the sweep of the shipped model's
    # settings, which its table compares with
    monkeypatch.setenv("RL_SEEDS", "3 4 5")
    out = subprocess.run(["bash", str(script), "runs/cp/checkpoint.pt", "cp1"], capture_output=True, text=True,
                         check=True).stdout
    parsed = [parser.parse_args(shlex.split(line)[1:]) for line in out.splitlines()][len(CANDIDATE_FAMILIES):]
    assert sorted(a.name for a in parsed[:3]) == [f"rl_50k_sampled_cp1_seed{s}" for s in (3, 4, 5)]
    assert parsed[2].seed == [5] and parsed[3].seed == [3, 4, 5]  # 3 and 4 side by side (either order), then 5
    assert parsed[-1].name == "rl_50k_sampled_cp1" and all(a.suite == "rl" for a in parsed)
    shipped = results[CANDIDATE_RL]
    for a in parsed:
        assert a.agent_steps == shipped["agent_steps"] and a.termination == shipped["imagination_kwargs"]["termination"]
        assert a.world_model == "runs/cp/checkpoint.pt" and a.card == "envs/cartpole.toml"


def test_export_shipped_script_refuses_a_note_without_a_value(capsys) -> None:
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "export_shipped.py"))
    with pytest.raises(SystemExit) as exited:  # before: ValueError "dictionary update sequence element #0 ..."
        script["main"](["runs/x/checkpoint.pt", "x", "--note", "collect=a=b", "--note", "badnote"])
    assert exited.value.code == 2 and "argument --note: takes KEY=VALUE, not 'badnote'" in capsys.readouterr().err
    assert script["key_value"]("collect=a=b") == ("collect", "a=b")
