"""Frames after a termination recorded as terminal (absorbing) states: ``collect(post_terminal_steps=N)``, and
everything that needs "the" end of an episode using its first terminal frame (``FrameCache.live_lengths``)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import minari
import numpy as np
import pytest

from diffusion_world.cli import main
from diffusion_world.data.collect import collect
from diffusion_world.data.dataset import FrameCache, WindowSampler
from diffusion_world.errors import UserError

collect_module = importlib.import_module("diffusion_world.data.collect")
TAIL = 5


@pytest.fixture
def absorbing_id(minari_root: Path) -> str:
    collect("CartPole-v1", "tt/absorbing-v0", steps=160, size=16, seed=3, post_terminal_steps=TAIL, progress=False)
    return "tt/absorbing-v0"


def test_episodes_stay_terminal_after_their_first_termination(absorbing_id: str) -> None:
    dataset = minari.load_dataset(absorbing_id)
    episodes = list(dataset.iterate_episodes())
    assert len(episodes) >= 4 and sum(len(e.actions) for e in episodes) == 160
    for e in episodes[:-1]:
        first = int(np.argmax(e.terminations))
        assert e.terminations[first] and not e.terminations[:first].any()
        assert e.terminations[first:].all() and len(e.terminations) == first + 1 + TAIL  # N more steps, all terminal
        assert not e.truncations.any()
        assert (e.rewards[: first + 1] == 1.0).all() and (e.rewards[first + 1:] == 0.0).all()  # CartPole's own
        # the pole goes on falling: every frame of the tail differs from the one before
        tail = e.observations[first + 1:].astype(int)
        assert (np.abs(np.diff(tail, axis=0)).sum(axis=(1, 2, 3)) > 0).all()
    # the recorded env replays an episode's tail exactly (it can step after its termination)
    env = dataset.recover_environment()
    seed = next(iter(dataset.storage.get_episode_metadata([0])))["seed"]
    env.reset(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        replay = [env.step(int(a))[0] for a in episodes[0].actions]
    assert np.array_equal(np.stack(replay), episodes[0].observations[1:])
    assert "recorded as terminal" in dataset.storage.metadata["description"]
    assert dataset.storage.metadata["post_terminal_steps"] == TAIL  # machine-readable, for other readers
    # combine says which sources had them (it dropped the description: nothing said why episodes end that way)
    from diffusion_world.data.collect import combine

    collect("CartPole-v1", "tt/plain-v0", steps=20, size=16, seed=90, progress=False)
    merged = combine([absorbing_id, "tt/plain-v0"], "tt/mixed-tails-v0")
    assert merged.storage.metadata["post_terminal_steps_of"] == {absorbing_id: TAIL}
    collect("CartPole-v1", "tt/plain2-v0", steps=20, size=16, seed=95, progress=False)
    again = combine(["tt/mixed-tails-v0", "tt/plain2-v0"], "tt/mixed-tails-again-v0")
    assert again.storage.metadata["post_terminal_steps_of"] == {absorbing_id: TAIL}
    assert "post_terminal_steps" not in minari.load_dataset("tt/plain-v0").storage.metadata


def test_live_lengths_end_at_the_first_terminal_frame(absorbing_id: str, tiny_frame_cache: FrameCache) -> None:
    cache = FrameCache.open(absorbing_id, progress=False)
    for e in range(cache.num_episodes):
        start, n = cache.episode_starts[e], cache.episode_lengths[e]
        terms = cache.terminations[start: start + n]
        expected = int(np.argmax(terms)) + 1 if terms.any() else n
        assert cache.live_lengths[e] == expected
    assert (cache.live_lengths[:-1] == cache.episode_lengths[:-1] - TAIL).all()
    # datasets without a tail: the live length is the whole episode
    assert np.array_equal(tiny_frame_cache.live_lengths, tiny_frame_cache.episode_lengths)


def test_terminal_windows_and_termination_rate_with_tails(absorbing_id: str) -> None:
    cache = FrameCache.open(absorbing_id, progress=False)
    first_terminal = (cache.episode_starts + cache.live_lengths - 1)[cache.terminations[
        cache.episode_starts + cache.live_lengths - 1]]
    T = 4
    sampler = WindowSampler(cache, seq_len=T, pad_ends=True, terminal_fraction=0.5)
    index = sampler.window_starts[:, None] + np.arange(T)
    contains = np.isin(index, first_terminal).any(axis=1)
    assert np.array_equal(sampler.terminal_windows, np.flatnonzero(contains))
    assert len(sampler.terminal_windows) == T * len(first_terminal)
    batch = sampler.sample(8000, np.random.default_rng(0))
    w = batch["termination_weights"]  # tails make several terminal frames a window
    empirical = (batch["terminations"] * w).sum() / w.sum()
    assert abs(empirical - sampler.termination_rate()) < 0.05 * sampler.termination_rate()


def test_contexts_and_termination_windows_stop_at_the_first_terminal_frame(absorbing_id: str) -> None:
    from diffusion_world.bench.termination import end_windows
    from diffusion_world.envs.core import DatasetContexts

    cache = FrameCache.open(absorbing_id, progress=False)
    contexts = DatasetContexts(cache, 4)
    for windows in (contexts.anywhere_windows, contexts.episode_start_windows):
        index = windows[:, None] + np.arange(4)
        assert not cache.terminations[index].any()  # no context shows a terminal state
    # so do the contexts a checkpoint stores (they took the first frames of episodes long enough, terminal
    # frames and those after the termination included, where the episode was short)
    from diffusion_world.training.train import _reset_contexts

    stored = _reset_contexts(cache, np.arange(cache.num_episodes), 100, 12)
    firsts = cache.episode_starts[cache.live_lengths >= 13][:, None] + np.arange(12)
    assert np.array_equal(stored["frames"].numpy(), cache.frames[firsts])
    assert (cache.live_lengths < 13).any() and (cache.episode_lengths[cache.live_lengths < 13] >= 12).any()
    episodes = np.arange(cache.num_episodes - 1)
    starts, steps = end_windows(cache, episodes, 4, 6)
    ends = starts + 4 + steps - 1
    assert cache.terminations[ends].all() and not cache.terminations[ends - 1].any()


def test_bad_values_and_envs_that_cannot_go_on(minari_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="post_terminal_steps"):
        collect("CartPole-v1", "tt/x-v0", steps=5, size=8, post_terminal_steps=-1, progress=False)

    make = collect_module.make_pixel_env

    def strict(*args, **kwargs):  # an env that refuses to step once its episode has ended
        env = make(*args, **kwargs)
        step, ended = env.step, [False]

        def checked(action):
            if ended[0]:
                raise RuntimeError("episode is over")
            out = step(action)
            ended[0] = out[2]
            return out

        env.step = checked
        return env

    monkeypatch.setattr(collect_module, "make_pixel_env", strict)
    with pytest.raises(UserError, match="cannot step after its episode terminated"):
        collect("CartPole-v1", "tt/strict-v0", steps=100, size=8, post_terminal_steps=2, progress=False)
    assert not (minari_root / "tt/strict-v0").exists()  # nothing half-written


def test_cli_flag(minari_root: Path) -> None:
    assert main(["collect", "--env", "CartPole-v1", "--dataset-id", "tt/cli-tail-v0", "--steps", "60", "--size", "8",
                 "--post-terminal-steps", "2", "--quiet"]) == 0
    e = minari.load_dataset("tt/cli-tail-v0")[0]
    assert e.terminations[-3:].all() and not e.terminations[:-3].any()


def test_termination_benchmark_goes_on_past_the_end(absorbing_id: str, tiny_world_model: str,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where the data has frames after its terminations, the rollouts go on ``tolerance`` steps past the real end
    (a termination there is late but on time); elsewhere they stop at the real terminal frame. A termination
    probability that fires at the last step rolled out shows which. The calibration on real frames stops at each
    episode's first terminal frame: the frames after it, terminal too, are not counted."""
    import torch

    from diffusion_world.bench import termination
    from diffusion_world.checkpoint import load_world_model

    def fires_at_the_last_step(path, device="cpu"):
        wm = load_world_model(path, device=device)
        wm.termination_probability = lambda logits, frames=None: torch.nn.functional.one_hot(
            torch.full(logits.shape[:1], logits.shape[1] - 1), logits.shape[1]).float()
        return wm

    monkeypatch.setattr(termination, "load_world_model", fires_at_the_last_step)
    r = termination.run_termination(tiny_world_model, dataset_id=absorbing_id, horizon=6, tolerance=2,
                                    progress=False, out=tmp_path, stem="tails")
    assert r["steps_past_end"] == 2 and r["imagined"]["episodes"] >= 4
    assert r["imagined"]["on_time"] == 1.0 and r["imagined"]["mean_abs_step_error"] == 2.0
    cache = FrameCache.open(absorbing_id, progress=False)
    scored = cache.terminations[cache.episode_starts + cache.live_lengths - 1] & (cache.live_lengths >= 5)
    assert scored.sum() == r["imagined"]["episodes"]  # every terminated episode with 4 context frames + its end
    c = r["real_frames_calibration"]
    assert c["terminal_frames"] == scored.sum() and c["frames"] == cache.live_lengths[scored].sum()
    assert sum(b["frames"] for b in c["bins"]) == c["frames"]
    assert (tmp_path / "tails.png").stat().st_size > 0
    assert "| probability bin | frames | terminal |" in termination.termination_markdown(r)
    collect("CartPole-v1", "tt/no-tail-v0", steps=160, size=16, seed=3, progress=False)
    r = termination.run_termination(tiny_world_model, dataset_id="tt/no-tail-v0", horizon=6, tolerance=2,
                                    progress=False)
    assert r["steps_past_end"] == 0 and r["heldout"].startswith("every episode")
    assert r["heldout_episode_seeds"][0] == 3  # collect --seed 3: episode i reset with seed 3 + i
    assert r["imagined"]["on_time"] == 1.0 and r["imagined"]["mean_abs_step_error"] == 0.0
    assert "stop at the real terminal frame" in termination.termination_markdown(r)
    collect("CartPole-v1", "tt/cut-v0", steps=5, size=16, seed=3, progress=False)  # one episode, cut after 5 steps
    with pytest.raises(UserError, match=r"none of the 1 held-out episode\(s\) of 'tt/cut-v0' terminates"):
        termination.run_termination(tiny_world_model, dataset_id="tt/cut-v0", progress=False)
    # a run that held out no episode of its dataset: said so, not "they are all truncated"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(termination, "heldout_episodes", lambda *a: (np.zeros(0, np.int64), "none", None))
        with pytest.raises(UserError, match="'tt/cut-v0' has no held-out episodes .*pass --dataset-id"):
            termination.run_termination(tiny_world_model, dataset_id="tt/cut-v0", progress=False)


def test_imagined_classifier_frames_go_on_past_the_end(absorbing_id: str, tmp_path: Path) -> None:
    """``fit-termination --imagined-episodes``: where the data has frames after a termination, the rollouts go on
    ``imagined_past_end`` steps past the real terminal frame, each of those frames labelled terminal like the real
    one at that step; with 0 they stop at the terminal frame, its only positive."""
    from worldmodel_fixtures import make_tiny_checkpoint

    from diffusion_world.training.termination import TerminationFitConfig, imagined_frames

    cache = FrameCache.open(absorbing_id, progress=False)
    src = make_tiny_checkpoint(tmp_path / "wm.pt", cache=cache, imagination={"context_frames": 2, "sampler_steps": 1})
    split = (np.arange(cache.num_episodes), np.zeros(0, dtype=np.int64))
    live, tail = cache.live_lengths, cache.episode_lengths - cache.live_lengths
    terminated = cache.terminations[cache.episode_starts + live - 1]
    assert terminated.sum() >= 4 and (tail[terminated] == TAIL).all()
    for past in (0, 2):
        cfg = TerminationFitConfig(imagined_episodes=1000, imagined_horizon=5, imagined_past_end=past)
        out = imagined_frames(src, [cache], [split], cfg, progress=False)["train"]
        assert len(out["labels"]) == (np.minimum(live - 2, 5) + np.minimum(tail, past)).sum()
        assert out["labels"].sum() == terminated.sum() * (1 + past)
    with pytest.raises(UserError, match="imagined_past_end"):
        TerminationFitConfig(imagined_past_end=-1).validate()
