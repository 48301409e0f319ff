"""The ``diffusion-world`` command line.

Each subcommand is an ``_add_<name>`` function that builds its parser and returns the handler that calls the
library. User errors (:class:`UserError`) print one line and exit with status 2; anything else is a bug and
shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from diffusion_world.errors import report_user_errors

Handler = Callable[[argparse.Namespace], int | None]


def _add_collect(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("collect", help="collect pixel trajectories of a Gymnasium env into a Minari dataset")
    p.add_argument("--card", help="env card (TOML) whose [env]/[collect] settings are defaults for the flags")
    p.add_argument("--env", dest="env_id", help="Gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--dataset-id", help="Minari dataset id NAMESPACE/NAME-vN")
    p.add_argument("--steps", type=int, help="number of env steps to collect")
    p.add_argument("--size", type=int, help="frame size in pixels (square), default 64")
    p.add_argument("--frame-skip", type=int, help="repeat each action K times, default 1")
    p.add_argument("--policy", help="'random' or a path to an SB3 model (.zip)")
    p.add_argument("--post-terminal-steps", type=int,
                   help="after each termination keep stepping the env N more steps, recorded as terminal (absorbing) "
                        "states, so that the world model sees what follows a failure (default 0; CartPole can)")
    p.add_argument("--epsilon", type=float, help="probability of a random action instead of the policy's")
    p.add_argument("--seed", type=int, help="base seed; episode i resets with seed+i")
    p.add_argument("--jpeg", action="store_true", help="let Minari JPEG-encode frames (lossy; default: lossless gzip)")
    p.add_argument("--chunk-steps", type=int, help="steps held in memory before writing them, default 5000")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.data.collect import collect_from_args

        collect_from_args(args)
        return 0

    return run


def _add_combine(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("combine", help="merge Minari datasets of one env into a new one (lossless)",
                       description="Merge local Minari datasets of the same env into a new dataset, keeping the "
                                   "frames bit for bit (minari.combine_datasets re-encodes them as lossy JPEG).")
    p.add_argument("dataset_ids", nargs="+", metavar="DATASET_ID", help="the datasets to merge, in order")
    p.add_argument("--out-id", required=True, help="the new dataset's id NAMESPACE/NAME-vN")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.data.collect import combine

        ds = combine(args.dataset_ids, args.out_id)
        print(f"{args.out_id}: {ds.total_episodes} episodes, {ds.total_steps} steps "
              f"(from {', '.join(args.dataset_ids)})")
        return 0

    return run


def _add_render(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("render", help="turn a Minari dataset of states into pixel frames, by replaying it",
                       description="Replay each episode of a local Minari dataset of state observations from its "
                                   "recorded reset seed with its recorded actions, render the env as `collect` "
                                   "does, and write the frames as a new dataset. Every replayed state is checked "
                                   "against the recording: an env that does not reproduce it is an error.")
    p.add_argument("source_id", metavar="SOURCE_ID", help="the local Minari dataset of states to replay")
    p.add_argument("--dataset-id", required=True, help="the new pixel dataset's id NAMESPACE/NAME-vN")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels (square), default 64")
    p.add_argument("--max-episodes", type=int, help="render only the first N episodes (default: all)")
    p.add_argument("--workers", type=int, default=1, help="processes replaying episodes side by side, default 1")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest difference allowed between a replayed and a recorded state, default 1e-4")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.data.collect import render_dataset

        render_dataset(args.source_id, args.dataset_id, size=args.size, atol=args.atol, progress=not args.quiet,
                       max_episodes=args.max_episodes, workers=args.workers)
        return 0

    return run


def _add_train(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("train", help="train a DART world model on a Minari image dataset",
                       description="Train (or resume) a world model. Settings: defaults < --card < flags. "
                                   "Multi-GPU: torchrun --nproc_per_node=G -m diffusion_world.cli train ...")
    p.add_argument("--card", help="env card (TOML): dataset id, [model], [train] and [imagination] settings")
    p.add_argument("--dataset-id", help="Minari dataset id (default: the card's [collect] dataset_id)")
    p.add_argument("--out", required=True, help="output directory (checkpoint.pt, metrics.jsonl, dashboard.png)")
    p.add_argument("--preset", choices=["tiny", "small", "base"], help="model size preset (default small)")
    p.add_argument("--frame-size", type=int, metavar="N",
                   help="resize the dataset's frames to N x N RGB (OpenCV area averaging): for datasets whose frames "
                        "are grey, RGBA, not square or too large, e.g. Minari's 210x160 Atari (default: as stored)")
    p.add_argument("--steps", type=int, help="optimiser steps in total (a resumed run continues up to it)")
    p.add_argument("--batch-size", type=int, help="windows per optimiser step, over all GPUs")
    p.add_argument("--seq-len", type=int, help="window length T (frames)")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation micro-batches per step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--supervision", choices=["dart", "last_frame"], help="DART (all frames) or the ablation")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model: fused kernels, after a first step that compiles (minutes on a CPU)")
    p.add_argument("--attn-backend", choices=["auto", "flex", "sdpa"],
                   help="video attention in training (default auto: FlexAttention on CUDA, dense-mask SDPA elsewhere)")
    p.add_argument("--max-minutes", type=float,
                   help="stop after this much wall-clock time (checkpoint saved; --resume continues)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="autocast precision (default auto: bf16 on CUDA and on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--terminal-fraction", type=float,
                   help="share of windows drawn from those containing a termination, at any position (default 0); "
                        "the termination and reward losses weigh each window back to its uniform probability")
    p.add_argument("--context-window", type=int,
                   help="override the preset's context window in frames (e.g. 4 for a short-memory baseline)")
    p.add_argument("--input-temporal-kernel", type=int,
                   help="frames the input convolution reads (default 1, each frame alone: frames first meet after a "
                        "2x downsampling); k > 1 reads the raw pixels of the last k frames. With --init-from a model "
                        "with a smaller k, the new taps start at zero (the model computes what it did)")
    p.add_argument("--sigma-ctx-max", type=float,
                   help="upper end of the clean stream's context noise (log-uniform from 0.002; default 0.1): "
                        "noisier context in training makes the model lean less on its own imperfect past frames")
    p.add_argument("--init-from", help="start from another run's checkpoint (weights, optimiser, step count), or "
                                       "fine-tune an inference export or shipped model, e.g. 'cartpole' (its EMA "
                                       "weights and step count, a fresh optimiser)")
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=int, help="steps between metrics.jsonl rows (training loss; default 25)")
    p.add_argument("--eval-every", type=int, help="steps between validation loss + dashboard.png")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt with the run's settings (dataset, model, batch, steps...): "
                        "the card and flags are needed only to change what may change, e.g. --steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.training.train import config_from_card, resume_settings, train

        cfg = config_from_card(
            args.card, base=resume_settings(args.out) if args.resume else None, dataset_id=args.dataset_id,
            frame_size=args.frame_size, out_dir=args.out, preset=args.preset,
            steps=args.steps,
            batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=args.grad_accum, lr=args.lr,
            supervision=args.supervision, device=args.device, compile=args.compile,
            attn_backend=args.attn_backend, max_minutes=args.max_minutes, precision=args.precision, seed=args.seed,
            terminal_fraction=args.terminal_fraction, sigma_ctx_max=args.sigma_ctx_max,
            init_from=args.init_from,
            model_overrides={k: v for k, v in (("context_window", args.context_window),
                                               ("input_temporal_kernel", args.input_temporal_kernel)) if v is not None},
            log_every=args.log_every, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
            progress=False if args.quiet else None)
        path = train(cfg, resume=args.resume, card=args.card)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: once, not once per process
            print(f"checkpoint: {path}")
        return 0

    return run


def _add_fit_termination(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("fit-termination", help="train a frame-level termination classifier into a world model",
                       description="Trains a small CNN on real frames (training split of the checkpoint's dataset "
                                   "and of each --extra-dataset-id) to tell terminal frames, and stores it in the "
                                   "checkpoint: the env then scores every imagined frame with it instead of the "
                                   "model's termination head. Validation scores go to termination.json next to it "
                                   "(<name>.termination.json for a checkpoint not named checkpoint.pt).")
    p.add_argument("checkpoint", help="a world-model checkpoint (training checkpoint or export)")
    p.add_argument("--out", help="where to write the checkpoint (default: in place)")
    p.add_argument("--extra-dataset-id", action="append", default=[], metavar="DATASET_ID",
                   help="also train on this dataset's training split (same env; repeatable): e.g. random play, "
                        "which terminates far more often than expert data")
    p.add_argument("--imagined-episodes", type=int, default=0, metavar="N",
                   help="also train on the world model's own imagined frames: it replays the last steps (see "
                        "--imagined-horizon) of N "
                        "training episodes per dataset from their real context, each frame labelled with the real "
                        "episode's termination at that step, so the classifier fires on imagined frames where the "
                        "real episode ends (default 0: real frames only)")
    p.add_argument("--imagined-horizon", type=int, default=16,
                   help="imagined steps replayed at the end of each episode (after its real context), default 16")
    p.add_argument("--imagined-past-end", type=int, default=2,
                   help="where the data goes on after a termination (collect --post-terminal-steps): imagined steps "
                        "replayed past the real terminal frame, labelled terminal, default 2")
    p.add_argument("--imagined-fraction", type=float, default=0.5,
                   help="share of each batch drawn from the imagined frames, default 0.5")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps, default 3000")
    p.add_argument("--batch-size", type=int, default=256, help="frames per step, default 256")
    p.add_argument("--lr", type=float, default=1e-3, help="default 1e-3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.training.termination import TerminationFitConfig, fit_termination, format_report

        cfg = TerminationFitConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                   imagined_episodes=args.imagined_episodes,
                                   imagined_fraction=args.imagined_fraction,
                                   imagined_horizon=args.imagined_horizon,
                                   imagined_past_end=args.imagined_past_end)
        report = fit_termination(args.checkpoint, args.out, args.extra_dataset_id, cfg, device=args.device,
                                 progress=not args.quiet)
        print(format_report(report))
        return 0

    return run


def _add_play(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("play", help="write an imagined rollout of a world model as a GIF or MP4")
    p.add_argument("--world-model", default="cartpole", help="checkpoint path or shipped name (default: cartpole)")
    p.add_argument("--steps", type=int, default=200, help="imagined steps, default 200")
    p.add_argument("--out", default="rollout.gif", help="output file, .gif or .mp4 (default: rollout.gif)")
    p.add_argument("--policy", default="random", help="'random' or a path to an SB3 model (.zip)")
    p.add_argument("--compare-real", action="store_true",
                   help="replay a held-out dataset episode: real | imagined frames side by side, same actions")
    p.add_argument("--seed", type=int, default=0, help="env seed (and which held-out episode), default 0")
    p.add_argument("--dataset-id", help="dataset for reset contexts (default: the checkpoint's)")
    p.add_argument("--context-frames", type=int, help="real frames warmed up at reset (default: the checkpoint's)")
    p.add_argument("--sampler-steps", type=int, help="denoiser calls per step (default: the checkpoint's)")
    p.add_argument("--frame-stack", type=int, help="frames per observation (default: what --policy needs, else 1)")
    p.add_argument("--device", help="torch device, default cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="the env's precision= (default fp32)")
    p.add_argument("--fps", type=int, default=15, help="frames per second of the video, default 15")
    p.add_argument("--scale", type=int, help="upscaling factor of the frames (default: to at least 128 pixels)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.play import play_from_args

        play_from_args(args)
        return 0

    return run


def _add_benchmark(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("benchmark", help="measure a world model: fidelity, speed, RL transfer, terminations, "
                                                "action response, random-play episode lengths",
                       description="Writes JSON + Markdown (+ PNG/GIF) into --out; benchmarks/README.md is "
                                   "regenerated when --out is benchmarks/results.")
    p.add_argument("suite", choices=["fidelity", "memory", "speed", "rl", "termination", "control", "random_play"])
    p.add_argument("--world-model", help="checkpoint path or shipped name (speed: optional, else random weights)")
    p.add_argument("--card", help="env card: [imagination] defaults: sampler steps (every suite that imagines), "
                                  "context frames (fidelity, termination, control), horizon (rl)")
    p.add_argument("--out", default="benchmarks/results", help="results directory (default benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="a few minutes instead of the full run")
    p.add_argument("--short-memory", help="fidelity: a short-memory baseline checkpoint to compare against")
    p.add_argument("--dataset-id", help="fidelity / termination: real episodes to compare against (default: the "
                                        "validation episodes of the model's training dataset; any other "
                                        "dataset counts as held out in full); random_play: reset contexts (default: "
                                        "the model's training dataset when present)")
    p.add_argument("--context-source", choices=["auto", "checkpoint", "dataset"],
                   help="random_play: start from the contexts stored in the checkpoint or from the dataset's "
                        "episodes (default auto: the dataset when it is on this machine, else the checkpoint's; "
                        "results from different contexts do not compare)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--name", help="result file stem (default: the suite name, with _quick under --quick)")
    p.add_argument("--termination", choices=["threshold", "sample"],
                   help="rl: how the imagined env the agent trains in ends episodes (default: threshold)")
    p.add_argument("--agent-steps", type=int,
                   help="rl: PPO steps for each agent (default 20,000; --quick 2,000)")
    p.add_argument("--seed", type=int, nargs="+",
                   help="rl: seed of the agents, the envs and the evaluation episodes (default 0); several seeds: "
                        "one result <name>_seed<S> each (an existing one of this run is reused) and <name>_seeds "
                        "with their spread")
    p.add_argument("--parallel", action="store_true",
                   help="rl: train the real-env reference agent in a second process, beside the imagination agent "
                        "(each gets half the torch threads)")
    p.add_argument("--reset-mode", choices=["episode_start", "anywhere"],
                   help="rl: where the imagined episodes the agent trains in start: real episode starts (default) "
                        "or any window of the dataset (with a short --horizon: DIAMOND's short imagined episodes "
                        "from real states)")
    p.add_argument("--horizon", type=int,
                   help="rl: imagined episodes are cut (truncated) after this many steps (default: the card's "
                        "[imagination] horizon, else the checkpoint's); fidelity: imagined steps per replayed "
                        "window (default 32, --quick 16; shorter for envs whose episodes are short); random_play: "
                        "steps each episode may last (default 100, --quick 32; longer for envs whose random "
                        "episodes are long)")
    p.add_argument("--reference-cache", metavar="DIR",
                   help="rl: keep each real-env reference agent in DIR, keyed by all it depends on (env, PPO "
                        "settings and budget, seed, torch threads, CPU, library versions), and reuse it: another "
                        "world model or setting on the same seeds trains only its imagination agent")
    p.add_argument("--sampler-steps", type=int,
                   help="denoiser calls per imagined frame, K (default: the card's, else the checkpoint's)")
    p.add_argument("--history-guidance", type=float, metavar="W",
                   help="the sampler's history guidance w (1 = off; default: the card's, else the checkpoint's); "
                        "w > 1 costs about twice the denoiser calls")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="the imagined rollouts in fp32 (default) or bf16 autocast, as the env's precision=; "
                        "fidelity, termination, control, random_play, rl")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.bench.run import run_benchmark

        path = run_benchmark(args.suite, args.world_model, args.out, card=args.card, quick=args.quick,
                             device=args.device, name=args.name, short_memory=args.short_memory,
                             dataset_id=args.dataset_id, termination=args.termination,
                             agent_steps=args.agent_steps, parallel=args.parallel, seed=args.seed,
                             sampler_steps=args.sampler_steps, history_guidance=args.history_guidance,
                             reset_mode=args.reset_mode, horizon=args.horizon,
                             reference_cache=args.reference_cache, precision=args.precision,
                             context_source=args.context_source)
        print(path.with_suffix(".md").read_text())
        print(f"results: {path}")
        return 0

    return run


def _add_info(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("info", help="what this installation has: versions, CPU (native bf16?), CUDA, datasets, "
                                    "shipped world models")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")

    def run(args: argparse.Namespace) -> int:
        import json

        from diffusion_world.info import collect_info, format_info

        info = collect_info()
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return 0

    return run


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], Handler]] = [_add_collect, _add_render, _add_combine,
                                                                       _add_train, _add_fit_termination, _add_play,
                                                                       _add_benchmark, _add_info]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="diffusion-world", description="diffusion_world: collect Gymnasium trajectories into Minari datasets "
                                            "(or render Minari datasets of states into frames), train a causal "
                                            "video diffusion world model on them, play it and benchmark it.")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}
    for add in SUBCOMMANDS:
        before = set(sub.choices)
        handler = add(sub)
        (name,) = set(sub.choices) - before
        handlers[name] = handler
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return report_user_errors(f"diffusion-world {args.command}", lambda: handlers[args.command](args))
    except KeyboardInterrupt as e:  # 128 + the signal, as its default action gives: 143 for SIGTERM
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"diffusion-world {args.command}: {'terminated' if signum == signal.SIGTERM else 'interrupted'}",
              file=sys.stderr)
        return 128 + int(signum)


if __name__ == "__main__":
    sys.exit(main())
