"""``diffusion-world benchmark {fidelity,memory,speed,rl,termination,control,random_play}``: run one suite, write
JSON + Markdown (+ PNG) into ``--out``, and regenerate ``README.md`` next to the results directory when it is
``benchmarks/results``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusion_world.bench.common import machine_info, training_end_return, write_result
from diffusion_world.bench.report import README_TITLE, make_readme, render, update_readme_section
from diffusion_world.checkpoint import check_device
from diffusion_world.data.pixel_env import recorded_env_id
from diffusion_world.errors import UserError, writable_dir
from diffusion_world.files import atomic_write_text
from diffusion_world.precision import check_precision

SUITES = ("fidelity", "memory", "speed", "rl", "termination", "control", "random_play")
# the suites that read each suite-specific option: given to another suite, it is refused rather than ignored
OPTION_SUITES = {"termination": ("rl",), "agent_steps": ("rl",), "parallel": ("rl",), "seed": ("rl",),
                 "reset_mode": ("rl",), "horizon": ("rl", "fidelity", "random_play"), "reference_cache": ("rl",),
                 "short_memory": ("fidelity",), "dataset_id": ("fidelity", "termination", "random_play"),
                 "precision": ("fidelity", "termination", "control", "random_play", "rl"),
                 "context_source": ("random_play",)}


def card_imagination(card: str | None, world_model: str | None, section: str = "imagination") -> dict[str, Any]:
    """The ``[imagination]`` settings of ``card`` (none without one; ``section="rl"``: its PPO settings), refused
    when the card describes another env than the one the world model learned (its settings would be another
    model's)."""
    if not card:
        return {}
    from diffusion_world.cards import load_card
    from diffusion_world.checkpoint import load_checkpoint, resolve_world_model

    parsed = load_card(card)
    if world_model:
        try:
            spec = (load_checkpoint(resolve_world_model(world_model)).get("dataset") or {}).get("env_spec") or {}
        except UserError:
            spec = {}  # not found: the suite says so
        learned = recorded_env_id(spec)
        if learned and learned != parsed.env["id"]:
            raise UserError(f"card {card!r} describes {parsed.env['id']}, but the world model {world_model!r} learned "
                            f"{learned}: give its own card, or none")
    return dict(getattr(parsed, section))


def run_benchmark(suite: str, world_model: str | None, out: str | Path = "benchmarks/results", card: str | None = None,
                  quick: bool = False, device: str = "cpu", name: str | None = None,
                  short_memory: str | None = None, dataset_id: str | None = None,
                  termination: str | None = None, agent_steps: int | None = None, parallel: bool = False,
                  seed: int | Sequence[int] | None = None, sampler_steps: int | None = None,
                  history_guidance: float | None = None, reset_mode: str | None = None,
                  horizon: int | None = None, reference_cache: str | None = None,
                  precision: str | None = None, context_source: str | None = None) -> Path:
    """Run one suite. ``sampler_steps`` (K, denoiser calls per imagined frame) overrides the card's
    ``[imagination] sampler_steps``, which overrides the checkpoint's; so does ``history_guidance`` (the
    sampler's w, 1 = off). ``seed`` (rl): one seed, or several: see
    :func:`run_rl_seeds`. ``reset_mode`` and ``horizon`` (rl): where the imagined episodes the agent trains in
    start (``"episode_start"``, the default, or ``"anywhere"`` in the dataset) and where they are cut (default:
    the card's ``[imagination] horizon``, else the checkpoint's), e.g. DIAMOND's short imagined episodes from
    real states: ``reset_mode="anywhere", horizon=15``; ``horizon`` (fidelity): the imagined steps of each
    replayed window (default 32, ``quick`` 16); ``horizon`` (random_play): the steps each episode may last
    (default 100, ``quick`` 32). ``reference_cache`` (rl): a directory that keeps the
    real-env reference agents for reuse (see :func:`diffusion_world.bench.rl.run_rl`). ``precision``: the imagined
    rollouts in ``"fp32"`` (the default) or ``"bf16"`` autocast, as the imagined envs' ``precision``; recorded in
    the result when given. ``context_source`` (random_play): ``"checkpoint"`` or ``"dataset"`` reset contexts
    (default ``"auto"``: the dataset when it is on this machine, else those stored in the checkpoint)."""
    out = Path(out)
    stem = name or (f"{suite}_quick" if quick else suite)
    given = {"termination": termination is not None, "agent_steps": agent_steps is not None, "parallel": parallel,
             "seed": seed is not None, "short_memory": short_memory is not None,
             "dataset_id": dataset_id is not None, "reset_mode": reset_mode is not None,
             "horizon": horizon is not None, "reference_cache": reference_cache is not None,
             "precision": precision is not None, "context_source": context_source is not None}
    for option, is_given in given.items():
        if is_given and suite not in OPTION_SUITES[option]:
            raise UserError(f"{option} (--{option.replace('_', '-')}) applies to benchmark "
                            f"{' / '.join(OPTION_SUITES[option])} only, not to {suite}")
    if suite == "memory" and world_model:
        raise UserError("benchmark memory trains and compares its own two models on a cue-memory env: "
                        "--world-model does not apply to it")
    check_device(device)
    if precision is not None:
        check_precision(precision)
    amp: dict[str, Any] = {} if precision is None else {"precision": precision}
    if seed is not None:
        seeds = [seed] if isinstance(seed, int) else [int(s) for s in seed]
        if any(s < 0 for s in seeds):
            raise UserError(f"seeds must be >= 0, got {seeds}")
    if seed is not None and not isinstance(seed, int):
        seeds = [int(s) for s in seed]
        if len(seeds) != len(set(seeds)) or not seeds:
            raise UserError(f"seeds must be distinct, got {seeds}")
        if len(seeds) > 1:
            return run_rl_seeds(seeds, world_model, out, stem, card=card, quick=quick, device=device,
                                termination=termination, agent_steps=agent_steps, parallel=parallel,
                                sampler_steps=sampler_steps, history_guidance=history_guidance,
                                reset_mode=reset_mode, horizon=horizon, reference_cache=reference_cache,
                                precision=precision)
        seed = seeds[0]
    for option, value in (("agent_steps", agent_steps), ("sampler_steps", sampler_steps), ("horizon", horizon)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be positive, got {value}")
    writable_dir(out, "the results folder (--out)")  # before the run: its results would be lost at the end
    machine = machine_info()  # at the start: the commit that runs and the load before the benchmark adds its own
    fingerprint = None
    if world_model and suite != "memory":
        from diffusion_world.checkpoint import world_model_fingerprint

        try:  # the file that runs, read before a long run could see it replaced
            fingerprint = world_model_fingerprint(world_model)
        except UserError:
            pass  # not found: the suite says so
    imagination = card_imagination(card, world_model)
    K = sampler_steps or imagination.get("sampler_steps")  # None: the checkpoint's own
    w = history_guidance if history_guidance is not None else imagination.get("history_guidance")
    guidance: dict[str, Any] = {} if w is None else {"history_guidance": float(w)}
    if suite == "fidelity":
        from diffusion_world.bench.fidelity import run_fidelity

        if not world_model:
            raise UserError("benchmark fidelity needs --world-model")
        result = run_fidelity(world_model, out, dataset_id=dataset_id, context=imagination.get("context_frames"),
                              horizon=horizon or (16 if quick else 32), num_windows=8 if quick else 32,
                              sampler_sweep=(1, 3) if quick else (1, 2, 3, 5, 10), short_memory=short_memory,
                              device=device, sampler_steps=K, stem=stem, **guidance, **amp)
    elif suite == "speed":
        from diffusion_world.bench.speed import run_speed

        result = run_speed(world_model, device=device, quick=quick,
                           sampler_steps=int(K or 3), **guidance)
    elif suite == "memory":  # trains its own pair of models on its own env: no --world-model
        from diffusion_world.bench.memory import run_memory

        if guidance:
            raise UserError("benchmark memory trains its own models: --history-guidance does not apply")
        steps_kw: dict[str, Any] = {"sampler_steps": int(K)} if K else {}
        result = run_memory(out, quick=quick, device=device, stem=stem, **steps_kw)
    elif suite == "termination":
        from diffusion_world.bench.termination import run_termination

        if not world_model:
            raise UserError("benchmark termination needs --world-model")
        result = run_termination(world_model, dataset_id=dataset_id, context=imagination.get("context_frames"),
                                 max_episodes=16 if quick else 128, sampler_steps=K,
                                 device=device, out=out, stem=stem, **guidance, **amp)
    elif suite == "control":
        from diffusion_world.bench.control import run_control

        if not world_model:
            raise UserError("benchmark control needs --world-model")
        result = run_control(world_model, out, num_starts=8 if quick else 32, horizon=8 if quick else 12,
                             context=imagination.get("context_frames"), sampler_steps=K,
                             device=device, stem=stem, **guidance, **amp)
    elif suite == "random_play":
        from diffusion_world.bench.random_play import run_random_play

        if not world_model:
            raise UserError("benchmark random_play needs --world-model")
        result = run_random_play(world_model, out, num_envs=8 if quick else 32,
                                 steps=horizon or (32 if quick else 100),
                                 dataset_id=dataset_id, device=device, sampler_steps=K, stem=stem, **guidance,
                                 **amp, context_source=context_source or "auto")
    elif suite == "rl":
        from diffusion_world.bench.rl import plot_curves, run_rl

        if not world_model:
            raise UserError("benchmark rl needs --world-model")
        settings = _rl_settings(quick, termination, agent_steps, K, w, reset_mode, horizon, precision)
        result = run_rl(world_model, agent_steps=settings["agent_steps"], eval_episodes=settings["eval_episodes"],
                        horizon=imagination.get("horizon"), parallel=parallel, seed=seed or 0,
                        imagination_kwargs=settings["imagination_kwargs"] or None, reference_cache=reference_cache,
                        ppo=card_imagination(card, world_model, "rl") or None)
        out.mkdir(parents=True, exist_ok=True)
        plot_curves(result, out / f"{stem}.png")
    else:
        raise UserError(f"unknown benchmark {suite!r}; choose one of {', '.join(SUITES)}")
    result["quick"] = quick
    if precision is not None:
        result["precision"] = precision
    if fingerprint:
        result["model_sha256"] = fingerprint
    result["machine"] = machine
    return record_result(out, stem, result)


def _rl_settings(quick: bool, termination: str | None, agent_steps: int | None, K: Any,
                 w: Any = None, reset_mode: str | None = None, horizon: int | None = None,
                 precision: str | None = None) -> dict[str, Any]:
    """What a ``benchmark rl`` result depends on besides the model and the seed, as its JSON records it."""
    return {"agent_steps": agent_steps or (2_000 if quick else 20_000), "eval_episodes": 3 if quick else 10,
            "imagination_kwargs": {**({"termination": termination} if termination else {}),
                                   **({"sampler_steps": int(K)} if K else {}),
                                   **({"history_guidance": float(w)} if w is not None else {}),
                                   **({"reset_mode": reset_mode} if reset_mode else {}),
                                   **({"horizon": int(horizon)} if horizon else {}),
                                   **({"precision": precision} if precision else {})}, "quick": quick}


def run_rl_seeds(seeds: Sequence[int], world_model: str | None, out: Path, stem: str, card: str | None = None,
                 quick: bool = False, **kwargs: Any) -> Path:
    """``benchmark rl --seed S1 S2 ...``: one result ``<stem>_seed<S>`` per seed, then ``<stem>_seeds``: each
    seed's returns and their mean, spread and range over the seeds (PPO's spread over seeds is often larger than
    the difference between two world models). A seed whose result file already holds this run (same model file,
    settings and seed) is reused, not rerun: an interrupted sweep resumes, and adding a seed costs one run."""
    if not world_model:
        raise UserError("benchmark rl needs --world-model")
    from diffusion_world.checkpoint import world_model_fingerprint

    fingerprint = world_model_fingerprint(world_model)
    K, w = kwargs.get("sampler_steps"), kwargs.get("history_guidance")
    if card:
        imagination = card_imagination(card, world_model)
        K = K if K is not None else imagination.get("sampler_steps")
        w = w if w is not None else imagination.get("history_guidance")
    want = _rl_settings(quick, kwargs.get("termination"), kwargs.get("agent_steps"), K, w, kwargs.get("reset_mode"),
                        kwargs.get("horizon"), kwargs.get("precision"))
    from diffusion_world.bench.rl import ppo_settings

    ppo = card_imagination(card, world_model, "rl")
    per_seed: dict[str, dict[str, Any]] = {}
    for s in seeds:
        path = out / f"{stem}_seed{s}.json"
        old = json.loads(path.read_text()) if path.exists() else None
        if old is not None and (old.get("model_sha256") != fingerprint or old.get("seed") != s
                                or any(old.get(k) != v for k, v in want.items())
                                or old.get("ppo") != ppo_settings(want["agent_steps"], old.get("num_envs") or 8, ppo)):
            raise UserError(f"{path} holds another run (model file, seed or settings differ): remove it or choose "
                            f"another --name")
        if old is None:
            print(f"benchmark rl: seed {s} ({seeds.index(s) + 1} of {len(seeds)})")
            path = run_benchmark("rl", world_model, out, card=card, quick=quick, name=f"{stem}_seed{s}", seed=s,
                                 **kwargs)
        else:
            print(f"benchmark rl: seed {s}: reusing {path}")
        per_seed[str(s)] = json.loads(path.read_text())
    return record_result(out, f"{stem}_seeds", seeds_summary(per_seed, stem))


# a seed's numbers that the summary keeps: (key, where in the result)
SEED_VALUES = (("imagination", ("imagination", "mean")), ("imagination_sampled", ("imagination", "stochastic", "mean")),
               ("real_trained", ("real_trained", "mean")), ("random", ("random", "mean")),
               ("imagination_in_imagination", ("in_imagination", "imagination", "mean")),
               ("real_trained_in_imagination", ("in_imagination", "real_trained", "mean")))


def seeds_summary(per_seed: dict[str, dict[str, Any]], stem: str) -> dict[str, Any]:
    """The ``<stem>_seeds`` result from the per-seed ``benchmark rl`` results (``{seed: result}``)."""
    import numpy as np

    first = next(iter(per_seed.values()))
    rows: dict[str, dict[str, Any]] = {}
    for s, r in per_seed.items():
        row: dict[str, Any] = {"result": f"{stem}_seed{s}", "cpu": r.get("machine", {}).get("cpu")}
        for key, where in SEED_VALUES:
            v: Any = r
            for k in where:
                v = v.get(k) if isinstance(v, dict) else None
            row[key] = v
        row["imagination_training_end"] = training_end_return(r)
        rows[s] = row
    spread: dict[str, Any] = {}
    for key in [key for key, _ in SEED_VALUES] + ["imagination_training_end"]:
        vals = np.array([row[key] for row in rows.values() if row[key] is not None], dtype=float)
        spread[key] = ({"mean": float(vals.mean()), "std": float(vals.std()), "min": float(vals.min()),
                        "max": float(vals.max()), "n": len(vals)} if len(vals) else None)
    result = {k: first.get(k) for k in ("world_model", "checkpoint_step", "model_sha256", "env_spec", "agent_steps",
                                        "eval_episodes", "imagination_kwargs", "quick")}
    if first.get("agent_steps_trained") is not None:  # PPO trains whole rollouts: more than a small budget
        result["agent_steps_trained"] = first["agent_steps_trained"]
    result.update({"seeds": [int(s) for s in per_seed], "per_seed": rows, "across_seeds": spread})
    result["headline"] = {"seeds": len(rows), **{f"{key}_mean_over_seeds": (spread[key] or {}).get("mean")
                                                  for key in ("imagination", "real_trained", "random")}}
    return result


def record_result(out: str | Path, stem: str, result: dict[str, Any]) -> Path:
    """Write ``out/stem.json`` (with the machine) and ``out/stem.md``; when ``out`` is ``benchmarks/results``,
    regenerate ``benchmarks/README.md`` and the README's benchmark block from all result files."""
    out = Path(out)
    path = write_result(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", render(stem, json.loads(path.read_text())))
    if out.resolve().name == "results" and out.resolve().parent.name == "benchmarks":
        readme = out.parent / "README.md"
        if readme.exists() and not readme.read_text().startswith(README_TITLE):
            warnings.warn(f"{readme} was not written by diffusion_world's benchmarks: left as it is (the results "
                          f"are in {out})", stacklevel=2)
        else:
            make_readme(out, readme)
        update_readme_section(out.parent.parent / "README.md", out)
    return path
