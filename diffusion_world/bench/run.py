"""``diffusion-world benchmark {fidelity,memory,speed,rl,termination,control,random_play}``: run one suite, write
JSON + Markdown (+ PNG) into ``--out``, and regenerate ``README.md`` next to the results directory when it is
``benchmarks/results``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusion_world.bench.common import machine_info, write_result
from diffusion_world.bench.report import make_readme, render, update_readme_section
from diffusion_world.errors import UserError

SUITES = ("fidelity", "memory", "speed", "rl", "termination", "control", "random_play")


def run_benchmark(suite: str, world_model: str | None, out: str | Path = "benchmarks/results", card: str | None = None,
                  quick: bool = False, device: str = "cpu", name: str | None = None,
                  short_memory: str | None = None, dataset_id: str | None = None,
                  termination: str | None = None, agent_steps: int | None = None, parallel: bool = False,
                  seed: int | None = None, sampler_steps: int | None = None) -> Path:
    """Run one suite. ``sampler_steps`` (K, denoiser calls per imagined frame) overrides the card's
    ``[imagination] sampler_steps``, which overrides the checkpoint's."""
    out = Path(out)
    stem = name or (f"{suite}_quick" if quick else suite)
    for option, value in (("termination", termination), ("agent_steps", agent_steps), ("parallel", parallel),
                          ("seed", seed)):
        if value not in (None, False) and suite != "rl":
            raise UserError(f"{option} applies to benchmark rl only")
    for option, value in (("agent_steps", agent_steps), ("sampler_steps", sampler_steps)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be positive, got {value}")
    machine = machine_info()  # at the start: the commit that runs and the load before the benchmark adds its own
    fingerprint = None
    if world_model and suite != "memory":
        from diffusion_world.checkpoint import world_model_fingerprint

        try:  # the file that runs, read before a long run could see it replaced
            fingerprint = world_model_fingerprint(world_model)
        except UserError:
            pass  # not found: the suite says so
    imagination: dict[str, Any] = {}
    if card:
        from diffusion_world.cards import load_card

        imagination = load_card(card).imagination
    K = sampler_steps or imagination.get("sampler_steps")  # None: the checkpoint's own
    if suite == "fidelity":
        from diffusion_world.bench.fidelity import run_fidelity

        if not world_model:
            raise UserError("benchmark fidelity needs --world-model")
        result = run_fidelity(world_model, out, dataset_id=dataset_id, context=imagination.get("context_frames"),
                              horizon=16 if quick else 32, num_windows=8 if quick else 32,
                              sampler_sweep=(1, 3) if quick else (1, 2, 3, 5, 10), short_memory=short_memory,
                              device=device, sampler_steps=K, stem=stem)
    elif suite == "speed":
        from diffusion_world.bench.speed import run_speed

        result = run_speed(world_model, device=device, quick=quick,
                           sampler_steps=int(K or 3))
    elif suite == "memory":  # trains its own pair of models on its own env: no --world-model
        from diffusion_world.bench.memory import run_memory

        result = run_memory(out, quick=quick, device=device, stem=stem, **({"sampler_steps": int(K)} if K else {}))
    elif suite == "termination":
        from diffusion_world.bench.termination import run_termination

        if not world_model:
            raise UserError("benchmark termination needs --world-model")
        result = run_termination(world_model, dataset_id=dataset_id, context=imagination.get("context_frames"),
                                 max_episodes=16 if quick else 128, sampler_steps=K,
                                 device=device)
    elif suite == "control":
        from diffusion_world.bench.control import run_control

        if not world_model:
            raise UserError("benchmark control needs --world-model")
        result = run_control(world_model, out, num_starts=8 if quick else 32, horizon=8 if quick else 12,
                             context=imagination.get("context_frames"), sampler_steps=K,
                             device=device, stem=stem)
    elif suite == "random_play":
        from diffusion_world.bench.random_play import run_random_play

        if not world_model:
            raise UserError("benchmark random_play needs --world-model")
        result = run_random_play(world_model, out, num_envs=8 if quick else 32, steps=32 if quick else 100,
                                 dataset_id=dataset_id, device=device, sampler_steps=K, stem=stem)
    elif suite == "rl":
        from diffusion_world.bench.rl import plot_curves, run_rl

        if not world_model:
            raise UserError("benchmark rl needs --world-model")
        steps = agent_steps or (2_000 if quick else 20_000)
        result = run_rl(world_model, agent_steps=steps, eval_episodes=3 if quick else 10,
                        horizon=imagination.get("horizon"), parallel=parallel, seed=seed or 0,
                        imagination_kwargs={**({"termination": termination} if termination else {}),
                                            **({"sampler_steps": int(K)} if K else {})} or None)
        out.mkdir(parents=True, exist_ok=True)
        plot_curves(result, out / f"{stem}.png")
    else:
        raise UserError(f"unknown benchmark {suite!r}; choose one of {', '.join(SUITES)}")
    result["quick"] = quick
    if fingerprint:
        result["model_sha256"] = fingerprint
    result["machine"] = machine
    return record_result(out, stem, result)


def record_result(out: str | Path, stem: str, result: dict[str, Any]) -> Path:
    """Write ``out/stem.json`` (with the machine) and ``out/stem.md``; when ``out`` is ``benchmarks/results``,
    regenerate ``benchmarks/README.md`` and the README's benchmark block from all result files."""
    out = Path(out)
    path = write_result(out / f"{stem}.json", result)
    (out / f"{stem}.md").write_text(render(stem, json.loads(path.read_text())))
    if out.resolve().name == "results" and out.resolve().parent.name == "benchmarks":
        make_readme(out, out.parent / "README.md")
        update_readme_section(out.parent.parent / "README.md", out)
    return path
