"""The main job: the whole pipeline on one env card at a small budget, in one command.

``python -m diffusion_world.main_job --out reports/main`` (``bash scripts/main.sh`` sets up ``.venv`` first):

1. **collect** a fresh pixel dataset with the card's collection policy (for CartPole: the committed PPO state
   expert with epsilon-random actions), with episode seeds the shipped model's data never used;
2. **train** a world model on it briefly (the loss curve shows it falling): ``--train-steps`` steps or
   ``--train-minutes`` of training, whichever ends first, so that a slow CPU still finishes in minutes;
3. **fidelity** of the shipped model on those fresh episodes, against "repeat the last real frame" (plot + a
   real | imagined | error GIF);
4. **RL**: PPO trained only in the shipped model's imagination, evaluated in the real pixel env, against PPO
   trained in the real env for the same steps and a random policy;
5. a **report folder** (``summary.md``, ``summary.json``, plots, GIF) and the summary table on stdout.

Every number printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from diffusion_world.bench.common import machine_info
from diffusion_world.errors import UserError
from diffusion_world.files import save_figure

HELDOUT_SEED = 1_000_000  # episode seeds from here on: never used by the shipped model's collection (seeds 0, 1, ...)


def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:,.{digits}f}"


def loss_curve(metrics_path: Path) -> tuple[list[int], list[float]]:
    """(steps, EDM-weighted denoising error) from a training run's metrics.jsonl."""
    steps, values = [], []
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if "diffusion" in row:
            steps.append(int(row["step"]))
            values.append(float(row["diffusion"]))
    return steps, values


def plot_loss(path: Path, steps: list[int], values: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    ax.plot(steps, values, "o-", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("denoising error (EDM-weighted)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def _termination_text(f: dict[str, Any]) -> str:
    tf = f.get("termination_real_frames")  # absent from results recorded before it was measured
    if not tf:
        return ""
    rate = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731  (None: nothing to divide by)
    return (f"; terminations teacher-forced on the {tf['frames']:,} real frames: recall {rate(tf['recall'])} "
            f"(real terminations: {tf['positives']}), precision {rate(tf['precision'])}")


def _time_cap_text(t: dict[str, Any]) -> str:
    if not t.get("stopped_by_time"):  # absent from results recorded before the cap existed
        return ""
    return f" (of {t['steps_planned']}: stopped by the {t['max_minutes']:g}-minute cap)"


def summary_table(summary: dict[str, Any]) -> str:
    s = summary["stages"]
    c, t, f, r = s["collect"], s["train"], s["fidelity"], s["rl"]
    rows = [
        ("collect", c["seconds"], f"{c['frames']:,} frames, {c['episodes']} episodes ({c['policy']}, "
                                  f"epsilon {c['epsilon']})"),
        ("train (brief)", t["seconds"], f"{t['steps']} steps{_time_cap_text(t)}, {t['supervised_frames']:,} "
                                        f"supervised frames: denoising error {t['loss_first']:.3f} -> "
                                        f"{t['loss_last']:.3f}"),
        ("fidelity (shipped)", f["seconds"],
         f"PSNR h=1 {f['psnr_h1']:.2f} dB, h={f['horizon']} {f['psnr_hmax']:.2f} dB "
         f"(repeat-last-frame {f['repeat_last_psnr_h1']:.2f} / {f['repeat_last_psnr_hmax']:.2f} dB); "
         f"SSIM h={f['horizon']} {f['ssim_hmax']:.3f}"
         + (f"; foreground retention h={f['horizon']} {f['foreground_retention_hmax']:.2f}"
            if f.get("foreground_retention_hmax") is not None else "")
         + (f"; motion h={f['horizon']} {f['motion_hmax']:.2f} of the real change"
            if f.get("motion_hmax") is not None else "") + _termination_text(f)),
        ("RL (shipped)", r["seconds"],
         f"{r['agent_steps']:,} PPO steps; real-env return: imagination-trained {_fmt(r['imagination_mean'])} "
         f"± {_fmt(r['imagination_std'])}, real-trained {_fmt(r['real_trained_mean'])} "
         f"± {_fmt(r['real_trained_std'])}, random {_fmt(r['random_mean'])} ± {_fmt(r['random_std'])}"
         + (f"; sampling the agents' actions: imagination-trained {_fmt(r['imagination_sampled_mean'])}, "
            f"real-trained {_fmt(r['real_trained_sampled_mean'])}" if "imagination_sampled_mean" in r else "")),
    ]
    lines = ["| stage | seconds | result |", "|---|---:|---|"]
    lines += [f"| {name} | {sec:.0f} | {text} |" for name, sec, text in rows]
    lines.append(f"| **total** | {summary['total_seconds']:.0f} | |")
    return "\n".join(lines)


def write_summary_md(out: Path, summary: dict[str, Any]) -> None:
    m = summary["machine"]
    text = f"""# Main job report

{summary_table(summary)}

Machine: {m['cpu']} ({m['cpu_count']} cores), torch {m['torch']} ({m['torch_threads']} threads),
diffusion_world {m['package_version']} @ {(m['git_commit'] or 'unknown')[:10]}, {m['date']}.
Shipped world model: `{summary['world_model']}` (step {summary['stages']['fidelity']['checkpoint_step']}).

## Training (brief, on the freshly collected data)

![loss](training_loss.png)

`world_model/dashboard.png` shows real vs imagined frames of a validation episode at the end of this short run:
{summary['stages']['train']['steps']} steps are far too few for a usable model; the shipped model is the one
trained for long (see `diffusion_world/shipped/cartpole.json`).

## Fidelity of the shipped model on episodes it never saw

![fidelity](fidelity.png)

Real | imagined | absolute error, one held-out window ({summary['stages']['fidelity']['context_frames']} real
context frames, then the real actions):

![rollout](fidelity_rollout.gif)

## RL transfer

PPO (CnnPolicy, 4-frame stack) trained for {summary['stages']['rl']['agent_steps']:,} steps only in the
shipped model's imagination, evaluated in the real pixel env on {summary['stages']['rl']['eval_episodes']}
unseen episodes, next to PPO trained in the real pixel env for the same steps and a random policy (`rl.json`).

![learning curves](rl.png)

A budget this small shows that the loop runs end to end, not how good transfer gets. An agent that has learned
little is nearly uniform, and its greedy action is then one fixed action, which in CartPole does worse than random
play: the table also gives the return when the agents' actions are sampled. For transfer at 50,000 steps over
several seeds see `rl_50k_sampled_seeds` in the README's benchmark results (`benchmarks/results/`).
"""
    (out / "summary.md").write_text(text)


def run_main_job(out: str | Path = "reports/main", card: str = "envs/cartpole.toml", world_model: str = "cartpole",
                 collect_steps: int = 3_000, train_steps: int = 100, batch_size: int = 4, fidelity_windows: int = 8,
                 horizon: int = 16, agent_steps: int = 2_000, eval_episodes: int = 5,
                 seed: int = 0, record: str | None = None, progress: bool = True,
                 train_minutes: float = 4.0) -> dict[str, Any]:
    from diffusion_world.bench.fidelity import run_fidelity
    from diffusion_world.bench.rl import plot_curves, run_rl
    from diffusion_world.cards import load_card
    from diffusion_world.checkpoint import load_checkpoint
    from diffusion_world.data.collect import collect, minari_root
    from diffusion_world.training.train import config_from_card, train

    if train_minutes < 0:
        raise UserError(f"train_minutes must be >= 0 (0: no time cap), got {train_minutes}")
    out = Path(out)
    if card == "envs/cartpole.toml" and not Path(card).exists():
        raise UserError("the main job runs from the root of the diffusion_world repository (its env card "
                        "envs/cartpole.toml and the CartPole expert it names are not part of the installed package): "
                        "cd there, or give --card with a card of your own")
    card_ = load_card(card)
    env, col = card_.env, card_.collect
    dataset_id = col.get("dataset_id", "diffusion_world/main-v0").rsplit("-v", 1)[0] + "-mainjob-v0"
    data_root = out / "data"
    for old in (data_root, out / "world_model"):  # every run collects and trains afresh: its numbers are its own
        if old.exists():
            shutil.rmtree(old)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    stages: dict[str, Any] = {}
    t_start, machine = time.perf_counter(), machine_info()  # the load before this job adds its own

    with minari_root(data_root):
        say(f"[1/4] collect {collect_steps} steps of {env['id']} pixels ({col.get('policy', 'random')}, "
            f"epsilon {col.get('epsilon', 0.0)}, episode seeds from {HELDOUT_SEED + seed})")
        t0 = time.perf_counter()
        ds = collect(env["id"], dataset_id, collect_steps, size=int(env.get("size", 64)),
                     frame_skip=int(env.get("frame_skip", 1)), policy=str(col.get("policy", "random")),
                     epsilon=float(col.get("epsilon", 0.0)), seed=HELDOUT_SEED + seed, progress=progress,
                     env_kwargs=env.get("env_kwargs") or None)
        stages["collect"] = {"seconds": time.perf_counter() - t0, "frames": int(ds.total_steps),
                             "episodes": int(ds.total_episodes), "policy": str(col.get("policy", "random")),
                             "epsilon": float(col.get("epsilon", 0.0)), "dataset_id": dataset_id}

        cap = f" or {train_minutes:g} minutes, whichever ends first" if train_minutes else ""
        say(f"[2/4] train a world model for {train_steps} steps{cap} (batch {batch_size})")
        t0 = time.perf_counter()
        cfg = config_from_card(card, dataset_id=dataset_id, out_dir=str(out / "world_model"), steps=train_steps,
                               batch_size=batch_size, warmup_steps=max(1, train_steps // 4),
                               eval_every=train_steps, checkpoint_every=train_steps, log_every=5,
                               progress=progress, seed=seed, max_minutes=train_minutes)
        done = int(load_checkpoint(train(cfg))["step"])  # fewer than train_steps where the time cap stopped it
        steps, values = loss_curve(out / "world_model" / "metrics.jsonl")
        plot_loss(out / "training_loss.png", steps, values, f"{env['id']}: {done} steps on {collect_steps} "
                  "fresh frames")
        k = max(1, len(values) // 5)
        stages["train"] = {"seconds": time.perf_counter() - t0, "steps": done, "steps_planned": train_steps,
                           "max_minutes": train_minutes, "stopped_by_time": done < train_steps,
                           "batch_size": batch_size, "supervised_frames": done * batch_size * cfg.seq_len,
                           "loss_first": values[0], "loss_last": sum(values[-k:]) / k, "loss_curve": values}

        say(f"[3/4] fidelity of the shipped model {world_model!r} on the fresh episodes")
        t0 = time.perf_counter()
        fid = run_fidelity(world_model, out, dataset_id=dataset_id, horizon=horizon, num_windows=fidelity_windows,
                           sampler_sweep=(), seed=seed, progress=progress)
    (out / "fidelity.json").write_text(json.dumps(fid, indent=1))
    hmax = str(fid["horizons"][-1])
    stages["fidelity"] = {
        "seconds": time.perf_counter() - t0, "horizon": horizon, "windows": fid["num_windows"],
        "context_frames": fid["context_frames"], "checkpoint_step": fid["checkpoint_step"],
        "psnr_h1": fid["model"]["1"]["psnr"]["mean"], "psnr_hmax": fid["model"][hmax]["psnr"]["mean"],
        "ssim_hmax": fid["model"][hmax]["ssim"]["mean"],
        "foreground_retention_hmax": fid["foreground_retention"]["model"][hmax],
        "motion_hmax": fid["motion"]["model"][hmax],
        "repeat_last_psnr_h1": fid["repeat_last_frame"]["1"]["psnr"]["mean"],
        "repeat_last_psnr_hmax": fid["repeat_last_frame"][hmax]["psnr"]["mean"],
        "reward_mae": fid["reward_mae"], "termination_f1": fid["termination"]["f1"],
        "termination_real_frames": fid["termination_real_frames"],
    }

    say(f"[4/4] PPO for {agent_steps} steps in imagination and in the real env; evaluation in the real env")
    t0 = time.perf_counter()
    rl = run_rl(world_model, agent_steps=agent_steps, eval_episodes=eval_episodes, seed=seed,
                horizon=card_.imagination.get("horizon"), progress=progress)
    (out / "rl.json").write_text(json.dumps(rl, indent=1))
    plot_curves(rl, out / "rl.png")
    stages["rl"] = {
        "seconds": time.perf_counter() - t0, "agent_steps": agent_steps, "eval_episodes": eval_episodes,
        "imagination_mean": rl["imagination"]["mean"], "imagination_std": rl["imagination"]["std"],
        "real_trained_mean": rl["real_trained"]["mean"], "real_trained_std": rl["real_trained"]["std"],
        "random_mean": rl["random"]["mean"], "random_std": rl["random"]["std"],
        # a policy that learned little is near-uniform and its greedy action one fixed action (worse than random
        # in CartPole): the sampled policy's return says more at this budget
        "imagination_sampled_mean": rl["imagination"]["stochastic"]["mean"],
        "real_trained_sampled_mean": rl["real_trained"]["stochastic"]["mean"],
    }
    summary: dict[str, Any] = {"card": str(card), "world_model": world_model, "stages": stages,
                               "total_seconds": time.perf_counter() - t_start, "machine": machine}
    f, t, r = stages["fidelity"], stages["train"], stages["rl"]
    summary["headline"] = {
        "total_minutes": summary["total_seconds"] / 60, "train_loss_first": t["loss_first"],
        "train_loss_last": t["loss_last"], "psnr_h1": f["psnr_h1"], f"psnr_h{horizon}": f["psnr_hmax"],
        f"repeat_last_psnr_h{horizon}": f["repeat_last_psnr_hmax"], "agent_steps": agent_steps,
        "imagination_return_mean": r["imagination_mean"], "real_trained_return_mean": r["real_trained_mean"],
        "random_return_mean": r["random_mean"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if record:
        from diffusion_world.bench.run import record_result

        record_result(Path(record).parent, Path(record).stem, dict(summary))
    write_summary_md(out, summary)
    say("\n" + summary_table(summary) + f"\n\nreport: {out}/summary.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/main")
    p.add_argument("--card", default="envs/cartpole.toml")
    p.add_argument("--world-model", default="cartpole", help="model for the fidelity and RL stages")
    p.add_argument("--collect-steps", type=int, default=3_000)
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--train-minutes", type=float, default=4.0,
                   help="stop training after this many minutes if --train-steps are not done by then (0: no cap); "
                        "keeps the whole job near 10 minutes on slow CPUs")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--fidelity-windows", type=int, default=8)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--agent-steps", type=int, default=2_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", help="also write the summary as a benchmark result, e.g. "
                                    "benchmarks/results/main_job.json (regenerates the README tables)")
    args = p.parse_args(argv)
    try:
        run_main_job(args.out, args.card, args.world_model, args.collect_steps, args.train_steps, args.batch_size,
                     args.fidelity_windows, args.horizon, args.agent_steps, args.eval_episodes, args.seed,
                     args.record, train_minutes=args.train_minutes)
    except UserError as e:
        print(f"main job: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
