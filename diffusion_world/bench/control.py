"""Does the imagined env respond to actions as the real one does?

An agent learns from how the next frames depend on its actions, so this is what an imagined env has to get right
for RL in it to transfer. From each of ``num_starts`` real start states (the real env reset with its own seed,
then random actions for the model's context length), every action of a small set (a Discrete space's actions, up
to 8; for a Box space, corners and the centre) is held for ``horizon`` steps: in the real env (reset with the same
seed and the same random actions again, so the start state is the same) and in imagination from the same real
context frames (``samples`` rollouts per action). Scored at each step ``h`` while every action's real episode is
still running:

- *action identification*: the share of imagined frames whose nearest real frame (mean absolute pixel
  difference) among the real frames of all the actions at step ``h`` is the one of their own action. Chance is
  one over the number of actions; a world model that ignores actions stays near it.
- *response*: the mean pixel difference between imagined frames of different actions over the same between the
  real frames: 1 = actions change the picture as much as in the real env, 0 = not at all. *Sample spread*: the
  difference between two imagined rollouts of the same action, on the same scale (the sampler's noise).
- *termination*: where the real episode ends within ``horizon`` steps, whether the imagined one ends on time.

The real env must be deterministic given its reset seed (checked: every replay must reproduce the context).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_world.bench.common import sampler_label
from diffusion_world.bench.termination import score_first_steps
from diffusion_world.checkpoint import WorldModel, load_world_model
from diffusion_world.data.pixel_env import recorded_env_id
from diffusion_world.diffusion.sampler import frames_to_x, imagine
from diffusion_world.errors import UserError
from diffusion_world.files import save_figure

MAX_ACTIONS = 8


def action_set(space: gym.Space, rng: np.random.Generator) -> list[Any]:
    """The actions to hold: all of a small Discrete space (8 drawn without replacement from a larger one); for a
    Box (bounds must be finite) of one dimension, low, centre and high; of more, for each dimension the action at
    its low and high bound with the others at the centre, so that a model which ignores or confuses part of the
    action vector shows (the corners moved every dimension together); at most 4 dimensions, drawn where there are
    more. Not the centre itself: in an env with a dead zone (LunarLander's main engine is off for any value <= 0)
    it acts as one of the others, and start states where two held actions look the same are not scored."""
    if isinstance(space, gym.spaces.Discrete):
        n = int(space.n)
        picks = np.arange(n) if n <= MAX_ACTIONS else np.sort(rng.choice(n, MAX_ACTIONS, replace=False))
        return [int(space.start + a) for a in picks]
    if isinstance(space, gym.spaces.Box):
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise UserError("benchmark control needs a Box action space with finite bounds")
        low, high = space.low.astype(np.float32).ravel(), space.high.astype(np.float32).ravel()
        centre = (low + high) / 2
        if low.size == 1:
            return [a.reshape(space.shape) for a in (low, centre, high)]
        dims = np.arange(low.size) if low.size <= MAX_ACTIONS // 2 else \
            np.sort(rng.choice(low.size, MAX_ACTIONS // 2, replace=False))
        actions = []
        for d in dims:
            for bound in (low, high):
                a = centre.copy()
                a[d] = bound[d]
                actions.append(a)
        return [a.reshape(space.shape) for a in actions]
    raise UserError(f"benchmark control supports Discrete and Box action spaces, not {space}")


def _real_rollout(env: gym.Env, seed: int, prefix: list[Any], action: Any, horizon: int
                  ) -> tuple[np.ndarray, int | None] | None:
    """Frames of the context (reset + prefix) and then up to ``horizon`` steps of ``action``; the step at which
    the episode terminated (None: it did not within ``horizon``). None when the prefix already ended it."""
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for a in prefix:
        obs, _, terminated, truncated, _ = env.step(a)
        frames.append(obs)
        if terminated or truncated:
            return None
    end = None
    for h in range(1, horizon + 1):
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        if terminated or truncated:
            end = h if terminated else None
            break
    return np.stack(frames), end


def collect_real(env: gym.Env, space: gym.Space, actions: list[Any], num_starts: int, context: int, horizon: int,
                 seed: int) -> dict[str, Any]:
    """Real start states and constant-action rollouts. ``frames`` (N, A, context + horizon, H, W, 3) uint8, valid
    for ``lengths`` (N, A) steps after the context; ``ends`` (N, A) the terminal step or 0."""
    space.seed(seed)
    starts: list[dict[str, Any]] = []
    tries = 0
    while len(starts) < num_starts:
        tries += 1
        if tries > 4 * num_starts + 10:
            raise UserError(f"the real env ended {tries - 1 - len(starts)} of {tries - 1} episodes within "
                            f"{context - 1} random steps: no start state to test")
        env_seed = seed + tries
        prefix = [space.sample() for _ in range(context - 1)]
        maybe_runs = [_real_rollout(env, env_seed, prefix, a, horizon) for a in actions]
        runs = [r for r in maybe_runs if r is not None]
        if len(runs) < len(maybe_runs):  # the random prefix ended the episode
            continue
        ctx = [r[0][:context] for r in runs]
        if any(not np.array_equal(ctx[0], c) for c in ctx[1:]):
            raise UserError("the real env is not deterministic given its reset seed: the same seed and actions gave "
                            "different frames, so constant-action rollouts cannot start from the same state")
        starts.append({"runs": runs, "prefix": prefix})
    N, A = num_starts, len(actions)
    shape = starts[0]["runs"][0][0].shape[1:]
    frames = np.zeros((N, A, context + horizon, *shape), dtype=np.uint8)
    lengths = np.zeros((N, A), dtype=np.int64)
    ends = np.zeros((N, A), dtype=np.int64)
    for i, s in enumerate(starts):
        for j, (fr, end) in enumerate(s["runs"]):
            frames[i, j, :len(fr)] = fr
            lengths[i, j] = len(fr) - context
            ends[i, j] = end or 0
    return {"frames": frames, "lengths": lengths, "ends": ends, "prefixes": [s["prefix"] for s in starts]}


def score_control(real: np.ndarray, lengths: np.ndarray, imagined: np.ndarray) -> dict[str, list[Any]]:
    """Per step h = 1..H (lists of H values, None where nothing could be scored):

    - ``accuracy``: share of imagined frames nearest (mean absolute difference) to their own action's real frame,
      over the start states whose real frames differ between every pair of actions (``identifiable``);
    - ``gain``: the imagined action effect projected on the real one, sum over start states and action pairs
      (a, b) of <mean imagined(a) - mean imagined(b), real(a) - real(b)> / sum of |real(a) - real(b)|^2: 1 = the
      actions move the picture as in the real env, 0 = not at all, below 0 = the other way. The sampler's noise
      is independent between rollouts, so it averages out of the numerator;
    - ``sample_spread``: RMS difference between two imagined rollouts of the same action over the RMS real
      difference between actions (how much one sample's noise hides the action's effect);
    - ``real_difference``: the mean absolute difference between real frames of different actions, in [0, 1];
    - ``starts``: start states where every action's real episode still has step h.

    ``real`` (N, A, H, h, w, 3) (the steps after the context), ``lengths`` (N, A) how many of them exist,
    ``imagined`` (N, A, R, H, h, w, 3).
    """
    N, A, R, H = imagined.shape[:4]
    if A < 2:
        raise UserError("benchmark control needs at least two actions to tell apart")
    keys = ("accuracy", "identifiable", "gain", "sample_spread", "real_difference", "starts")
    out: dict[str, list[Any]] = {k: [] for k in keys}
    pairs = [(a, b) for a in range(A) for b in range(a + 1, A)]
    for h in range(H):
        ok = lengths.min(axis=1) > h  # every action's real episode still has step h + 1
        re = real[ok, :, h].astype(np.float32) / 255.0  # (n, A, ...)
        im = imagined[ok, :, :, h].astype(np.float32) / 255.0  # (n, A, R, ...)
        out["starts"].append(int(ok.sum()))
        if not ok.any():
            for k in keys[:-1]:
                out[k].append(None)
            continue
        pair_dist = np.stack([np.abs(re[:, a] - re[:, b]).mean(axis=(-3, -2, -1)) for a, b in pairs], 1)
        distinct = (pair_dist > 0).all(axis=1)
        out["identifiable"].append(int(distinct.sum()))
        if distinct.any():
            d = np.abs(im[distinct][:, :, :, None] - re[distinct][:, None, None]).mean(axis=(-3, -2, -1))
            out["accuracy"].append(float((d.argmin(axis=-1) == np.arange(A)[None, :, None]).mean()))
        else:
            out["accuracy"].append(None)
        mean_im = im.mean(axis=2)
        num = sum(float(((mean_im[:, a] - mean_im[:, b]) * (re[:, a] - re[:, b])).sum()) for a, b in pairs)
        den = sum(float(((re[:, a] - re[:, b]) ** 2).sum()) for a, b in pairs)
        out["gain"].append(num / den if den > 0 else None)
        out["real_difference"].append(float(pair_dist.mean()))
        if R >= 2 and den > 0:
            spread = float(((im[:, :, 0] - im[:, :, 1]) ** 2).sum()) / (2 * A)  # per action, per rollout
            out["sample_spread"].append(float(np.sqrt(spread / (den / len(pairs)))))
        else:
            out["sample_spread"].append(None)
    return out


def _env_id(wm: WorldModel) -> str | None:
    return recorded_env_id(wm.dataset.get("env_spec"))


@torch.no_grad()
def run_control(world_model: str | WorldModel, out_dir: str | Path | None = None, num_starts: int = 32,
                horizon: int = 12, samples: int = 2, context: int | None = None, sampler_steps: int | None = None,
                history_guidance: float | None = None,
                sigma_ctx: float | None = None, tolerance: int = 2, seed: int = 0, device: str = "cpu",
                batch_size: int = 64, progress: bool = True, stem: str = "control",
                precision: str = "fp32") -> dict[str, Any]:
    """Run the benchmark (see the module docstring); writes ``{stem}.png`` and ``{stem}_rollouts.png`` into
    ``out_dir`` when given."""
    from diffusion_world.envs.world_env import make_real_env

    for name, v in (("num_starts", num_starts), ("horizon", horizon), ("samples", samples)):
        if v < 1:
            raise UserError(f"{name} must be >= 1, got {v}")
    wm = world_model if isinstance(world_model, WorldModel) else load_world_model(world_model, device=device)
    context = int(context or wm.imagination.get("context_frames", 4))
    sampler = wm.sampler_config(sampler_steps, history_guidance)
    K = sampler.num_steps
    env = make_real_env(wm)
    space = env.action_space
    actions = action_set(space, np.random.default_rng(seed))
    real = collect_real(env, space, actions, num_starts, context, horizon, seed)
    env.close()
    N, A, R = num_starts, len(actions), samples

    # imagination: one row per (start, action, sample), the start's real context and the held action
    ctx = np.repeat(real["frames"][:, :1, :context], A * R, axis=1).reshape(N * A * R, context,
                                                                          *real["frames"].shape[3:])
    act_dtype = np.int64 if isinstance(space, gym.spaces.Discrete) else np.float32
    prefix = np.stack([np.stack([actions[0], *p]).astype(act_dtype) if context > 1 else
                       np.array([actions[0]], dtype=act_dtype) for p in real["prefixes"]])  # (N, context, ...)
    ctx_actions = np.repeat(prefix, A * R, axis=0)
    ctx_has = np.ones((N * A * R, context), dtype=bool)
    ctx_has[:, 0] = False  # the reset frame: no action led to it (its slot holds a placeholder)
    held = np.stack([np.asarray(actions[a], dtype=act_dtype) for a in range(A)])  # (A, ...)
    row_actions = np.tile(np.repeat(held, R, axis=0), (N,) + (1,) * (held.ndim - 1))  # (N*A*R, ...)
    seq = np.repeat(row_actions[:, None], horizon, axis=1)
    frames, probs = [], []
    for lo in tqdm(range(0, N * A * R, batch_size), desc="control rollouts", disable=not progress, leave=False):
        sl = slice(lo, lo + batch_size)
        gens = [torch.Generator().manual_seed(seed + lo + j) for j in range(len(ctx[sl]))]
        res = imagine(wm.model, torch.from_numpy(ctx[sl]), torch.from_numpy(ctx_actions[sl]),
                      torch.from_numpy(ctx_has[sl]), torch.from_numpy(seq[sl]), gens, sampler, sigma_ctx=sigma_ctx,
                      precision=precision)
        frames.append(res["frames"].numpy())
        probs.append(wm.termination_probability(res["termination_logits"], frames_to_x(res["frames"])).numpy())
    imagined = np.concatenate(frames).reshape(N, A, R, horizon, *real["frames"].shape[3:])
    p = np.concatenate(probs).reshape(N, A, R, horizon)

    scores = score_control(real["frames"][:, :, context:], real["lengths"], imagined)
    first, real_end = [], []
    for i in range(N):
        for a in range(A):
            if real["ends"][i, a]:
                for r in range(R):
                    hits = np.flatnonzero(p[i, a, r] > 0.5)
                    first.append(int(hits[0]) + 1 if len(hits) else None)
                    real_end.append(int(real["ends"][i, a]))
    table = [h for h in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if h <= horizon and scores["starts"][h - 1]]
    result: dict[str, Any] = {
        "world_model": str(wm.path), "checkpoint_step": wm.step, "env_id": _env_id(wm), "num_starts": N,
        "actions": [np.asarray(a).tolist() for a in actions], "samples": R,
        "context_frames": context, "horizon": horizon, "sampler_steps": K,
        **({"history_guidance": sampler.history_guidance} if sampler.guided else {}), "sigma_ctx": sigma_ctx,
        "tolerance": tolerance, "chance": 1.0 / A, "per_step": scores, "table_steps": table,
        "real_episode_end": {"terminated": len(real_end) // R if R else 0, "of": N * A,
                             "mean_step": float(np.mean(real_end)) if real_end else None},
        "termination": score_first_steps(first, real_end, tolerance),
    }
    h8 = max(h for h in table if h <= 8) - 1 if table else 0
    result["headline"] = {"accuracy_h1": scores["accuracy"][0], f"accuracy_h{h8 + 1}": scores["accuracy"][h8],
                          f"gain_h{h8 + 1}": scores["gain"][h8], "chance": 1.0 / A,
                          "termination_on_time": result["termination"]["on_time"]}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_control(out_dir / f"{stem}.png", result)
        plot_rollouts(out_dir / f"{stem}_rollouts.png", real["frames"][0], real["lengths"][0], imagined[0, :, 0],
                      context, actions)
    return result


def plot_control(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["per_step"]
    hs = np.arange(1, r["horizon"] + 1)
    val = lambda key: np.array([np.nan if v is None else v for v in s[key]], dtype=float)  # noqa: E731
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    axes[0].plot(hs, val("accuracy"), "o-", label="world model (n: start states counted, where fewer)")
    counted = [n or 0 for n in s.get("identifiable") or []]
    full = max(counted, default=0)
    for h, acc, n in zip(hs, val("accuracy"), counted):  # held actions end episodes: later steps count fewer
        if np.isfinite(acc) and n < full:
            axes[0].annotate(f"n={n}", (h, acc), textcoords="offset points", xytext=(0, -14), ha="center",
                             fontsize=8)
    axes[0].axhline(r["chance"], color="gray", ls="--", label="chance")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("action identification accuracy")
    axes[1].plot(hs, val("gain"), "o-", label="action effect gain (imagined on real)")
    axes[1].plot(hs, val("sample_spread"), "s--", label="sample spread (same action, two samples;\nlarge where "
                                                        "the real effect is still tiny)")
    axes[1].axhline(1.0, color="gray", lw=0.8)
    axes[1].set_ylabel("relative to the real effect of the actions")
    for ax in axes:
        ax.set_xlabel("steps of a held action after the real context")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Action response, {r['num_starts']} start states x {len(r['actions'])} held actions, "
                 f"{sampler_label(r)}, checkpoint step {r['checkpoint_step']}")
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def plot_rollouts(path: Path, real: np.ndarray, lengths: np.ndarray, imagined: np.ndarray, context: int,
                  actions: list[Any], max_steps: int = 12) -> None:
    """One start state: per action a row of real frames and a row of imagined ones (blank after a real end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    A, H = imagined.shape[:2]
    steps = min(H, max_steps)
    h, w = real.shape[-3:-1]
    gap = 2
    canvas = np.full((2 * A * (h + gap), (steps + 1) * (w + gap), 3), 255, np.uint8)
    for a in range(A):
        for k in range(2):  # 0: real, 1: imagined; column 0 is the last real context frame for both
            y = (2 * a + k) * (h + gap)
            for t in range(steps + 1):
                if k == 0 and t > lengths[a]:
                    continue  # the real episode had ended
                tile = real[a, context - 1 + t] if k == 0 or t == 0 else imagined[a, t - 1]
                canvas[y: y + h, t * (w + gap): t * (w + gap) + w] = tile
    fig, ax = plt.subplots(figsize=(1.3 * (steps + 1), 1.3 * 2 * A + 0.6), constrained_layout=True)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([t * (w + gap) + w / 2 for t in range(steps + 1)], ["ctx"] + [str(t) for t in range(1, steps + 1)])
    ax.set_yticks([(2 * a + k) * (h + gap) + h / 2 for a in range(A) for k in range(2)],
                  [f"{'real' if k == 0 else 'imagined'}, a={np.asarray(actions[a]).tolist()}"
                   for a in range(A) for k in range(2)])
    ax.set_xlabel("steps of the held action (ctx: the last real context frame)")
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def control_markdown(r: dict[str, Any]) -> str:
    from diffusion_world.bench.report import _f

    s = r["per_step"]
    lines = [f"{r['num_starts']} real start states of `{r['env_id']}` ({r['context_frames']} real context frames: a "
             f"seeded reset and random actions), each action in {r['actions']} held for up to {r['horizon']} steps "
             f"in the real env and in imagination ({r['samples']} samples each); {sampler_label(r)}; checkpoint "
             f"step {r['checkpoint_step']}. Identification: the share of imagined frames nearest to the real frame "
             f"of their own action (chance {r['chance']:.2f}; start states whose real frames differ between all "
             "actions). Gain: the imagined effect of the actions projected on the real one (1 = as in the real env, "
             "0 = actions ignored). Spread: two samples of the same action, relative to the real effect.", "",
             "| steps held | start states (identifiable) | identification | gain | sample spread "
             "| real difference (levels) |", "|---|---|---|---|---|---|"]
    for h in r["table_steps"]:
        i = h - 1
        levels = None if s["real_difference"][i] is None else 255 * s["real_difference"][i]
        lines.append(f"| {h} | {s['starts'][i]} ({_f(s['identifiable'][i])}) | {_f(s['accuracy'][i])} "
                     f"| {_f(s['gain'][i])} | {_f(s['sample_spread'][i])} | {_f(levels)} |")
    t, e = r["termination"], r["real_episode_end"]
    lines += ["", f"Real episodes that ended within {r['horizon']} steps: {e['terminated']} of {e['of']} (mean step "
              f"{_f(e['mean_step'], 1)}); imagined ones ended on time (±{r['tolerance']}) {_f(t['on_time'])}, early "
              f"{_f(t['early'])}, missed {_f(t['missed'])}."]
    return "\n".join(lines)
