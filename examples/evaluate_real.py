"""Evaluate an SB3 agent in the real env the world model was trained on, next to a random policy.

    python examples/evaluate_real.py --world-model runs/cartpole/checkpoint.pt --agent runs/ppo_imagined.zip

The real env is rebuilt from the checkpoint's dataset record (the same pixel env code as collection:
``make_pixel_env`` via the registered ``diffusion_world/Pixels-v0``), with the frame stacking the agent was
trained with (read from the agent's observation space). Prints mean return ± std over the episodes.
"""

from __future__ import annotations

import argparse
import sys

from diffusion_world.bench.rl import evaluate
from diffusion_world.checkpoint import load_world_model
from diffusion_world.data.collect import load_sb3_model
from diffusion_world.envs import make_real_env
from diffusion_world.envs.sb3_vec_env import agent_frame_stack
from diffusion_world.errors import UserError, report_user_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", default="cartpole", help="checkpoint (its dataset names the real env)")
    parser.add_argument("--agent", required=True, help="SB3 model .zip trained in imagination")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000, help="episode i resets with seed + i")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of the most likely")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, not {args.episodes}")

    wm = load_world_model(args.world_model)
    agent = load_sb3_model(args.agent)
    frame_stack = agent_frame_stack(agent.observation_space, wm.config.frame_size)
    if frame_stack is None:
        raise UserError(f"the agent observes {agent.observation_space}, not {wm.config.frame_size} RGB frames")
    env = make_real_env(wm, frame_stack=frame_stack)
    agent_returns = evaluate(env, lambda obs: agent.predict(obs, deterministic=not args.stochastic)[0],
                                    args.episodes, args.seed)
    env.action_space.seed(args.seed)
    random_returns = evaluate(env, lambda obs: env.action_space.sample(), args.episodes, args.seed)
    env_id = wm.dataset.get("env_spec", {}).get("env_id", "the real env")
    print(f"{env_id}, {args.episodes} episodes, frame_stack={frame_stack}:")
    print(f"  agent  {agent_returns.mean():8.1f} ± {agent_returns.std():.1f}")
    print(f"  random {random_returns.mean():8.1f} ± {random_returns.std():.1f}")


if __name__ == "__main__":
    sys.exit(report_user_errors("evaluate_real.py", main))
