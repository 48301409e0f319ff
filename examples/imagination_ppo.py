"""Train a PPO agent (CnnPolicy) entirely in imagination: N imagined envs in one denoiser batch (SB3 VecEnv).

    python examples/imagination_ppo.py --world-model cartpole --steps 50000 --out runs/ppo_imagined.zip

Observations are the generated frames, ``--frame-stack`` of them on the channel axis (evaluate the agent in the
real env with the same stacking: ``examples/evaluate_real.py``). Frames smaller than 36x36 use a small CNN
(``SmallFramesCNN``) instead of SB3's NatureCNN. No real env is touched. The defaults are what transferred to
the real CartPole in ``diffusion-world benchmark rl --termination sample --agent-steps 50000``: rl-zoo's
CartPole PPO settings, 8 envs, terminations sampled from the model's probability (about 70 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stable_baselines3 import PPO

from diffusion_world import make_sb3_vec_env
from diffusion_world.bench.rl import PPO_LR, PPO_SETTINGS
from diffusion_world.envs.sb3_vec_env import small_frames_policy_kwargs
from diffusion_world.errors import report_user_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", default="cartpole", help="checkpoint path or shipped name")
    parser.add_argument("--steps", type=int, default=50_000, help="imagined env steps in total")
    parser.add_argument("--num-envs", type=int, default=8, help="imagined envs, one denoiser batch")
    parser.add_argument("--frame-stack", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=PPO_SETTINGS["n_steps"], help="PPO rollout length per env")
    parser.add_argument("--termination", default="sample", choices=["sample", "threshold"],
                        help="how imagined episodes end: sampled from the model's probability, or above 0.5")
    parser.add_argument("--horizon", type=int, help="truncation (default: the checkpoint's)")
    parser.add_argument("--reset-mode", choices=["episode_start", "anywhere"],
                        help="where imagined episodes start: real episode starts (default) or anywhere in the data "
                             "(with a short --horizon: DIAMOND's short imagined episodes from real states)")
    parser.add_argument("--sampler-steps", type=int, help="denoiser calls per step (default: the checkpoint's)")
    parser.add_argument("--history-guidance", type=float, metavar="W",
                        help="the sampler's history guidance (1 = off, the default; about twice the compute)")
    parser.add_argument("--device", default="cpu", help="device of the world model and the agent")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                        help="the imagined envs' precision (default fp32; bf16: 1.8x the env steps/s at 16 envs "
                             "on an AMX CPU, benchmarks/results/env_speed.json; PPO in bf16 is not benchmarked)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/ppo_imagined.zip")
    args = parser.parse_args()

    env_kwargs = {k: v for k, v in {"horizon": args.horizon, "sampler_steps": args.sampler_steps,
                                    "termination": args.termination,
                                    "history_guidance": args.history_guidance,
                                    "reset_mode": args.reset_mode, "precision": args.precision}.items()
                  if v is not None}
    venv = make_sb3_vec_env(args.world_model, num_envs=args.num_envs, frame_stack=args.frame_stack,
                            device=args.device, **env_kwargs)
    H, W = venv.observation_space.shape[:2]
    policy_kwargs = small_frames_policy_kwargs() if min(H, W) < 36 else None
    batch = min(PPO_SETTINGS["batch_size"], args.n_steps * args.num_envs)
    ppo = dict(PPO_SETTINGS, n_steps=args.n_steps, batch_size=batch)
    model = PPO("CnnPolicy", venv, **ppo, learning_rate=lambda progress_left: PPO_LR * progress_left, seed=args.seed,
                device=args.device, policy_kwargs=policy_kwargs, verbose=1)
    model.learn(args.steps)
    out = args.out if Path(args.out).suffix else f"{args.out}.zip"  # where SB3 would save it
    model.save(out)
    print(f"saved {out}; evaluate it in the real env: python examples/evaluate_real.py "
          f"--world-model {args.world_model} --agent {out}")


if __name__ == "__main__":
    sys.exit(report_user_errors("imagination_ppo.py", main))
