"""FrameCache and WindowSampler: alignment with Minari episodes, windows inside episodes, splits, caching."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

import diffusion_world.data.dataset as dataset_module
from diffusion_world.data.collect import collect
from diffusion_world.data.dataset import FrameCache, WindowSampler
from diffusion_world.errors import UserError


def test_cache_matches_the_minari_episodes(tiny_dataset_id: str, tiny_frame_cache: FrameCache) -> None:
    cache = tiny_frame_cache
    dataset = minari.load_dataset(tiny_dataset_id)
    episodes = list(dataset.iterate_episodes())
    assert cache.num_episodes == len(episodes)
    assert cache.frames.shape == (dataset.total_steps + len(episodes), 16, 16, 3)
    assert cache.frames.dtype == np.uint8 and isinstance(cache.frames, np.memmap)
    assert cache.frame_size == (16, 16) and cache.action_space == gym.spaces.Discrete(2)
    assert cache.prev_actions.dtype == np.int64 and cache.rewards.dtype == np.float32
    assert np.array_equal(cache.episode_ids, [e.id for e in episodes])
    assert np.array_equal(cache.episode_seeds, np.arange(len(episodes)))
    for e, start, length in zip(episodes, cache.episode_starts, cache.episode_lengths):
        frames = slice(start, start + length)
        assert length == len(e.actions) + 1
        assert np.array_equal(cache.frames[frames], e.observations)
        # Frame t+1 carries action t and the reward/termination of the transition into it.
        assert not cache.has_prev_action[start] and cache.has_prev_action[start + 1 : start + length].all()
        assert cache.prev_actions[start] == 0 and cache.rewards[start] == 0
        assert np.array_equal(cache.prev_actions[start + 1 : start + length], e.actions)
        assert np.array_equal(cache.rewards[start + 1 : start + length], e.rewards)
        assert np.array_equal(cache.terminations[start + 1 : start + length], e.terminations)
        assert np.array_equal(cache.truncations[start + 1 : start + length], e.truncations)
    assert cache.env_spec == {
        "id": "diffusion_world/Pixels-v0",
        "env_id": "CartPole-v1",
        "size": 16,
        "frame_skip": 1,
        "max_episode_steps": 500,  # CartPole-v1's time limit, recorded by collect
    }
    env = gym.make(cache.env_spec["id"], **{k: v for k, v in cache.env_spec.items() if k != "id"})
    assert np.array_equal(
        env.reset(seed=int(cache.episode_seeds[1]))[0], cache.frames[cache.episode_starts[1]]
    )


def test_reopening_uses_the_cache(tiny_dataset_id: str, tiny_frame_cache: FrameCache, monkeypatch) -> None:
    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache rebuilt although the dataset did not change")

    monkeypatch.setattr(dataset_module, "_build_cache", no_rebuild)
    again = FrameCache.open(tiny_dataset_id, progress=False)
    assert again.directory == tiny_frame_cache.directory
    assert np.array_equal(again.frames, tiny_frame_cache.frames)


def test_a_dataset_folder_that_cannot_be_written_caches_elsewhere(minari_root: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared, read-only dataset store: the frame cache goes to ~/.cache/diffusion_world (with a warning) and is
    found there next time (train and play failed with a raw PermissionError); DIFFUSION_WORLD_CACHE_DIR chooses."""
    import errno

    collect("CartPole-v1", "tt/ro-v0", steps=30, size=8, progress=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_build = dataset_module._build_cache

    def read_only_store(dataset_id, directory, *args, **kwargs):
        if minari_root in directory.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(directory))
        return real_build(dataset_id, directory, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "_build_cache", read_only_store)
    with pytest.warns(UserWarning, match="cannot write the frame cache next to dataset 'tt/ro-v0' .*DIFFUSION_WORLD"):
        cache = FrameCache.open("tt/ro-v0", progress=False)
    assert cache.directory == tmp_path / "xdg" / "diffusion_world" / "tt" / "ro-v0" / "diffusion_world_cache"
    assert cache.num_frames == 30 + cache.num_episodes

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache rebuilt")

    monkeypatch.setattr(dataset_module, "_build_cache", no_rebuild)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FrameCache.open("tt/ro-v0", progress=False).directory == cache.directory
    monkeypatch.setattr(dataset_module, "_build_cache", real_build)
    monkeypatch.setenv("DIFFUSION_WORLD_CACHE_DIR", str(tmp_path / "mine"))
    chosen = FrameCache.open("tt/ro-v0", progress=False)
    assert chosen.directory == tmp_path / "mine" / "tt" / "ro-v0" / "diffusion_world_cache"
    assert np.array_equal(chosen.frames, cache.frames)


def test_a_damaged_dataset_file_is_one_line(minari_root: Path) -> None:
    """A truncated main_data.hdf5 (a copy cut short): a UserError naming the dataset, in training and in combine
    (a raw OSError from h5py)."""
    from diffusion_world.data.collect import combine

    collect("CartPole-v1", "tt/whole-v0", steps=10, size=8, progress=False)
    collect("CartPole-v1", "tt/cut-v0", steps=10, size=8, progress=False)
    h5 = minari_root / "tt" / "cut-v0" / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read Minari dataset 'tt/cut-v0'"):
        FrameCache.open("tt/cut-v0", progress=False)
    with pytest.raises(UserError, match="cannot read Minari dataset 'tt/cut-v0'"):
        combine(["tt/whole-v0", "tt/cut-v0"], "tt/both-v0")


def test_cache_is_rebuilt_when_the_dataset_changes(minari_root: Path, tmp_path: Path) -> None:
    dataset = collect("CartPole-v1", "tt/grows-v0", steps=30, size=8, progress=False)
    cache_dir = tmp_path / "caches" / "elsewhere"
    first = FrameCache.open("tt/grows-v0", cache_dir=cache_dir, progress=False)
    assert first.directory == cache_dir
    episode = dataset[0]
    dataset.update_dataset_from_buffer(
        [
            EpisodeBuffer(
                seed=99,
                observations=episode.observations,
                actions=episode.actions,
                rewards=episode.rewards,
                terminations=episode.terminations,
                truncations=episode.truncations,
            )
        ]
    )
    second = FrameCache.open("tt/grows-v0", cache_dir=cache_dir, progress=False)
    assert second.num_episodes == first.num_episodes + 1 and second.episode_seeds[-1] == 99
    # No temporary or stale cache directories are left behind.
    assert [p.name for p in cache_dir.parent.iterdir()] == ["elsewhere"]


def test_windows_never_cross_episodes(tiny_frame_cache: FrameCache) -> None:
    cache, seq_len = tiny_frame_cache, 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = WindowSampler(cache, seq_len=seq_len)
    lengths = cache.episode_lengths
    assert sampler.num_excluded_episodes == int((lengths < seq_len).sum()) > 0
    assert len(caught) == 1 and "shorter than seq_len=16" in str(caught[0].message)
    assert sampler.num_windows == int(np.maximum(lengths - seq_len + 1, 0).sum())
    batch = sampler.get(np.arange(sampler.num_windows))
    # The episode id of every frame, by construction from the episode layout.
    frame_episode = np.repeat(cache.episode_ids, lengths)
    frame_indices = batch["window_starts"][:, None] + np.arange(seq_len)
    window_episodes = frame_episode[frame_indices]
    assert (window_episodes == window_episodes[:, :1]).all()
    assert len(np.unique(batch["window_starts"])) == sampler.num_windows  # every window exactly once
    assert batch["has_action"][:, 1:].all()  # only a window's first frame can be an episode's first frame
    first_frames = np.isin(batch["window_starts"], cache.episode_starts)
    assert (batch["has_action"][:, 0] == ~first_frames).all()


def test_sample_shapes_and_determinism(tiny_frame_cache: FrameCache) -> None:
    sampler = WindowSampler(tiny_frame_cache, seq_len=4)
    batch = sampler.sample(32, np.random.default_rng(0))
    assert batch["frames"].shape == (32, 4, 16, 16, 3) and batch["frames"].dtype == np.uint8
    assert batch["actions"].shape == (32, 4) and batch["actions"].dtype == np.int64
    assert batch["has_action"].dtype == bool and batch["rewards"].dtype == np.float32
    assert batch["terminations"].shape == (32, 4) and batch["window_starts"].dtype == np.int64
    again = sampler.sample(32, np.random.default_rng(0))
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    starts = batch["window_starts"]
    assert np.array_equal(batch["frames"][:, 2], tiny_frame_cache.frames[starts + 2])


def test_episode_split(tiny_frame_cache: FrameCache) -> None:
    train, val = tiny_frame_cache.episode_split(0.25, seed=1)
    num = tiny_frame_cache.num_episodes
    assert len(val) == round(num * 0.25) and len(train) + len(val) == num
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(num))
    assert all(
        np.array_equal(a, b) for a, b in zip((train, val), tiny_frame_cache.episode_split(0.25, seed=1))
    )
    assert not np.array_equal(val, tiny_frame_cache.episode_split(0.25, seed=2)[1])
    assert len(tiny_frame_cache.episode_split(0.001)[1]) == 1
    assert len(tiny_frame_cache.episode_split(0.0)[1]) == 0
    sampler = WindowSampler(tiny_frame_cache, seq_len=2, episodes=val)
    frame_episode = np.repeat(np.arange(num), tiny_frame_cache.episode_lengths)
    assert set(frame_episode[sampler.window_starts]) == set(val)


def test_box_actions(minari_root: Path) -> None:
    collect("MountainCarContinuous-v0", "tt/mcc-v0", steps=10, size=8, progress=False)
    cache = FrameCache.open("tt/mcc-v0", progress=False)
    assert cache.prev_actions.shape == (11, 1) and cache.prev_actions.dtype == np.float32
    batch = WindowSampler(cache, seq_len=3).sample(5, np.random.default_rng(0))
    assert batch["actions"].shape == (5, 3, 1) and batch["actions"].dtype == np.float32


def test_missing_dataset(minari_root: Path) -> None:
    with pytest.raises(UserError, match=r"'tt/absent-v0' not found in MINARI_DATASETS_PATH="):
        FrameCache.open("tt/absent-v0")
    for bad in ("nope", "bad id"):  # said "not found"
        with pytest.raises(UserError, match=f"invalid dataset id '{bad}': expected NAMESPACE/NAME-vN"):
            FrameCache.open(bad)


def test_non_image_dataset_is_refused(minari_root: Path) -> None:
    env = gym.make("CartPole-v1")
    state, _ = env.reset(seed=0)
    states, actions = [state], []
    for _ in range(5):
        actions.append(1)
        states.append(env.step(1)[0])
    buffer = EpisodeBuffer(
        seed=0,
        observations=np.stack(states),
        actions=np.array(actions),
        rewards=np.ones(5),
        terminations=np.zeros(5, bool),
        truncations=np.zeros(5, bool),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("tt/state-v0", [buffer], env=env)
    with pytest.raises(UserError, match=r"needs image observations Box\(0, 255, \(H, W, 3\), uint8\); if it holds "
                                        r"states, render them into frames: `diffusion-world render tt/state-v0"):
        FrameCache.open("tt/state-v0", progress=False)


def _hand_made(dataset_id: str, action_space: gym.Space, actions: np.ndarray, rewards: np.ndarray) -> None:
    """One 4-step episode of 16x16 frames with the given actions and rewards (Minari checks neither)."""
    class Frames(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)

    env = Frames()
    env.action_space = action_space
    buffer = EpisodeBuffer(seed=0, observations=np.zeros((5, 16, 16, 3), np.uint8), actions=actions,
                           rewards=rewards, terminations=np.zeros(4, bool), truncations=np.zeros(4, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(dataset_id, [buffer], env=env)


@pytest.mark.parametrize("space,actions,rewards,message", [
    # a NaN reward made every imagined reward NaN (and the reward range [nan, nan]); inf likewise
    (gym.spaces.Discrete(2), [0, 1, 0, 1], [0, 1, np.nan, 1],
     r"episode 0: reward nan at step 2: rewards must be finite"),
    (gym.spaces.Discrete(2), [0, 1, 0, 1], [0, np.inf, 0, 1], r"reward inf at step 1"),
    (gym.spaces.Discrete(2), [0, 1, 0, 1], [0, 0, 1e300, 1], r"reward 1e\+300 at step 2: .*finite in float32"),
    (gym.spaces.Box(-1, 1, (2,)), np.array([[0, 0], [0, 0], [1e300, 0], [0, 0]]), [0, 0, 0, 0],
     r"action \[1e\+300, 0.0\] at step 2 is not finite in float32"),
    # action n trained as the model's "no action"; a negative one crashed in one_hot
    (gym.spaces.Discrete(2), [0, 1, 2, 1], [0, 0, 0, 0],
     r"action 2 at step 2 is not in the action space Discrete\(2\)"),
    (gym.spaces.Discrete(2), [0, -1, 0, 1], [0, 0, 0, 0], r"action -1 at step 1 is not in"),
    (gym.spaces.Box(-1, 1, (2,)), np.array([[0, 0], [0, np.nan], [0, 0], [0, 0]]), [0, 0, 0, 0],
     r"action \[0.0, nan\] at step 1 is not finite"),
    # legal spaces the model cannot take: a Box without dimensions crashed in the model, a start != 0 was
    # refused without naming the dataset
    (gym.spaces.Box(-1, 1, ()), np.zeros(4), [0, 0, 0, 0], r"'tt/bad-v0' has action space .*at least one dimension"),
    (gym.spaces.Discrete(3, start=-1), [0, 1, 0, 1], [0, 0, 0, 0], r"'tt/bad-v0' has action space .*non-zero start"),
])
def test_bad_steps_are_refused_naming_the_episode(minari_root: Path, space, actions, rewards, message) -> None:
    _hand_made("tt/bad-v0", space, np.asarray(actions), np.asarray(rewards, dtype=np.float64))
    with pytest.raises(UserError, match=message):
        FrameCache.open("tt/bad-v0", progress=False)
    assert not [p for p in minari_root.rglob("*") if "cache" in p.name.lower() or ".tmp-" in p.name]


@pytest.mark.parametrize("frame_size", [None, 16])
def test_float_images_and_dict_observations_are_not_told_to_render(frame_size: int | None) -> None:
    """Float [0, 1] images were told to `render` their "states"; a Dict holding an image is told to render its
    episodes into frames (replayed from their seeds), in one line."""
    from diffusion_world.data.dataset import _check_image_space

    floats = gym.spaces.Box(0, 1, (16, 16, 3), np.float32)
    with pytest.raises(UserError, match=r"its images are not uint8: record them as levels 0-255") as e:
        _check_image_space("tt/floats-v0", floats, frame_size)
    assert "render" not in str(e.value)
    both = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
                            "state": gym.spaces.Box(0, 1, (4,))})
    with pytest.raises(UserError, match=r"a Dict with images under \['pixels'\]: diffusion_world trains on frames"
                                        r".* render its episodes into frames, `diffusion-world render tt/dict-v0"):
        _check_image_space("tt/dict-v0", both, frame_size)
    with pytest.raises(UserError, match="if it holds states, render them"):  # states are still told to render
        _check_image_space("tt/states-v0", gym.spaces.Box(-1, 1, (4,)), frame_size)
    lander = gym.spaces.Box(np.linspace(-9, -1, 8), np.linspace(1, 9, 8), dtype=np.float32)  # prints on 3 lines
    with pytest.raises(UserError) as e:
        _check_image_space("tt/lander-v0", gym.spaces.Dict({"pixels": both["pixels"], "state": lander}), frame_size)
    assert "\n" in str(lander) and "\n" not in str(e.value)


@pytest.mark.parametrize("frame_size", [None, 16])
def test_uint8_observations_that_are_not_image_levels_are_refused(frame_size: int | None) -> None:
    """A 0/1 mask in a uint8 Box would train as all but black frames (-1 after scaling): refused, by its bounds."""
    from diffusion_world.data.dataset import _check_image_space

    mask = gym.spaces.Box(0, 1, (16, 16, 3), np.uint8)
    with pytest.raises(UserError, match="its bounds are not 0 and 255"):
        _check_image_space("tt/mask-v0", mask, frame_size)
    frames = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert _check_image_space("tt/frames-v0", frames, frame_size) is frames


def test_padded_windows_run_past_episode_ends(tiny_frame_cache: FrameCache) -> None:
    """pad_ends: a window starts at every frame; past the episode's end it repeats the last frame, marked invalid,
    with no action, reward or termination. Every termination then sits at every window position."""
    cache, T = tiny_frame_cache, 8
    sampler = WindowSampler(cache, seq_len=T, pad_ends=True)
    assert sampler.num_windows == cache.num_frames and sampler.num_excluded_episodes == 0
    batch = sampler.get(np.arange(sampler.num_windows))
    frame_episode = np.repeat(np.arange(cache.num_episodes), cache.episode_lengths)
    ends = (cache.episode_starts + cache.episode_lengths)[frame_episode[batch["window_starts"]]]
    index = batch["window_starts"][:, None] + np.arange(T)
    valid = index < ends[:, None]
    assert np.array_equal(batch["valid"], valid)
    assert np.array_equal(batch["frames"][valid], cache.frames[index[valid]])
    last = cache.frames[ends - 1][:, None].repeat(T, axis=1)
    assert np.array_equal(batch["frames"][~valid], last[~valid])
    assert not (batch["has_action"][~valid].any() or batch["terminations"][~valid].any())
    assert (batch["rewards"][~valid] == 0).all() and (batch["actions"][~valid] == 0).all()
    assert np.array_equal(batch["has_action"][valid], cache.has_prev_action[index[valid]])
    assert np.array_equal(batch["terminations"][valid], cache.terminations[index[valid]])
    # the terminal windows: exactly those containing a termination, T per terminated episode, one per position
    terminated = int(cache.terminations.sum())
    assert terminated > 0
    assert np.array_equal(sampler.terminal_windows, np.flatnonzero(batch["terminations"].any(axis=1)))
    positions = np.argmax(batch["terminations"][sampler.terminal_windows], axis=1)
    assert np.array_equal(np.bincount(positions, minlength=T), np.full(T, terminated))
    # without padding, a window never leaves its episode and a termination is always at the last position
    inner = WindowSampler(cache, seq_len=T)
    inner_batch = inner.get(inner.terminal_windows)
    assert inner_batch["valid"].all() and inner_batch["terminations"][:, -1].all()


def test_terminal_windows_are_oversampled_on_request(tiny_frame_cache: FrameCache) -> None:
    plain = WindowSampler(tiny_frame_cache, seq_len=4, pad_ends=True)
    over = WindowSampler(tiny_frame_cache, seq_len=4, pad_ends=True, terminal_fraction=0.5)
    base = plain.terminal_windows.size / plain.num_windows
    for sampler, expected in ((plain, base), (over, 0.5 + 0.5 * base)):
        batch = sampler.sample(8000, np.random.default_rng(0))
        assert abs(batch["terminations"].any(axis=1).mean() - expected) < 0.02
        w = batch["termination_weights"]  # the termination loss's weights: it sees the uniform windows' rate
        empirical = (batch["terminations"] * w).sum() / w.sum()
        assert abs(empirical - sampler.termination_rate()) < 0.1 * sampler.termination_rate()
    assert plain.termination_rate() == over.termination_rate()
    with pytest.raises(UserError, match="terminal_fraction"):
        WindowSampler(tiny_frame_cache, seq_len=4, terminal_fraction=1.0)


def test_termination_weights_undo_the_oversampling(tiny_frame_cache: FrameCache) -> None:
    """Oversampling windows that contain a termination oversamples the terminal instances of a state, not its
    other instances: a termination head trained on such batches learnt the sampler's probability of termination
    (0.44 where the data's is 0.09). Weighted by ``termination_weights``, every frame counts as often as under
    uniform windows, so the weighted loss has the uniform one's expectation, and the head learns the data's.
    Position by position too: the causal model's output at a frame depends on the context before it (weights per
    frame were exact by frame but gave the frame before a termination 0.61x its weight at the last position)."""
    n, T, draws = len(tiny_frame_cache.frames), 4, 40_000
    counts = {}
    for fraction in (0.0, 0.5):
        sampler = WindowSampler(tiny_frame_cache, seq_len=T, pad_ends=True, terminal_fraction=fraction)
        batch = sampler.sample(draws, np.random.default_rng(1))
        pairs = (batch["window_starts"][:, None] + np.arange(T)) * T + np.arange(T)  # (frame, position)
        valid = batch["valid"]
        counts[fraction] = (np.bincount(pairs[valid], minlength=n * T) / draws,
                            np.bincount(pairs[valid], weights=batch["termination_weights"][valid],
                                        minlength=n * T) / draws)
    uniform, _ = counts[0.0]
    raw, weighted = counts[0.5]
    terminal = np.flatnonzero(tiny_frame_cache.terminations)
    by_frame = lambda c: c.reshape(n, T).sum(1)  # noqa: E731
    assert terminal.size and (by_frame(raw)[terminal] > 3 * by_frame(uniform)[terminal]).all()  # oversampled
    np.testing.assert_allclose(by_frame(weighted), by_frame(uniform), atol=0.02, rtol=0.1)  # weighted back
    # at every position, exactly: the expectation over how sample() draws windows, window by window
    f = 0.5
    sampler = WindowSampler(tiny_frame_cache, seq_len=T, pad_ends=True, terminal_fraction=f)
    N, everything = sampler.num_windows, sampler.get(np.arange(sampler.num_windows))
    drawn = np.full(N, (1 - f) / N)
    drawn[sampler.terminal_windows] += f / sampler.terminal_windows.size
    pairs = (everything["window_starts"][:, None] + np.arange(T)) * T + np.arange(T)
    valid = everything["valid"]
    expected = np.bincount(pairs[valid], weights=(drawn[:, None] * everything["termination_weights"])[valid],
                           minlength=n * T)
    np.testing.assert_allclose(expected, np.bincount(pairs[valid], minlength=n * T) / N, rtol=1e-6, atol=1e-9)
    assert (WindowSampler(tiny_frame_cache, seq_len=4).sample(5, np.random.default_rng(0))["termination_weights"]
            == 1).all()


def test_bad_sampler_arguments(tiny_frame_cache: FrameCache) -> None:
    with pytest.raises(UserError, match="no episode"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            WindowSampler(tiny_frame_cache, seq_len=10_000)
    with pytest.raises(UserError, match="longest"):  # padding does not make a window longer than any episode ok
        WindowSampler(tiny_frame_cache, seq_len=10_000, pad_ends=True)
    with pytest.raises(UserError, match="seq_len"):
        WindowSampler(tiny_frame_cache, seq_len=0)
    with pytest.raises(UserError, match="val_fraction"):
        tiny_frame_cache.episode_split(1.0)
