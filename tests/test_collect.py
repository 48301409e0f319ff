"""collect(): Minari round trip, lossless frames reproducible from the recorded seeds, chunks, policies,
atomicity, and every bad input through the CLI (exit 2, one line, no traceback)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

from diffusion_world.cli import main
from diffusion_world.data.collect import collect
from diffusion_world.errors import UserError
from diffusion_world.registration import PIXEL_ENV_ID

# The module, not the function that diffusion_world.data re-exports under the same name.
collect_module = importlib.import_module("diffusion_world.data.collect")

TINY_SIZE, TINY_STEPS, TINY_SEED = 16, 300, 0  # as in conftest's tiny_dataset_id (checked below)


def test_round_trip(tiny_dataset_id: str, tiny_dataset_config: dict) -> None:
    assert tiny_dataset_config == {"env_id": "CartPole-v1", "size": TINY_SIZE, "steps": TINY_STEPS, "seed": 0}
    dataset = minari.load_dataset(tiny_dataset_id)
    assert dataset.total_steps == TINY_STEPS
    assert dataset.observation_space == gym.spaces.Box(0, 255, (TINY_SIZE, TINY_SIZE, 3), np.uint8)
    assert dataset.action_space == gym.spaces.Discrete(2)
    assert dataset.env_spec.id == PIXEL_ENV_ID
    assert dataset.env_spec.kwargs == {"env_id": "CartPole-v1", "size": TINY_SIZE, "frame_skip": 1}
    episodes = list(dataset.iterate_episodes())
    assert sum(len(e.actions) for e in episodes) == TINY_STEPS
    for e in episodes:
        assert e.observations.shape == (len(e.actions) + 1, TINY_SIZE, TINY_SIZE, 3)
        assert e.observations.dtype == np.uint8
        assert np.all(e.rewards == 1.0)
        assert e.terminations[-1] or e.truncations[-1]
        assert not (e.terminations[:-1].any() or e.truncations[:-1].any())
    # The step budget cut the last episode: it is marked truncated.
    assert episodes[-1].truncations[-1] and not episodes[-1].terminations[-1]
    seeds = [m["seed"] for m in dataset.storage.get_episode_metadata(range(len(episodes)))]
    assert seeds == [TINY_SEED + i for i in range(len(episodes))]


def test_recovered_env_reproduces_every_first_frame_and_an_episode(tiny_dataset_id: str) -> None:
    dataset = minari.load_dataset(tiny_dataset_id)
    env = dataset.recover_environment()
    metadata = list(dataset.storage.get_episode_metadata(dataset.episode_indices))
    for episode, meta in zip(dataset.iterate_episodes(), metadata):
        frame, _ = env.reset(seed=meta["seed"])
        assert np.array_equal(frame, episode.observations[0])
    # Replaying the recorded actions reproduces the whole episode exactly.
    episode = dataset[0]
    env.reset(seed=metadata[0]["seed"])
    replay = [env.step(int(a))[0] for a in episode.actions]
    assert np.array_equal(np.stack(replay), episode.observations[1:])


def test_lossless_by_default_and_jpeg_on_request(minari_root: Path) -> None:
    # Minari only JPEG-encodes images of at least 32x32: use 32x32 frames.
    lossless = collect("CartPole-v1", "tt/lossless-v0", steps=12, size=32, progress=False)
    lossy = collect("CartPole-v1", "tt/jpeg-v0", steps=12, size=32, lossless=False, progress=False)
    env = lossless.recover_environment()
    for dataset in (lossless, lossy):
        frame, _ = env.reset(seed=0)
        first = dataset[0].observations[0]
        error = np.abs(first.astype(int) - frame.astype(int)).max()
        assert error == 0 if dataset is lossless else error > 0
    meta = json.loads((minari_root / "tt/lossless-v0/data/metadata.json").read_text())
    assert meta["jpeg_encoding"] is False


def test_chunks_give_the_same_dataset(minari_root: Path) -> None:
    one = collect("CartPole-v1", "tt/one-chunk-v0", steps=60, size=8, seed=5, progress=False)
    many = collect(
        "CartPole-v1", "tt/many-chunks-v0", steps=60, size=8, seed=5, chunk_steps=7, progress=False
    )
    assert one.total_episodes == many.total_episodes >= 2
    for a, b in zip(one.iterate_episodes(), many.iterate_episodes()):
        assert np.array_equal(a.observations, b.observations)
        assert np.array_equal(a.actions, b.actions)
        assert np.array_equal(a.truncations, b.truncations)


def test_box_actions(minari_root: Path) -> None:
    dataset = collect("Pendulum-v1", "tt/pendulum-v0", steps=20, size=8, progress=False)
    episode = dataset[0]
    assert isinstance(dataset.action_space, gym.spaces.Box)
    assert episode.actions.shape == (20, 1) and episode.actions.dtype == np.float32
    assert episode.truncations[-1]


def test_sb3_policy_with_epsilon(minari_root: Path, tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    # An untrained model is enough: collect must detect PPO and feed it CartPole's state vector.
    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=16, batch_size=16, device="cpu")
    model.save(tmp_path / "ppo_cartpole")
    dataset = collect(
        "CartPole-v1",
        "tt/ppo-v0",
        steps=30,
        size=8,
        policy=str(tmp_path / "ppo_cartpole.zip"),
        epsilon=0.5,
        progress=False,
    )
    assert dataset.total_steps == 30
    assert "PPO" in type(collect_module.load_sb3_model(tmp_path / "ppo_cartpole.zip")).__name__


def test_sb3_policy_on_stacked_frames(minari_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that watches the last 2 frames (trained in imagination with frame_stack=2) collects: it is fed
    the frames stacked as the imagined and real envs stack them, the first frame of each episode repeated."""
    from stable_baselines3 import PPO

    from diffusion_world.data.pixel_env import make_pixel_env
    from diffusion_world.envs.world_env import ChannelFrameStack

    stacked = ChannelFrameStack(make_pixel_env("CartPole-v1", size=16), 2)
    PPO("MlpPolicy", stacked, n_steps=16, batch_size=16, device="cpu").save(tmp_path / "stacked")
    real_load = collect_module.load_sb3_model
    seen: list[np.ndarray] = []

    def load(path):
        model = real_load(path)
        predict = model.predict
        model.predict = lambda obs, **kw: (seen.append(obs.copy()), predict(obs, **kw))[1]
        return model

    monkeypatch.setattr(collect_module, "load_sb3_model", load)
    dataset = collect("CartPole-v1", "tt/stacked-v0", steps=40, size=16, policy=str(tmp_path / "stacked.zip"),
                      seed=3, progress=False)
    episodes = list(dataset.iterate_episodes())
    assert len(episodes) >= 2 and len(seen) == 40  # epsilon 0: the agent acted on every step
    expected = []  # what ChannelFrameStack gives an agent, episode by episode
    for ep in episodes:
        frames = ep.observations
        for t in range(len(ep.actions)):
            expected.append(np.concatenate([frames[max(t - 1, 0)], frames[t]], axis=-1))
    np.testing.assert_array_equal(np.stack(seen), np.stack(expected))


def test_sb3_policy_with_wrong_spaces_is_refused(minari_root: Path, tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=16, batch_size=16, device="cpu").save(tmp_path / "pend")
    with pytest.raises(UserError, match="action space"):
        collect("CartPole-v1", "tt/x-v0", steps=5, size=8, policy=str(tmp_path / "pend.zip"), progress=False)


def test_interrupted_collection_leaves_nothing(minari_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_make_policy = collect_module.make_policy

    def failing_policy(*args, **kwargs):
        act = real_make_policy(*args, **kwargs)
        calls = iter(range(10**9))

        def step(frame, info):
            if next(calls) == 50:  # after the first chunks were written to disk
                raise KeyboardInterrupt
            return act(frame, info)

        return step

    monkeypatch.setattr(collect_module, "make_policy", failing_policy)
    with pytest.raises(KeyboardInterrupt):
        collect("CartPole-v1", "tt/interrupted-v0", steps=100, size=8, chunk_steps=10, progress=False)
    assert list(minari_root.iterdir()) == []  # neither the dataset nor the temporary directory


def test_cli_with_card_and_overriding_flags(minari_root: Path, tmp_path: Path, capsys) -> None:
    card = tmp_path / "card.toml"
    card.write_text(
        '[env]\nid = "CartPole-v1"\nsize = 8\n\n'
        '[collect]\ndataset_id = "tt/from-card-v0"\nsteps = 1000\nseed = 3\n'
    )
    assert main(["collect", "--card", str(card), "--steps", "15"]) == 0
    out = capsys.readouterr().out
    assert "Collected" in out and "15 steps" in out and "steps/s" in out
    dataset = minari.load_dataset("tt/from-card-v0")
    assert dataset.total_steps == 15 and dataset.observation_space.shape == (8, 8, 3)
    assert next(iter(dataset.storage.get_episode_metadata([0])))["seed"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "NoSuchEnv-v0"], "unknown Gymnasium env id 'NoSuchEnv-v0'"),
        (["--env", "NO_RENDER"], "cannot render 'rgb_array'"),
        (["--dataset-id", "EXISTING"], "already exists"),
        (["--dataset-id", "tt/no-version"], "invalid dataset id"),
        (["--dataset-id", "tt/bad name-v0"], "invalid dataset id"),
        (["--size", "4"], "frame size must be an integer >= 8"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--epsilon", "1.5"], "epsilon must be in [0, 1]"),
        (["--policy", "/no/such/model.zip"], "policy file not found"),
        (["--frame-skip", "0"], "frame_skip must be an integer >= 1"),
        (["--card", "/no/such/card.toml"], "card not found"),
        (["--card", "/"], "cannot read card '/'"),
        (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
        (["--dataset-id", "EXISTING/inner-v1"], "would put it inside the dataset"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    argv: list[str], message: str, tiny_dataset_id: str, no_render_env_id: str, capsys
) -> None:
    defaults = {"--env": "CartPole-v1", "--dataset-id": "tt/cli-v0", "--steps": "5", "--size": "8"}
    argv = [a.replace("EXISTING", tiny_dataset_id) if a.startswith("EXISTING") else no_render_env_id
            if a == "NO_RENDER" else a for a in argv]
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    assert main(["collect", "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffusion-world collect: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err


def test_an_unwritable_minari_root_is_refused_before_collecting(tmp_path: Path, monkeypatch, capsys) -> None:
    """A MINARI_DATASETS_PATH that is a file or cannot be written: one line before the env is made (raw
    FileExistsError / PermissionError after the collection); combine and render check it too."""
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "afile"))
    assert main(["collect", "--env", "CartPole-v1", "--dataset-id", "tt/x-v0", "--steps", "5", "--quiet"]) == 2
    assert "the Minari datasets folder (MINARI_DATASETS_PATH)" in capsys.readouterr().err
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "afile" / "sub"))
    for argv in (["combine", "a/b-v0", "a/c-v0", "--out-id", "tt/y-v0"],
                 ["render", "a/b-v0", "--dataset-id", "tt/z-v0"]):
        assert main(argv) == 2
        assert "cannot write the Minari datasets folder" in capsys.readouterr().err


def test_card_wrappers_wrap_the_env_before_rendering(minari_root: Path, tmp_path: Path, capsys) -> None:
    """[env] wrappers (e.g. AtariPreprocessing with terminal_on_life_loss, which a card could not express): the
    env is wrapped before it is rendered, and the dataset records them, so its env comes back wrapped."""
    card = tmp_path / "card.toml"
    card.write_text('[env]\nid = "CartPole-v1"\nsize = 8\nwrappers = [{ entry_point = "gymnasium.wrappers:TimeLimit", '
                    'kwargs = { max_episode_steps = 5 } }]\n[collect]\ndataset_id = "tt/wrapped-v0"\nsteps = 12\n')
    assert main(["collect", "--card", str(card), "--quiet"]) == 0
    ds = minari.load_dataset("tt/wrapped-v0")
    assert [len(e.actions) for e in ds] == [5, 5, 2] and all(e.truncations[-1] for e in ds)
    env = ds.recover_environment()
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(5)] == [False] * 4 + [True]  # the time limit came back with it
    for bad in ('wrappers = ["TimeLimit"]', 'wrappers = [{ entry_point = "TimeLimit" }]',
                'wrappers = [{ entry_point = "gymnasium.wrappers:TimeLimit", kw = {} }]'):
        card.write_text(f'[env]\nid = "CartPole-v1"\n{bad}\n[collect]\ndataset_id = "tt/bad-v0"\nsteps = 5\n')
        assert main(["collect", "--card", str(card), "--quiet"]) == 2
        assert "a wrapper is {entry_point" in capsys.readouterr().err


def test_atari_settings_that_do_not_do_what_they_seem_warn(minari_root: Path) -> None:
    """frame_skip on top of ALE's own frameskip (16 emulator frames a step, silently), and obs_type, which does not
    change the recorded renders (a grayscale request was silently ignored)."""
    pytest.importorskip("ale_py")
    with pytest.warns(UserWarning, match="a recorded step spans 8 frames"):
        collect("ALE/Breakout-v5", "tt/skip-v0", steps=3, size=8, frame_skip=2, env_kwargs={"frameskip": 4},
                progress=False)
    # ALE's own skip where the kwargs do not name it (the id's default), and an AtariPreprocessing wrapper's: the
    # warning looked at the kwargs only, so `--env ALE/Pong-v5 --frame-skip 4` recorded 16 frames a step silently
    with pytest.warns(UserWarning, match="a recorded step spans 16 frames"):
        collect("ALE/Pong-v5", "tt/pong-v0", steps=3, size=8, frame_skip=4, progress=False)
    preprocessing = [{"entry_point": "gymnasium.wrappers:AtariPreprocessing",
                      "kwargs": {"frame_skip": 4, "noop_max": 0, "screen_size": 84}}]
    with pytest.warns(UserWarning, match="a recorded step spans 8 frames"):
        collect("ALE/Breakout-v5", "tt/pre-v0", steps=3, size=8, frame_skip=2, env_kwargs={"frameskip": 1},
                wrappers=preprocessing, progress=False)
    max_and_skip = [{"entry_point": "stable_baselines3.common.atari_wrappers:MaxAndSkipEnv", "kwargs": {"skip": 4}}]
    with pytest.warns(UserWarning, match="a recorded step spans 8 frames"):  # SB3's skipping wrapper too
        collect("BreakoutNoFrameskip-v4", "tt/sb3skip-v0", steps=3, size=8, frame_skip=2, wrappers=max_and_skip,
                progress=False)
    per_life = [{"entry_point": "stable_baselines3.common.atari_wrappers:EpisodicLifeEnv"}]
    with pytest.warns(UserWarning, match="would be recorded as an absorbing terminal state"):
        collect("ALE/Breakout-v5", "tt/lives-v0", steps=3, size=8, wrappers=per_life, post_terminal_steps=2,
                progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented setting: ALE's skip alone
        collect("ALE/Breakout-v5", "tt/plain-v0", steps=3, size=8, progress=False)
    # the legacy ids SB3 and the rl-zoo use, registered by ale-py without an ALE/ prefix (an unknown id before)
    import subprocess
    import sys

    fresh = subprocess.run([sys.executable, "-c", "from diffusion_world.data.pixel_env import make_pixel_env; "
                            "print(make_pixel_env('BreakoutNoFrameskip-v4', size=8).reset(seed=0)[0].shape)"],
                           capture_output=True, text=True, timeout=120)  # a process that has not imported ale-py
    assert fresh.returncode == 0 and "(8, 8, 3)" in fresh.stdout, fresh.stderr[-2000:]
    ds = collect("BreakoutNoFrameskip-v4", "tt/legacy-v0", steps=3, size=8, progress=False)
    assert "entry_point" not in ds.spec.env_spec.kwargs  # ALE's: nothing more to record
    with pytest.warns(UserWarning, match="obs_type='grayscale' does not change the recorded frames"):
        collect("ALE/Breakout-v5", "tt/grey-v0", steps=3, size=8, env_kwargs={"obs_type": "grayscale"},
                progress=False)


def test_non_json_env_kwargs_are_refused(minari_root: Path) -> None:
    with pytest.raises(UserError, match="JSON-serialisable"):
        collect("Pendulum-v1", "tt/x-v0", steps=5, size=8, env_kwargs={"g": np.float32(9.8)}, progress=False)
    with pytest.raises(UserError, match="JSON-serialisable"):
        collect("Pendulum-v1", "tt/x-v0", steps=5, size=8, env_kwargs={"g": object()}, progress=False)


def test_cli_missing_required_flag(capsys) -> None:
    assert main(["collect", "--env", "CartPole-v1", "--steps", "5"]) == 2
    assert "--dataset-id is required" in capsys.readouterr().err


def test_the_dataset_records_time_limits_the_registry_cannot_tell_later(minari_root: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An env of the user's own module ("module:Env-vN") is registered only while that module is imported, and a
    TimeLimit among the wrappers is in no registry: imagined episodes lasted the default 1000 steps, or the
    registered 500, instead of the real env's limit. The dataset's env spec now records it."""
    import sys

    from dataset_fixtures import DOT_ENV_MODULE

    from diffusion_world.data.dataset import FrameCache
    from diffusion_world.data.pixel_env import recorded_time_limit

    (tmp_path / "dot_module_for_test.py").write_text(
        DOT_ENV_MODULE + '\ngym.register("DotTest-v0", entry_point=Dot, max_episode_steps=7)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    collect("dot_module_for_test:DotTest-v0", "tt/dot-v0", steps=20, size=16, frame_skip=2, progress=False)
    from diffusion_world.data.pixel_env import recorded_render_fps

    spec = {"id": PIXEL_ENV_ID, "env_id": "dot_module_for_test:DotTest-v0", "frame_skip": 1}
    assert (recorded_time_limit(spec), recorded_render_fps(spec)) == (7, 10)  # the module's registration
    monkeypatch.delitem(sys.modules, "dot_module_for_test")
    monkeypatch.delitem(gym.registry, "DotTest-v0")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    cache = FrameCache.open("tt/dot-v0", progress=False)
    assert recorded_time_limit(cache.env_spec) == 4  # 7 env steps at frame_skip 2
    assert set(cache.episode_lengths) == {5}  # as the data shows: 4 steps, 5 frames
    limited = [{"entry_point": "gymnasium.wrappers:TimeLimit", "kwargs": {"max_episode_steps": 9}}]
    collect("CartPole-v1", "tt/limited-v0", steps=30, size=16, wrappers=limited, policy="random", progress=False)
    assert recorded_time_limit(FrameCache.open("tt/limited-v0", progress=False).env_spec) == 9


SIZED_DOT = """

class Sized(Dot):
    def __init__(self, render_mode=None, size=8):
        super().__init__(render_mode)
        self.size = size
"""


def test_collect_records_the_entry_point_of_an_env_registered_in_this_process(
        minari_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`collect` of an env that the user's code registered in this process recorded only its id: its real env
    could not be made where that code had not run. It now records the entry point, a string or an importable
    class, with the registered kwargs (part of the env), and warns where there is none another process could
    import (a class of __main__ or a local one)."""
    import sys

    from dataset_fixtures import DOT_ENV_MODULE

    from diffusion_world.data.collect import combine
    from diffusion_world.data.dataset import FrameCache
    from diffusion_world.data.pixel_env import own_env_registration

    (tmp_path / "own_dot_module.py").write_text(DOT_ENV_MODULE + SIZED_DOT)
    monkeypatch.syspath_prepend(str(tmp_path))
    for env_id in ("OwnDotStr-v0", "OwnDotClass-v0"):
        own_dot_module = importlib.import_module("own_dot_module")
        gym.register(env_id, entry_point="own_dot_module:Dot" if "Str" in env_id else own_dot_module.Dot,
                     max_episode_steps=6)
        try:
            collect(env_id, f"tt/{env_id.lower()}", steps=12, size=16, progress=False)
        finally:
            gym.registry.pop(env_id)
        sys.modules.pop("own_dot_module")  # what a fresh process has neither imported nor registered
        env = minari.load_dataset(f"tt/{env_id.lower()}").recover_environment()  # made from the recorded one
        assert env.reset(seed=0)[0].shape == (16, 16, 3) and env.spec.kwargs["entry_point"] == "own_dot_module:Dot"
        env.close()
        gym.registry.pop(env_id)
        assert FrameCache.open(f"tt/{env_id.lower()}", progress=False).episode_lengths[0] == 7  # the time limit
    assert own_env_registration("CartPole-v1") == (None, {})  # Gymnasium's own envs: nothing more recorded

    # a variant of Gymnasium's env registered with kwargs: the kwargs are part of the env, and are recorded (apart
    # from the env's own kwargs: a registered `size` collided with the pixel env's)
    cartpole = "gymnasium.envs.classic_control.cartpole:CartPoleEnv"
    gym.register("SuttonCartPole-v0", entry_point=cartpole, kwargs={"sutton_barto_reward": True}, max_episode_steps=9)
    gym.register("OwnSized-v0", entry_point="own_dot_module:Sized", kwargs={"size": 5})
    try:
        collect("SuttonCartPole-v0", "tt/sutton-v0", steps=30, size=16, progress=False)
        collect("OwnSized-v0", "tt/sized-v0", steps=5, size=16, progress=False)
        with monkeypatch.context() as m:  # a dataset collected before entry points were recorded
            m.setattr("diffusion_world.data.collect.own_env_registration", lambda env_id: (None, {}))
            collect("SuttonCartPole-v0", "tt/sutton-old-v0", steps=30, size=16, progress=False)
    finally:
        gym.registry.pop("SuttonCartPole-v0")
        gym.registry.pop("OwnSized-v0")
    sys.modules.pop("own_dot_module", None)
    env = minari.load_dataset("tt/sutton-v0").recover_environment()
    assert env.spec.kwargs["entry_point"] == cartpole and "env_kwargs" not in env.spec.kwargs
    assert env.spec.kwargs["registered_kwargs"] == {"sutton_barto_reward": True}
    assert env.unwrapped.inner.unwrapped._sutton_barto_reward and env.spec.max_episode_steps == 9
    env.close()
    env = minari.load_dataset("tt/sized-v0").recover_environment()
    assert env.unwrapped.inner.unwrapped.size == 5 and env.unwrapped.size == 16
    env.close()
    gym.registry.pop("SuttonCartPole-v0")
    # the two combine (where the env is made is not which env it is), keeping the entry point
    combine(["tt/sutton-old-v0", "tt/sutton-v0"], "tt/sutton-both-v0")
    assert minari.load_dataset("tt/sutton-both-v0").spec.env_spec.kwargs["entry_point"] == cartpole
    gym.registry.pop("SuttonCartPole-v0", None)
    own_dot_module = importlib.import_module("own_dot_module")

    # a recorded entry point is registered before ale-py is looked for, whose legacy ids (Pong-v0) took its place
    import subprocess

    if importlib.util.find_spec("ale_py") is not None:
        code = ("from diffusion_world.data.pixel_env import make_env; "
                "print(type(make_env('Pong-v0', {}, 'own_dot_module:Dot').unwrapped).__name__)")
        fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(tmp_path)})
        assert fresh.stdout.strip() == "Dot", fresh.stdout + fresh.stderr[-2000:]

    class Local(own_dot_module.Dot):
        pass

    gym.register("OwnDotLocal-v0", entry_point=Local)
    try:
        with pytest.warns(UserWarning, match="records only the id"):
            assert own_env_registration("OwnDotLocal-v0") == (None, {})
    finally:
        gym.registry.pop("OwnDotLocal-v0")
