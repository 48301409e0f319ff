"""Train an SB3 PPO expert on a Gymnasium env's own state observations (fast), to drive pixel collection.

A world model must see what a good agent sees; random CartPole play ends within ~20 steps. The expert acts on
``info["state"]`` during ``diffusion-world collect --policy EXPERT.zip --epsilon 0.25`` (epsilon-random actions
keep the data diverse).

    python examples/train_state_expert.py --env CartPole-v1 --steps 60000 --out runs/cartpole_expert.zip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from diffusion_world.errors import report_user_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--out", default="runs/cartpole_expert.zip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = PPO("MlpPolicy", gym.make(args.env), seed=args.seed, verbose=0)
    model.learn(args.steps, progress_bar=False)
    mean, std = evaluate_policy(model, Monitor(gym.make(args.env)), n_eval_episodes=10)
    # PPO trains whole rollouts (2048 steps each by default): num_timesteps is what it trained, not --steps
    print(f"{args.env}: PPO expert after {model.num_timesteps} steps: return {mean:.1f} ± {std:.1f}")
    out = args.out if Path(args.out).suffix else f"{args.out}.zip"  # where SB3 would save it
    model.save(out)
    print(f"saved {out}")


if __name__ == "__main__":
    sys.exit(report_user_errors("train_state_expert.py", main))
