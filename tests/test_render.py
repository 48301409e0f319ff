"""``render_dataset`` / ``diffusion-world render``: Minari datasets of states replayed into pixel datasets."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from dataset_fixtures import DOT_ENV_MODULE, record

from diffusion_world.cli import main
from diffusion_world.data.collect import collect, dataset_path, render_dataset
from diffusion_world.data.dataset import FrameCache
from diffusion_world.data.pixel_env import PixelEnv, make_pixel_env
from diffusion_world.errors import UserError


def record_states(dataset_id: str, env_id: str, seeds: list[int], recorded_seeds: list[int | None] | None = None,
                  max_episode_steps: int | None = None, **env_kwargs) -> None:
    """A state dataset as Minari's own are: the env's observations, random actions, each episode's reset seed."""
    record(dataset_id, gym.make(env_id, max_episode_steps=max_episode_steps, **env_kwargs), seeds, recorded_seeds)


def test_state_dataset_renders_as_its_replay(minari_root: Path) -> None:
    record_states("tt/cartpole-states-v0", "CartPole-v1", seeds=[10, 11, 12])
    source = minari.load_dataset("tt/cartpole-states-v0")
    pixels = render_dataset("tt/cartpole-states-v0", "tt/cartpole-rendered-v0", size=16, progress=False)
    assert pixels.observation_space == gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert pixels.total_episodes == 3 and pixels.total_steps == source.total_steps
    reference = make_pixel_env("CartPole-v1", size=16)  # the pixel env collect uses, stepped by hand
    for meta, episode, recorded in zip(pixels.storage.get_episode_metadata(pixels.episode_indices),
                                       pixels.iterate_episodes(), source.iterate_episodes()):
        assert meta["seed"] == [10, 11, 12][episode.id]
        frames = [reference.reset(seed=meta["seed"])[0]] + [reference.step(a)[0] for a in recorded.actions]
        assert np.array_equal(episode.observations, np.stack(frames))
        assert np.array_equal(episode.actions, recorded.actions)
        assert np.array_equal(episode.rewards, recorded.rewards)
        assert np.array_equal(episode.terminations, recorded.terminations)
        assert np.array_equal(episode.truncations, recorded.truncations)
    reference.close()
    env = pixels.recover_environment()  # the pixel env itself, as for a collected dataset
    assert env.observation_space.shape == (16, 16, 3)
    env.close()
    cache = FrameCache.open("tt/cartpole-rendered-v0", progress=False)  # ready to train on
    assert cache.num_frames == source.total_steps + 3
    assert main(["render", "tt/cartpole-states-v0", "--dataset-id", "tt/cartpole-first2-v0", "--size", "16",
                 "--max-episodes", "2", "--quiet"]) == 0
    first2 = minari.load_dataset("tt/cartpole-first2-v0")
    assert [m["seed"] for m in first2.storage.get_episode_metadata(first2.episode_indices)] == [10, 11]
    with pytest.raises(UserError, match="max_episodes must be an integer >= 1, got 0"):
        render_dataset("tt/cartpole-states-v0", "tt/cartpole-none-v0", max_episodes=0, progress=False)
    with pytest.raises(UserError, match="workers must be an integer >= 1, got 0"):
        render_dataset("tt/cartpole-states-v0", "tt/cartpole-none-v0", workers=0, progress=False)
    for atol in (-1.0, float("nan")):  # nan compared as "never equal" with only a numpy warning
        with pytest.raises(UserError, match="atol must be a number >= 0"):
            render_dataset("tt/cartpole-states-v0", "tt/cartpole-none-v0", atol=atol, progress=False)


def test_render_workers_write_what_one_process_writes(minari_root: Path) -> None:
    record_states("tt/cartpole-many-v0", "CartPole-v1", seeds=list(range(11)))  # more than one batch of 4 x 2
    one = render_dataset("tt/cartpole-many-v0", "tt/cartpole-one-v0", size=16, progress=False, chunk_steps=50)
    two = render_dataset("tt/cartpole-many-v0", "tt/cartpole-two-v0", size=16, progress=False, chunk_steps=50,
                         workers=2)
    assert two.total_episodes == one.total_episodes == 11
    for a, b in zip(one.iterate_episodes(), two.iterate_episodes()):
        assert np.array_equal(a.observations, b.observations) and np.array_equal(a.actions, b.actions)
        assert np.array_equal(a.rewards, b.rewards) and np.array_equal(a.terminations, b.terminations)
    assert ([m["seed"] for m in two.storage.get_episode_metadata(two.episode_indices)]
            == [m["seed"] for m in one.storage.get_episode_metadata(one.episode_indices)] == list(range(11)))
    record_states("tt/wrong-many-v0", "CartPole-v1", seeds=[5, 6, 7], recorded_seeds=[5, 6, 9])
    with pytest.raises(UserError, match=r"episode 2 of 'tt/wrong-many-v0' \(reset seed 9\) diverges"):
        render_dataset("tt/wrong-many-v0", "tt/wrong-many-rendered-v0", size=16, progress=False, workers=2)
    assert not dataset_path("tt/wrong-many-rendered-v0").exists()


def test_uint64_seeds_as_minari_draws_them(minari_root: Path) -> None:
    """Minari's DataCollector seeds an unseeded reset with a random uint64: replayable, and the frame cache (whose
    seeds are int64) takes it as unknown instead of failing with an OverflowError."""
    seed = 2**64 - 5
    record("tt/big-seed-v0", gym.make("CartPole-v1"), seeds=[seed])
    pixels = render_dataset("tt/big-seed-v0", "tt/big-seed-rendered-v0", size=16, progress=False)
    assert int(next(iter(pixels.storage.get_episode_metadata([0])))["seed"]) == seed
    assert FrameCache.open("tt/big-seed-rendered-v0", progress=False).episode_seeds.tolist() == [-1]


def test_box_actions_and_the_recorded_time_limit(minari_root: Path) -> None:
    record_states("tt/pendulum-states-v0", "Pendulum-v1", seeds=[3], max_episode_steps=12)
    assert main(["render", "tt/pendulum-states-v0", "--dataset-id", "tt/pendulum-rendered-v0", "--size", "16",
                 "--quiet"]) == 0
    pixels = minari.load_dataset("tt/pendulum-rendered-v0")
    episode = next(pixels.iterate_episodes())
    assert episode.observations.shape == (13, 16, 16, 3) and episode.truncations[-1]
    assert pixels.recover_environment().spec.kwargs["env_kwargs"] == {"max_episode_steps": 12}


def test_replays_go_through_the_recorded_wrappers(minari_root: Path) -> None:
    """A dataset recorded through a wrapper (here an action rescaling, which Minari keeps in the env spec's
    additional_wrappers) replays through it, and the pixel env of the new dataset has it too."""
    env = gym.wrappers.RescaleAction(gym.make("Pendulum-v1", max_episode_steps=8), -0.5, 0.5)
    record("tt/rescaled-v0", env, seeds=[4])
    pixels = render_dataset("tt/rescaled-v0", "tt/rescaled-rendered-v0", size=16, progress=False)
    real = pixels.recover_environment()
    assert real.action_space == gym.spaces.Box(-0.5, 0.5, (1,), np.float32)
    episode = next(pixels.iterate_episodes())
    frames = [real.reset(seed=4)[0]] + [real.step(a)[0] for a in episode.actions]
    assert np.array_equal(np.stack(frames), episode.observations)
    real.close()
    with pytest.raises(UserError, match="cannot load wrapper 'nowhere:Nothing'"):
        make_pixel_env("CartPole-v1", size=16, wrappers=[{"entry_point": "nowhere:Nothing"}])


def test_replays_that_diverge_or_cannot_start_are_refused(minari_root: Path) -> None:
    record_states("tt/wrong-seed-v0", "CartPole-v1", seeds=[5, 6], recorded_seeds=[5, 7])
    with pytest.raises(UserError, match=r"episode 1 of 'tt/wrong-seed-v0' \(reset seed 7\) diverges from its "
                                        r"recording at step 0"):
        render_dataset("tt/wrong-seed-v0", "tt/wrong-seed-rendered-v0", size=16, progress=False, chunk_steps=1)
    assert not dataset_path("tt/wrong-seed-rendered-v0").exists()  # nothing half-written, though episode 0 was
    record_states("tt/no-seed-v0", "CartPole-v1", seeds=[5], recorded_seeds=[None])
    with pytest.raises(UserError, match="1 of 1 episodes of 'tt/no-seed-v0' record no reset seed"):
        render_dataset("tt/no-seed-v0", "tt/no-seed-rendered-v0", progress=False)
    with pytest.raises(UserError, match=r"no local Minari dataset 'tt/absent-v0' \(nothing is downloaded"):
        render_dataset("tt/absent-v0", "tt/absent-rendered-v0", progress=False)
    collect("CartPole-v1", "tt/pixels-v0", steps=5, size=16, progress=False)
    with pytest.raises(UserError, match="already holds pixel frames"):
        render_dataset("tt/pixels-v0", "tt/pixels-rendered-v0", progress=False)
    with pytest.raises(UserError, match="already exists"):
        render_dataset("tt/no-seed-v0", "tt/pixels-v0", progress=False)


def test_mujoco_replays_and_renders_headless(minari_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Minari's MuJoCo datasets: the env replays from its seed, and renders without a display (MuJoCo's default
    GL needs one; the pixel env picks EGL then)."""
    pytest.importorskip("mujoco")  # the mujoco extra, which scripts/setup.sh installs
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL"):
        monkeypatch.delenv(name, raising=False)
    record_states("tt/hopper-states-v0", "Hopper-v5", seeds=[1, 2], max_episode_steps=6)
    pixels = render_dataset("tt/hopper-states-v0", "tt/hopper-rendered-v0", size=16, progress=False)
    frames = np.concatenate([e.observations for e in pixels.iterate_episodes()])
    assert frames.shape == (14, 16, 16, 3) and frames.std() > 0
    assert not np.array_equal(frames[0], frames[6])  # the hopper moves


def test_dict_observations_with_jpeg_frames(minari_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset recorded through AddRenderObservation (Dict of state and frame; Minari JPEG-encodes the frame by
    default): the state checks the replay, the lossy frame only by its shape. Observations that are JPEG
    frames alone cannot be checked, and the user is told."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    wrapped = gym.wrappers.AddRenderObservation(gym.make("CartPole-v1", render_mode="rgb_array"), render_only=False)
    record("tt/dict-v0", wrapped, seeds=[2, 3])
    pixels = render_dataset("tt/dict-v0", "tt/dict-rendered-v0", size=16, progress=False)
    source = minari.load_dataset("tt/dict-v0")
    reference = make_pixel_env("CartPole-v1", size=16)
    for episode, recorded in zip(pixels.iterate_episodes(), source.iterate_episodes()):
        frames = [reference.reset(seed=[2, 3][episode.id])[0]] + [reference.step(a)[0] for a in recorded.actions]
        assert np.array_equal(episode.observations, np.stack(frames))
    reference.close()
    record("tt/dict-wrong-v0", gym.wrappers.AddRenderObservation(gym.make("CartPole-v1", render_mode="rgb_array"),
                                                                 render_only=False), seeds=[2], recorded_seeds=[4])
    with pytest.raises(UserError, match="diverges from its recording at step 0"):
        render_dataset("tt/dict-wrong-v0", "tt/dict-wrong-rendered-v0", size=16, progress=False)
    frames_only = gym.wrappers.AddRenderObservation(gym.make("CartPole-v1", render_mode="rgb_array"))
    record("tt/jpeg-frames-v0", frames_only, seeds=[2])
    with pytest.warns(UserWarning, match="JPEG .* images only: the replay cannot be checked"):
        render_dataset("tt/jpeg-frames-v0", "tt/jpeg-frames-rendered-v0", size=16, progress=False)


FADING_ENV_MODULE = '''
from user_dot_module import Dot


class Fading(Dot):
    """The dot, with a spark that fades at every render() call, as LunarLander's exhaust particles do."""

    def reset(self, *, seed=None, options=None):
        self.spark = 255
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.spark = 255 if action else self.spark
        return super().step(action)

    def render(self):
        frame = super().render()
        frame[:2] = self.spark
        self.spark //= 2
        return frame
'''


def test_frames_recorded_through_add_render_observation_are_rendered_once_per_step(
        minari_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An env whose render() changes what it draws next, recorded through AddRenderObservation, which renders
    in every step: the replay takes the frame from that render instead of rendering a second time, so its frames
    are the recorded ones and the lossless recorded frames check the replay."""
    (tmp_path / "user_dot_module.py").write_text(DOT_ENV_MODULE)
    (tmp_path / "user_fading_module.py").write_text(FADING_ENV_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    gym.register("UserFading-v0", entry_point="user_fading_module:Fading", max_episode_steps=6)
    try:
        for render_only in (False, True):
            source = f"tt/fading-{'frames' if render_only else 'dict'}-v0"
            record(source, gym.wrappers.AddRenderObservation(gym.make("UserFading-v0", render_mode="rgb_array"),
                                                             render_only=render_only), seeds=[1, 2],
                   jpeg_encoding=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = render_dataset(source, source.replace("-v0", "-rendered-v0"), size=16, progress=False)
            for episode, recorded in zip(pixels.iterate_episodes(), minari.load_dataset(source).iterate_episodes()):
                frames = recorded.observations if render_only else recorded.observations["pixels"]
                assert len(set(frames[:, 0, 0, 0].tolist())) > 2  # the spark fades from frame to frame
                assert np.array_equal(episode.observations, frames)
        # rendered twice per step, as the replay did before: the images differ, the states do not, and it says so
        with monkeypatch.context() as m:
            m.setattr(PixelEnv, "_rendered_into", lambda self, observation: None)
            with pytest.raises(UserError, match="recorded images differ from the replayed ones while the rest of "
                                                "the observation matches"):
                render_dataset("tt/fading-dict-v0", "tt/fading-twice-v0", size=16, progress=False)
            # frames alone: nothing tells the render from the dynamics, and the message says both
            with pytest.raises(UserError, match="recorded frames differ from the replayed ones; the observations are "
                                                "frames alone, so this may be .* or its render"):
                render_dataset("tt/fading-frames-v0", "tt/fading-twice-v0", size=16, progress=False)
    finally:
        gym.registry.pop("UserFading-v0", None)


def test_datasets_of_a_users_env_make_it_again_where_it_is_not_registered(
        minari_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Minari records the env's entry point; the package kept only its id, so a dataset recorded where the user's
    module had registered the env could not be rendered, nor its real env made (`benchmark rl`, `make_real_env`),
    in a process that had not imported that module ("unknown Gymnasium env id")."""
    import sys

    from worldmodel_fixtures import make_tiny_checkpoint

    from diffusion_world.data.pixel_env import recorded_time_limit
    from diffusion_world.envs import make_real_env

    (tmp_path / "user_dot_module.py").write_text(DOT_ENV_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))

    def register() -> None:
        gym.register("UserDot-v0", entry_point="user_dot_module:Dot", max_episode_steps=7)

    def unregister() -> None:
        gym.registry.pop("UserDot-v0", None)

    register()
    record_states("tt/dot-states-v0", "UserDot-v0", seeds=[1, 2])
    frames_env = gym.wrappers.AddRenderObservation(gym.make("UserDot-v0", render_mode="rgb_array"))
    record("tt/dot-frames-v0", frames_env, seeds=[3, 4])
    unregister()
    try:
        render_dataset("tt/dot-states-v0", "tt/dot-pixels-v0", size=16, progress=False)
        unregister()
        pixels = minari.load_dataset("tt/dot-pixels-v0")
        env = pixels.recover_environment()  # the pixel env makes the user's env from the recorded entry point
        assert env.reset(seed=0)[0].shape == (16, 16, 3)
        env.close()
        unregister()
        pixel_cache = FrameCache.open("tt/dot-pixels-v0", progress=False)
        assert recorded_time_limit(pixel_cache.env_spec) == 7
        real = make_real_env(make_tiny_checkpoint(tmp_path / "dot-pixels.pt", cache=pixel_cache))  # benchmark rl's
        np.testing.assert_array_equal(real.reset(seed=1)[0], pixel_cache.frames[0])
        real.close()
        unregister()
        cache = FrameCache.open("tt/dot-frames-v0", progress=False)  # recorded through AddRenderObservation
        assert cache.env_spec["entry_point"] == "user_dot_module:Dot"
        real = make_real_env(make_tiny_checkpoint(tmp_path / "dot.pt", cache=cache))
        obs, _ = real.reset(seed=3)
        assert obs.shape == (16, 16, 3) and np.array_equal(obs, cache.frames[0])
        real.close()
    finally:
        unregister()
        sys.modules.pop("user_dot_module", None)
