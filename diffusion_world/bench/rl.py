"""RL transfer: PPO (CnnPolicy, frame stack) trained only in imagination, evaluated in the real pixel env, against
the same PPO trained in the real pixel env for the same number of steps, and a random policy — in one run. Each
policy is also evaluated in imagination (episodes capped at ``imagined_eval_horizon`` steps): a policy that
scores far higher there than in the real env exploits the model."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_world.checkpoint import load_world_model
from diffusion_world.errors import UserError
from diffusion_world.files import atomic_write_text, save_figure


def evaluate(env: Any, act: Any, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes; episode i resets with ``seed + i``."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return np.array(returns)


def evaluate_imagined(wm: Any, act: Any, episodes: int, seed: int, frame_stack: int, horizon: int,
                      env_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """Undiscounted returns of the first episode of each of ``episodes`` batched imagined envs (row i seeded
    with ``seed + i``), each cut at ``horizon`` steps; ``act`` maps a batch of observations to actions."""
    from diffusion_world import make_sb3_vec_env

    venv = make_sb3_vec_env(wm, num_envs=episodes, monitor=False, frame_stack=frame_stack,
                            **{**(env_kwargs or {}), "horizon": horizon})
    venv.seed(seed)
    obs = venv.reset()
    alive, total = np.ones(episodes, dtype=bool), np.zeros(episodes)
    while alive.any():
        obs, reward, done, _ = venv.step(act(obs))
        total += np.where(alive, reward, 0.0)
        alive &= ~done
    venv.close()
    return total


# rl-zoo's tuned PPO for CartPole-v1 (learning rate 1e-3 decayed linearly to 0). With SB3's defaults (and n_steps 128,
# batch 256), PPO trained on CartPole pixels for 20,000 steps scored below the random policy
# (benchmarks/results/rl_sb3_default_ppo.json), so the real-trained reference said nothing.
PPO_SETTINGS: dict[str, Any] = {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                                "ent_coef": 0.0, "clip_range": 0.2}
PPO_LR = 1e-3


def _summary(returns: np.ndarray) -> dict[str, Any]:
    return {"mean": float(returns.mean()), "std": float(returns.std()), "returns": returns.tolist()}


def _curve_callback(curve: list[list[float]], label: str | None = None, every: int = 25,
                    on_rollout_end: Any = None) -> Any:
    """An SB3 callback that appends [steps so far, mean return, mean length, episodes] of the episodes that
    ended during each rollout (from ``VecMonitor``'s ``info["episode"]``) to ``curve``: the learning curve in the
    env the agent trains in. With ``label``, every ``every``-th rollout prints a progress line; ``on_rollout_end``
    is called after each rollout."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Curve(BaseCallback):
        def _on_rollout_start(self) -> None:
            self.episodes: list[tuple[float, float]] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.episodes.append((float(info["episode"]["r"]), float(info["episode"]["l"])))
            return True

        def _on_rollout_end(self) -> None:
            if on_rollout_end is not None:
                on_rollout_end()
            if self.episodes:
                r, length = np.mean(self.episodes, axis=0)
                curve.append([self.num_timesteps, float(r), float(length), len(self.episodes)])
                if label and len(curve) % every == 0:
                    recent = [c[1] for c in curve[-every:]]
                    print(f"{label}: {self.num_timesteps:,} steps, return {np.mean(recent):.1f} "
                          f"(last {len(recent)} rollouts)", flush=True)

    return Curve()


def plot_curves(result: dict[str, Any], path: Any) -> None:
    """Learning curves of both PPO runs (return of the episodes finished in each rollout, in the env the agent
    trains in, smoothed over 5 rollouts), with the final real-env evaluations as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    steps = result.get("agent_steps_trained", result["agent_steps"])  # older results: the budget
    cut = result.get("train_horizon")  # recorded since 2026-12-08
    cut = cut if cut and result.get("real_eval_horizon") and cut < result["real_eval_horizon"] else None
    for i, (key, label, colour) in enumerate((
            ("imagination", "PPO in imagination: return in imagination"
             + (f" (episodes cut at {cut} steps: not comparable with whole episodes)" if cut else ""), "C0"),
            ("real_trained", "PPO in the real env: return in the real env", "C1"))):
        curve = np.array(result[key].get("curve") or [], dtype=np.float64).reshape(-1, 4)
        if len(curve):
            smooth = np.convolve(curve[:, 1], np.ones(5) / 5, mode="valid") if len(curve) >= 5 else curve[:, 1]
            ax.plot(curve[len(curve) - len(smooth):, 0], smooth, color=colour, label=label,
                    marker="o" if len(smooth) < 3 else None)  # a curve of one point is otherwise invisible
        # the final evaluations side by side (not on top of each other), as squares: returns in the real env
        ax.errorbar([steps * (1.0 + 0.012 * (2 * i - 1))], [result[key]["mean"]], yerr=[result[key]["std"]],
                    fmt="s", mfc="white", color=colour, capsize=3,
                    label=f"{'PPO in imagination' if i == 0 else 'PPO in the real env'}: real-env evaluation "
                          f"(mean ± std, {result['eval_episodes']} episodes)")
    ax.axhline(result["random"]["mean"], color="grey", ls="--", label="random policy, real env")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("episode return (episodes ended in a rollout,\nmean over 5 rollouts)")
    settings = ", ".join(f"{k}={v}" for k, v in (result.get("imagination_kwargs") or {}).items())
    ax.set_title(f"PPO learning curves: world model step {result.get('checkpoint_step')}, seed {result.get('seed', 0)}"
                 + (f"\nimagined env: {settings}" if settings else ""), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def ppo_settings(agent_steps: int, num_envs: int, ppo: dict[str, Any] | None = None) -> dict[str, Any]:
    """PPO's settings for a budget of ``agent_steps`` over ``num_envs`` envs, as results record them:
    ``PPO_SETTINGS`` updated by ``ppo`` (a card's ``[rl]`` section; its ``learning_rate`` replaces ``PPO_LR``,
    where the linear decay to 0 starts), with rollouts of at most ``agent_steps`` (but at least 16 steps per env, or
    ``n_steps`` if fewer) and minibatches no larger than a rollout. PPO trains whole rollouts, so it runs
    ``agent_steps`` rounded up to a multiple of ``n_steps * num_envs``."""
    settings = {**PPO_SETTINGS, **(ppo or {})}
    lr = settings.pop("learning_rate", PPO_LR)
    n_steps = max(min(16, settings["n_steps"]), min(settings["n_steps"], agent_steps // num_envs))
    return dict(settings, n_steps=n_steps, batch_size=min(settings["batch_size"], n_steps * num_envs),
                learning_rate=f"linear {lr} -> 0")


def _ppo_kwargs(agent_steps: int, num_envs: int, small_frames: bool, seed: int,
                ppo: dict[str, Any] | None = None) -> dict[str, Any]:
    from diffusion_world.envs.sb3_vec_env import small_frames_policy_kwargs

    lr = float((ppo or {}).get("learning_rate", PPO_LR))
    return dict(ppo_settings(agent_steps, num_envs, ppo), learning_rate=lambda progress_left: lr * progress_left,
                seed=seed, verbose=0, policy_kwargs=small_frames_policy_kwargs() if small_frames else None)


def _train_real(world_model: str, agent_steps: int, num_envs: int, frame_stack: int, seed: int,
                save_to: str | None = None, torch_threads: int | None = None,
                label: str | None = None, ppo: dict[str, Any] | None = None) -> tuple[Any, list[list[float]], float]:
    """PPO trained in the real pixel env: (agent, learning curve, seconds). With ``save_to`` (a run in a child
    process) the agent is saved there and returned as that path."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    from diffusion_world.envs import make_real_env

    if torch_threads:
        torch.set_num_threads(torch_threads)
    wm = load_world_model(world_model)
    curve: list[list[float]] = []
    t0 = time.perf_counter()
    venv = VecMonitor(DummyVecEnv([lambda: make_real_env(wm, frame_stack=frame_stack)] * num_envs))
    kwargs = _ppo_kwargs(agent_steps, num_envs, min(wm.config.frame_size) < 36, seed, ppo)
    agent = PPO("CnnPolicy", venv, **kwargs).learn(agent_steps, progress_bar=False,
                                                   callback=_curve_callback(curve, label))
    seconds = time.perf_counter() - t0
    venv.close()
    if save_to is None:
        return agent, curve, seconds
    agent.save(save_to)
    return save_to, curve, seconds


def reference_key(wm: Any, agent_steps: int, num_envs: int, frame_stack: int, seed: int,
                  torch_threads: int, ppo: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the real-env reference agent of ``run_rl`` depends on: the real env (as the world model records
    it) and its pixels, PPO's settings and budget, the seed, and what changes PPO's float rounding (torch threads,
    CPU model, library versions). Two runs with equal keys train the same agent."""
    import gymnasium
    import stable_baselines3
    import torch

    from diffusion_world import __version__
    from diffusion_world.bench.common import cpu_model

    return {"env_spec": wm.dataset.get("env_spec"), "frame_size": list(wm.config.frame_size),
            "agent_steps": agent_steps, "num_envs": num_envs, "frame_stack": frame_stack, "seed": seed,
            "ppo": ppo_settings(agent_steps, num_envs, ppo), "torch_threads": torch_threads,
            "cpu": cpu_model(), "versions": {"diffusion_world": __version__, "torch": str(torch.__version__),
                                             "stable_baselines3": stable_baselines3.__version__,
                                             "gymnasium": gymnasium.__version__, "numpy": np.__version__}}


def _cache_paths(cache: Path, key: dict[str, Any]) -> tuple[Path, Path]:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache / f"{digest}.zip", cache / f"{digest}.json"


def _store_reference(cache: Path, key: dict[str, Any], agent: Any, curve: list[list[float]], seconds: float) -> None:
    """Keep a trained reference agent (atomically: a reader never sees half an entry)."""
    from diffusion_world.bench.common import machine_info

    cache.mkdir(parents=True, exist_ok=True)
    zip_path, meta_path = _cache_paths(cache, key)
    tmp = zip_path.with_name(zip_path.stem + ".tmp.zip")
    agent.save(tmp)
    tmp.replace(zip_path)
    meta = {"key": key, "curve": curve, "train_s": seconds, "machine": machine_info()}
    atomic_write_text(meta_path, json.dumps(meta, indent=1))


def run_rl(world_model: str, agent_steps: int = 20_000, eval_episodes: int = 10, num_envs: int = 8,
           frame_stack: int = 4, horizon: int | None = None, imagined_eval_horizon: int = 200, seed: int = 0,
           progress: bool = True, imagination_kwargs: dict[str, Any] | None = None,
           parallel: bool = False, reference_cache: str | Path | None = None,
           ppo: dict[str, Any] | None = None) -> dict[str, Any]:
    """``imagination_kwargs``: more kwargs of the imagined env the agent trains in (e.g. ``{"termination":
    "sample"}``, or ``{"reset_mode": "anywhere", "horizon": 15}``: short imagined episodes from real states); the
    evaluation in imagination uses them too, except where episodes start and end: it plays whole episodes from
    episode starts, cut at ``imagined_eval_horizon`` (or ``horizon``, the env's own limit, if shorter), so that
    its returns compare across settings. ``parallel``:
    train the real-env reference in a second process while the imagination agent trains (each with half the
    torch threads; the imagination agent gets them all back once the reference is done). On one thread each, the
    same seeds give the same agents as a sequential run; more threads can change float rounding.
    ``reference_cache``: a directory where the real-env reference agent is kept under its :func:`reference_key`
    and reused from, so that comparing world models or settings on the same seeds trains each reference once; the
    result then records ``real_trained.reused`` (when and where it was trained). ``ppo``: PPO settings that
    replace the CartPole-tuned ``PPO_SETTINGS`` for both agents (a card's ``[rl]`` section, see
    :func:`ppo_settings`)."""
    import concurrent.futures
    import multiprocessing
    import tempfile

    import torch
    from stable_baselines3 import PPO

    from diffusion_world import make_sb3_vec_env
    from diffusion_world.envs import make_real_env

    wm = load_world_model(world_model)
    make_real_env(wm, frame_stack=frame_stack).close()  # the real env is needed at the end: fail now, not after hours
    ppo_kwargs = _ppo_kwargs(agent_steps, num_envs, min(wm.config.frame_size) < 36, seed, ppo)
    rollout = ppo_kwargs["n_steps"] * num_envs
    if agent_steps <= rollout:  # the learning rate decays linearly to 0 over the budget, reaching 0 at the last update
        warnings.warn(f"agent_steps {agent_steps} is one PPO rollout ({rollout} steps): its only update runs at "
                      f"learning rate 0, so the agents stay untrained; give at least {2 * rollout}", stacklevel=2)
    imagination_kwargs = dict(imagination_kwargs or {})
    env_kwargs = {**({"horizon": horizon} if horizon else {}), **imagination_kwargs}
    say = print if progress else (lambda *a, **k: None)

    real_job, pool, tmp, threads_before = None, None, None, torch.get_num_threads()
    cache = Path(reference_cache) if reference_cache is not None else None
    key = reference_key(wm, agent_steps, num_envs, frame_stack, seed,
                        max(1, threads_before // 2) if parallel else threads_before, ppo)
    reused = None
    if cache is not None and all(p.exists() for p in _cache_paths(cache, key)):
        zip_path, meta_path = _cache_paths(cache, key)
        meta = json.loads(meta_path.read_text())
        if meta["key"] != key:
            raise UserError(f"{meta_path} holds another reference agent (a hash collision?): remove it")
        agent_real, t_real = PPO.load(zip_path, device="cpu"), float(meta["train_s"])
        reused = {"path": str(zip_path), "machine": meta["machine"]}
        say(f"PPO in the real env: reusing {zip_path} (trained {meta['machine']['date'][:19]})")
        parallel = False
    if parallel:
        threads = max(1, torch.get_num_threads() // 2)
        torch.set_num_threads(threads)
        tmp = tempfile.TemporaryDirectory()
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        real_job = pool.submit(_train_real, str(world_model), agent_steps, num_envs, frame_stack, seed,
                               str(Path(tmp.name) / "real_trained.zip"), threads,
                               "PPO in the real env" if progress else None, ppo)

    def reclaim_threads() -> None:  # the reference is done: its threads go to the imagination agent
        if real_job is not None and real_job.done():
            torch.set_num_threads(threads_before)

    try:
        t0 = time.perf_counter()
        imagined = make_sb3_vec_env(wm, num_envs=num_envs, frame_stack=frame_stack, **env_kwargs)
        contexts = imagined.venv.core.contexts.description  # where imagined episodes start (VecMonitor's env)
        curves: dict[str, list[list[float]]] = {"imagination": []}
        agent_imagined = PPO("CnnPolicy", imagined, **ppo_kwargs).learn(
            agent_steps, progress_bar=False,
            callback=_curve_callback(curves["imagination"], "PPO in imagination" if progress else None,
                                     on_rollout_end=reclaim_threads))
        t_imagined = time.perf_counter() - t0
        say(f"PPO in imagination: {agent_imagined.num_timesteps} steps in {t_imagined:.0f}s")
        if reused is not None:
            curves["real_trained"] = meta["curve"]
        elif real_job is None:
            agent_real, curves["real_trained"], t_real = _train_real(
                world_model, agent_steps, num_envs, frame_stack, seed,
                label="PPO in the real env" if progress else None, ppo=ppo)
        else:
            saved, curves["real_trained"], t_real = real_job.result()
            agent_real = PPO.load(saved, device="cpu")
        if cache is not None and reused is None:
            _store_reference(cache, key, agent_real, curves["real_trained"], t_real)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if tmp is not None:
            tmp.cleanup()
        torch.set_num_threads(threads_before)
    if reused is None:
        say(f"PPO in the real env: {agent_real.num_timesteps} steps in {t_real:.0f}s")

    from diffusion_world.envs.core import default_horizon

    # real episodes are cut where imagined ones end by default: ALE's games have no time limit of their own, and a
    # Breakout agent that never presses FIRE played one evaluation episode for 27,000 steps (15 minutes)
    real_eval_horizon = int(horizon or default_horizon(wm))
    env = make_real_env(wm, frame_stack=frame_stack, max_episode_steps=real_eval_horizon)
    eval_seed = 10_000 + seed  # episode seeds the collection (seed + i, small i) did not use
    imag = evaluate(env, lambda o: agent_imagined.predict(o, deterministic=True)[0], eval_episodes, eval_seed)
    real = evaluate(env, lambda o: agent_real.predict(o, deterministic=True)[0], eval_episodes, eval_seed)
    # SB3 evaluates the greedy action; a policy that learned little is near-uniform, and its greedy action is one
    # fixed action (worse than random in CartPole), so the sampled policy is reported too
    stochastic: dict[str, dict[str, Any]] = {}
    for who, agent in (("imagination", agent_imagined), ("real_trained", agent_real)):
        torch.manual_seed(eval_seed)  # the policy samples from torch's global generator
        stochastic[who] = _summary(evaluate(env, lambda o, a=agent: a.predict(o, deterministic=False)[0],
                                            eval_episodes, eval_seed))
    env.action_space.seed(seed)
    rand = evaluate(env, lambda o: env.action_space.sample(), eval_episodes, eval_seed)
    h_imag = min(imagined_eval_horizon, horizon or int(wm.imagination.get("horizon", imagined_eval_horizon)))
    eval_kwargs = {k: v for k, v in imagination_kwargs.items() if k not in ("reset_mode", "horizon")}
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    in_imagination = {
        who: _summary(evaluate_imagined(wm, act, eval_episodes, eval_seed, frame_stack, h_imag, eval_kwargs))
        for who, act in (("imagination", lambda o: agent_imagined.predict(o, deterministic=True)[0]),
                         ("real_trained", lambda o: agent_real.predict(o, deterministic=True)[0]),
                         ("random", lambda o: rng.integers(0, env.action_space.n, len(o))
                          if hasattr(env.action_space, "n") else np.stack([env.action_space.sample() for _ in o])))}
    say(f"evaluation in imagination (episodes cut at {h_imag} steps): {time.perf_counter() - t0:.0f}s")
    result: dict[str, Any] = {
        "world_model": str(world_model), "checkpoint_step": wm.step, "env_spec": wm.dataset.get("env_spec"),
        "agent_steps": agent_steps, "agent_steps_trained": int(agent_imagined.num_timesteps), "seed": seed,
        "ppo": ppo_settings(agent_steps, num_envs, ppo), **({"ppo_from_card": dict(ppo)} if ppo else {}),
        "num_envs": num_envs, "frame_stack": frame_stack, "eval_episodes": eval_episodes,
        "imagination_kwargs": imagination_kwargs, "contexts": contexts,
        "imagination": {**_summary(imag), "train_s": t_imagined, "curve": curves["imagination"],
                        "stochastic": stochastic["imagination"]},
        "real_trained": {**_summary(real), "train_s": t_real, "curve": curves["real_trained"],
                         "stochastic": stochastic["real_trained"], **({"reused": reused} if reused else {})},
        "random": _summary(rand),
        "in_imagination": {"horizon": h_imag, **in_imagination},
        "real_eval_horizon": real_eval_horizon,
        # the imagined episodes the agent trained on, whose returns its learning curve shows
        "train_horizon": int(env_kwargs.get("horizon") or default_horizon(wm)),
    }
    result["headline"] = {
        "agent_steps": agent_steps,
        "imagination_return_mean": result["imagination"]["mean"],
        "real_trained_return_mean": result["real_trained"]["mean"],
        "random_return_mean": result["random"]["mean"],
        "imagination_trained_return_in_imagination": in_imagination["imagination"]["mean"],
        # a ratio of returns means something only where both are positive (Pendulum's are all negative)
        "imagination_vs_real_ratio": (result["imagination"]["mean"] / result["real_trained"]["mean"]
                                      if result["real_trained"]["mean"] > 0 and result["imagination"]["mean"] >= 0
                                      else None),
    }
    say(result["headline"])
    return result
