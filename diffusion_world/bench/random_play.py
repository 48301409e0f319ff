"""Is the imagined env as unforgiving as the real one? Episode lengths under random play.

An agent learns CartPole-like tasks from when its episodes end. An imagined env whose episodes outlast the real ones
under the same behaviour rewards failing, whatever its frames look like. This benchmark plays uniformly random
actions in ``num_envs`` imagined envs (the env as users get it: its reset contexts and sampler) and in the real env
for as many episodes, up to ``steps`` steps (or the envs' time limit where shorter: the imagined env's horizon, the
real env's limit; a truncation ends no episode early), and compares the episode lengths: the imagined ones as the
env would end them with the default ``termination="threshold"`` (the first step whose termination probability
exceeds 0.5) and, as expected values, with ``termination="sample"`` (each step ends the episode with its
probability). The imagined rollouts run on past the threshold's end, so both are read off the same frames. It also
sums the rewards each episode collects, the return an agent would see, with the model's predicted rewards (expected
values under sampled terminations): a model can end episodes on time and still pay too much or too little for each
step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from diffusion_world.bench.common import sampler_label
from diffusion_world.checkpoint import load_world_model
from diffusion_world.errors import UserError
from diffusion_world.files import save_figure


def survival(p: np.ndarray) -> np.ndarray:
    """(..., T) per-step end probabilities -> (..., T) P(the episode is still running when step t starts)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    ones = np.ones(p.shape[:-1] + (1,))
    return np.concatenate([ones, np.cumprod(1.0 - p, axis=-1)[..., :-1]], axis=-1)


def expected_length(p: np.ndarray) -> float:
    """Expected length, cut at len(p), of an episode whose step t ends it with probability p[t-1]."""
    return float(survival(p).sum())


SWEEP = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)  # termination thresholds scored from the same probabilities


def threshold_lengths(p: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) per-step termination probabilities -> each episode's length when the first step with p >
    ``threshold`` ends it (T when none does), and whether one did."""
    hit = np.asarray(p) > threshold
    ended = hit.any(1)
    return np.where(ended, hit.argmax(1) + 1, hit.shape[1]), np.asarray(ended)


def _summary(lengths: np.ndarray, running: np.ndarray) -> dict[str, Any]:
    lengths = np.asarray(lengths)
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)), "cut": float(np.mean(running)),
            "lengths": lengths.tolist()}


def real_random_lengths(wm: Any, episodes: int, steps: int, seed: int, env: gym.Env | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths (cut at ``steps``) of ``episodes`` real episodes under uniformly random actions, whether each
    was still running when cut (by ``steps`` or by the env's time limit: not terminated), and each one's return.
    ``env``: the real env, made beforehand (closed here)."""
    from diffusion_world.envs.world_env import make_real_env

    if env is None:
        env = make_real_env(wm)
    env.action_space.seed(seed)
    lengths, running, returns = [], [], []
    for i in range(episodes):
        env.reset(seed=10_000 + seed + i)
        t, terminated, truncated, ret = 0, False, False, 0.0
        while not (terminated or truncated) and t < steps:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            t += 1
            ret += float(reward)
        lengths.append(t)
        running.append(not terminated)  # a time limit's truncation is no failure, as the cut at ``steps`` is not
        returns.append(ret)
    env.close()
    return np.array(lengths), np.array(running), np.array(returns)


def run_random_play(world_model: str, out_dir: str | Path | None = None, num_envs: int = 32, steps: int = 100,
                    dataset_id: str | None = None, seed: int = 0, device: str = "cpu",
                    progress: bool = True, sampler_steps: int | None = None, history_guidance: float | None = None,
                    stem: str = "random_play", precision: str = "fp32",
                    context_source: str = "auto") -> dict[str, Any]:
    """Run the benchmark (see the module docstring); writes ``{stem}.png`` into ``out_dir`` when given.
    ``sampler_steps``: K of the imagined envs (default: the checkpoint's, else 3). ``context_source``: where the
    imagined episodes start, as the env's (``"auto"``: the dataset when it is on this machine, else the contexts
    stored in the checkpoint); results from different contexts do not compare."""
    from diffusion_world.data.pixel_env import recorded_time_limit
    from diffusion_world.envs.core import ImaginationCore, default_horizon

    for name, v in (("num_envs", num_envs), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{name} must be an integer >= 1, got {v!r}")
    from diffusion_world.envs.world_env import make_real_env

    wm = load_world_model(world_model, device=device)
    real_env = make_real_env(wm)  # before the imagined rollouts: a model whose real env cannot be made fails at once
    # Both envs' episodes end at the same step limit: ``steps``, or the envs' own time limits where shorter (the
    # imagined env's horizon, the real env's limit), which truncate episodes, not fail them
    requested = steps
    limits = [n for n in (default_horizon(wm), recorded_time_limit(wm.dataset.get("env_spec"))) if n]
    time_limit = min(limits) if limits else None
    steps = min(steps, time_limit or steps)
    try:  # the imagined rollouts; the real env is closed by real_random_lengths, or here if they fail
        # never ended by the env: the threshold's and the sampled ends are both read off the probabilities
        core = ImaginationCore(wm, num_envs, dataset_id=dataset_id, context_source=context_source,
                               horizon=steps + 1, termination_threshold=1.0,
                               sampler_steps=sampler_steps, device=device,
                               history_guidance=history_guidance, precision=precision)
        core.reset_rows(range(num_envs), [np.random.default_rng(seed + i) for i in range(num_envs)])
        core.action_space.seed(seed)
        probs, rewards = [], []
        for _ in tqdm(range(steps), desc="random play in imagination", disable=not progress, leave=False):
            actions = core.check_actions(np.stack([core.action_space.sample() for _ in range(num_envs)]))
            step = core.step(actions)
            probs.append(step.termination_probability)
            rewards.append(step.rewards)
    except BaseException:
        real_env.close()
        raise
    p = np.stack(probs, 1).astype(np.float64)  # (N, steps)
    rew = np.stack(rewards, 1).astype(np.float64)  # (N, steps): the predicted reward of each step
    threshold_end, ended = threshold_lengths(p, 0.5)
    sampled = np.array([expected_length(row) for row in p])
    # returns: the rewards of the steps each episode takes (in expectation: those it is still running for)
    threshold_return = np.array([row[:n].sum() for row, n in zip(rew, threshold_end)])
    sampled_return = (survival(p) * rew).sum(1)
    real, real_running, real_return = real_random_lengths(wm, num_envs, steps, seed, real_env)
    result: dict[str, Any] = {
        "world_model": str(world_model), "checkpoint_step": wm.step, "contexts": core.contexts.description,
        "num_envs": num_envs, "steps": steps, **({"requested_steps": requested} if steps < requested else {}),
        "time_limit": time_limit,
        "sampler_steps": core.sampler.num_steps,
        **({"history_guidance": core.sampler.history_guidance} if core.sampler.guided else {}),
        "context_frames": core.context_frames,
        "episode_length": {"real": _summary(real, real_running), "threshold": _summary(threshold_end, ~ended),
                           "sampled": {"mean": float(sampled.mean()), "median": float(np.median(sampled)),
                                       "cut": float((survival(p)[:, -1] * (1 - p[:, -1])).mean()),
                                       "expected_lengths": sampled.tolist()}},
        # other values of the env's termination_threshold, read off the same rollouts
        "return": {name: {"mean": float(np.mean(ret)), "returns": np.asarray(ret).tolist(),
                          "per_step": float(np.sum(ret) / np.sum(length))}
                   for name, ret, length in (("real", real_return, real), ("threshold", threshold_return,
                                                                            threshold_end),
                                             ("sampled", sampled_return, sampled))},
        "threshold_sweep": [{"threshold": th, "mean": float(threshold_lengths(p, th)[0].mean()),
                             "cut": float(1 - threshold_lengths(p, th)[1].mean())} for th in SWEEP],
        "survival": {"real": [float((real >= t).mean()) for t in range(1, steps + 1)],
                     "threshold": [float((threshold_end >= t).mean()) for t in range(1, steps + 1)],
                     "sampled": survival(p).mean(0).tolist()},
    }
    e = result["episode_length"]
    result["headline"] = {"real_mean_length": e["real"]["mean"], "threshold_mean_length": e["threshold"]["mean"],
                          "sampled_mean_length": e["sampled"]["mean"],
                          "real_mean_return": result["return"]["real"]["mean"],
                          "threshold_mean_return": result["return"]["threshold"]["mean"],
                          "sampled_mean_return": result["return"]["sampled"]["mean"],
                          "threshold_vs_real": e["threshold"]["mean"] / e["real"]["mean"],
                          "sampled_vs_real": e["sampled"]["mean"] / e["real"]["mean"]}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_random_play(out_dir / f"{stem}.png", result)
    return result


def plot_random_play(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(1, r["steps"] + 1)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    s = r["survival"]
    ax.step(t, s["real"], where="post", color="k", label="real env")
    ax.step(t, s["threshold"], where="post", color="C0", label='imagined, termination="threshold"')
    ax.plot(t, s["sampled"], color="C1", label='imagined, termination="sample" (expected)')
    ax.set_xlabel("step t")
    ax.set_ylabel("share of episodes that take step t")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Random play: {r['num_envs']} episodes each (world model step {r['checkpoint_step']}, "
                 f"{sampler_label(r)})", fontsize=10)
    ax.legend(fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def random_play_markdown(r: dict[str, Any]) -> str:
    from diffusion_world.bench.report import _f

    e = r["episode_length"]
    ret = r.get("return")  # recorded since 2026-11-27, step 10748

    def returns(name: str) -> str:
        return f" {ret[name]['mean']:.1f} | {ret[name]['per_step']:.2f} |" if ret else ""

    limit = (f" (the envs' time limit; {r['requested_steps']} asked for)" if "requested_steps" in r else "")
    lines = [f"Uniformly random actions for up to {r['steps']} steps{limit}: {r['num_envs']} real episodes and "
             f"{r['num_envs']} imagined ones ({r['contexts']}, {sampler_label(r)}, checkpoint step "
             f"{r['checkpoint_step']}). An imagined env whose episodes outlast the real ones rewards failing.", "",
             "| episodes | mean length | median length | still running at the last step |"
             + (" mean return | reward per step |" if ret else ""), "|---|---|---|---|" + ("---|---|" if ret else ""),
             f"| real env | {e['real']['mean']:.1f} | {e['real']['median']:.0f} | {_f(e['real']['cut'])} |"
             + returns("real"),
             f"| imagined, `termination=\"threshold\"` | {e['threshold']['mean']:.1f} | "
             f"{e['threshold']['median']:.0f} | {_f(e['threshold']['cut'])} |" + returns("threshold"),
             f"| imagined, `termination=\"sample\"` (expected) | {e['sampled']['mean']:.1f} | "
             f"{e['sampled']['median']:.1f} | {_f(e['sampled']['cut'])} |" + returns("sampled")]
    at_limit = "requested_steps" in r or (r.get("time_limit") is not None and r["steps"] >= r["time_limit"])
    if e["real"]["cut"] > 0.5 and at_limit:
        lines += ["", f"**Most real episodes were still running at the envs' time limit ({r['steps']} steps): "
                  "random play rarely fails in this env, and the lengths say little about how episodes end.**"]
    elif e["real"]["cut"] > 0.5:
        lines += ["", f"**Most real episodes were still running after {r['steps']} steps: the lengths say little "
                  "about how episodes end; rerun with a longer `--horizon`.**"]
    if ret:
        lines += ["", "Returns sum the rewards of the steps an episode takes (the imagined env's are the model's "
                  "predicted rewards; under sampled terminations, expected values)."]
    sweep = r.get("threshold_sweep")  # recorded since 2026-11-27
    if sweep:
        lines += ["", "Other `termination_threshold` values, read off the same imagined rollouts (the real env: "
                  f"{e['real']['mean']:.1f}):", "",
                  "| termination_threshold | " + " | ".join(f"{row['threshold']:g}" for row in sweep) + " |",
                  "|---|" + "---|" * len(sweep),
                  "| mean length | " + " | ".join(f"{row['mean']:.1f}" for row in sweep) + " |",
                  "| still running at the last step | " + " | ".join(_f(row["cut"]) for row in sweep) + " |"]
    return "\n".join(lines)
