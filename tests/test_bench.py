"""Benchmark suites on a tiny world model: they run, write their files, and their numbers are consistent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_world.bench.fidelity import (
    background_error,
    foreground_precision,
    foreground_recall,
    foreground_retention,
    frame_scores,
    horizons,
    motion,
    real_frame_termination_probs,
    run_fidelity,
    static_background,
    termination_scores,
)
from diffusion_world.bench.report import make_readme, render
from diffusion_world.cli import main
from diffusion_world.errors import UserError

OTHER_CHECKPOINTS = ("Other checkpoints (earlier shipped models, candidates not shipped), with their settings "
                     "(tables in `benchmarks/README.md`): ")


def test_horizons_and_scores() -> None:
    assert horizons(16) == [1, 2, 4, 8, 16] and horizons(12) == [1, 2, 4, 8, 12]
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    noisy = np.clip(real.astype(int) + rng.integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    psnr_same, ssim_same = frame_scores(real, real)
    psnr_noisy, ssim_noisy = frame_scores(real, noisy)
    assert (psnr_same == 100).all() and np.allclose(ssim_same, 1)
    assert (psnr_noisy < 40).all() and (ssim_noisy < 1).all()
    t = termination_scores(np.array([[0, 0, 1], [0, 0, 0]], bool), np.array([[0.1, 0.9, 0.8], [0.0, 0.0, 0.0]]))
    assert (t["precision"], t["recall"], t["positives"]) == (0.5, 1.0, 1)
    assert t["first_termination"] == {"both": 1, "step_error": 1.0, "missed": 0, "spurious": 0}
    # one-sided terminations are counted, not given a step error that depends on the window's length
    t = termination_scores(np.array([[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], bool),
                           np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.7, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9]]))
    assert t["first_termination"] == {"both": 1, "step_error": 2.0, "missed": 1, "spurious": 1}
    none = termination_scores(np.zeros((2, 3), bool), np.zeros((2, 3)))["first_termination"]
    assert none == {"both": 0, "step_error": None, "missed": 0, "spurious": 0}


def test_fidelity_on_tiny_model(tiny_world_model: str, tmp_path: Path, one_torch_thread: None) -> None:
    r = run_fidelity(tiny_world_model, tmp_path, horizon=4, num_windows=4, sampler_sweep=(1,), context=2,
                     short_memory=tiny_world_model, progress=False)
    h = r["headline"]
    assert set(h) == {"psnr_h1", "psnr_h16", "ssim_h16", "foreground_retention_h16", "foreground_recall_h16",
                      "foreground_precision_h16", "motion_h16", "repeat_last_psnr_h16",
                      "short_memory_psnr_h16", "termination_f1", "reward_mae"}
    assert r["horizons"] == [1, 2, 4] and r["num_windows"] == 4
    assert 1 <= r["window_episodes"] <= min(4, r["heldout_episodes"])
    assert 1 <= r["distinct_windows"] <= 4
    text = render("fidelity", {**r, "machine": {}, "window_episodes": 1, "heldout_episodes": 3,
                               "distinct_windows": 4})
    assert "windows: 4 from 1 of the 3 held-out episodes" in text  # not "from 3 episodes"
    repeated = render("fidelity", {**r, "machine": {}, "window_episodes": 1, "heldout_episodes": 1,
                                   "distinct_windows": 2})
    assert "windows: 4 (2 distinct: half the windows end on an episode's last frame" in repeated
    assert "from 1 episode of" in repeated
    ft = r["termination"]["first_termination"]
    assert f"{ft['missed']} window(s) where only the real episode terminates, {ft['spurious']} where" in text
    old = {**r, "machine": {}, "termination": {**{k: v for k, v in r["termination"].items()
                                                  if k != "first_termination"}, "first_termination_step_error": 2.5}}
    assert "first-termination step error 2.50 (over the windows where either side" in render("fidelity", old)
    # a random-weight model is worse than repeating the last real frame
    assert h["psnr_h16"] < h["repeat_last_psnr_h16"]
    assert (tmp_path / "fidelity_rollout.gif").exists() and (tmp_path / "fidelity.png").exists()
    with Image.open(tmp_path / "fidelity_rollout.gif") as gif:  # real | imagined | error x4, 3x, under a label strip
        assert gif.size == (3 * 48 + 2 * 6, 16 + 48) and gif.n_frames == 4
    assert "| 4 |" in render("fidelity", {**r, "machine": {}})
    assert "Terminations on all" in render("fidelity", {**r, "machine": {}})
    # the same checkpoint as its own "baseline", same windows and seeds: the same frames, hence the same scores
    assert r["short_memory"]["checkpoint_step"] == r["checkpoint_step"]
    assert r["short_memory"]["4"]["psnr"] == r["model"]["4"]["psnr"] and h["short_memory_psnr_h16"] == h["psnr_h16"]
    assert "short-memory PSNR" in render("fidelity", {**r, "machine": {}})
    assert r["foreground_retention"]["short_memory"] == r["foreground_retention"]["model"]
    assert r["foreground_recall"]["short_memory"] == r["foreground_recall"]["model"]
    assert all(v is None or 0 <= v <= 1 for v in r["foreground_recall"]["model"].values())
    assert "foreground retention" in render("fidelity", {**r, "machine": {}})
    assert set(r["background_error"]) == {"1", str(r["sampler_steps"])}  # the sweep's K and the default
    assert set(r["background_error"][str(r["sampler_steps"])]) == {"1", "2", "4"}
    assert all(v["share"] is None or 0 <= v["share"] <= 1 for v in r["background_error"]["1"].values())
    assert "quiet background" in render("fidelity", {**r, "machine": {}})
    assert set(r["motion"]["model"]) == {"1", "2", "4"} and r["motion"]["short_memory"] == r["motion"]["model"]
    assert "| motion |" in render("fidelity", {**r, "machine": {}})
    seeds = r["heldout_episode_seeds"]  # the tiny dataset's episodes were collected with recorded seeds
    assert seeds is not None and seeds[0] <= seeds[1]


def test_fidelity_scores_say_how_many_frames_were_exact() -> None:
    """An exact frame scores a placeholder 100 dB in the mean PSNR (its own is infinite), which inflated the
    repeat-last-frame baseline where the real frame did not change (18% of consecutive CartPole frames): scores
    record that share and the PSNR of the mean squared error, which needs no placeholder, and the report says so."""
    pytest.importorskip("skimage")
    from diffusion_world.bench.fidelity import score

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (4, 2, 8, 8, 3), dtype=np.uint8)
    fake = real.copy()
    fake[:2, :, 0, 0, 0] ^= 16  # windows 0 and 1 differ in one value (error 16), windows 2 and 3 are exact
    out = score(real, fake, [1, 2])["1"]
    assert out["exact"] == 0.5
    assert out["psnr"]["mean"] == pytest.approx((2 * 100 + 2 * 10 * np.log10(255**2 * 192 / 16**2)) / 4)
    assert out["psnr_of_mean_mse"] == pytest.approx(10 * np.log10(255**2 / (16**2 / 192 / 2)))
    assert score(real, real, [1])["1"]["psnr_of_mean_mse"] is None
    committed = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/fidelity.json").read_text())
    assert "counts as 100 dB, which favours repeating the last frame" in render("fidelity", committed)
    for h in ("1", "2", "4", "8", "16", "32"):  # a result that records them says how many and gives the other PSNR
        for who in ("model", "repeat_last_frame"):
            committed[who][h] = {**committed[who][h], "exact": 0.25 if who == "repeat_last_frame" else 0.0,
                                 "psnr_of_mean_mse": 30.0}
    text = render("fidelity", committed)
    assert "(25 % of its frames 1 step ahead)" in text and "1 steps 30.00 dB (repeat-last 30.00 dB)" in text


def test_benchmarks_refuse_a_dataset_the_model_does_not_fit(tiny_frame_cache, tmp_path: Path) -> None:
    """A held-out dataset of another action space or frame size is named as such, not an error from deep inside
    the model (one-hot encoding, convolution shapes)."""
    from worldmodel_fixtures import make_tiny_checkpoint

    from diffusion_world.bench.termination import run_termination

    dataset = tiny_frame_cache.dataset_id
    three = make_tiny_checkpoint(tmp_path / "three.pt", cache=tiny_frame_cache,
                                 action_space={"type": "discrete", "n": 3})
    for run in (lambda m: run_fidelity(m, tmp_path, dataset_id=dataset, progress=False),
                lambda m: run_termination(m, dataset_id=dataset, progress=False)):
        with pytest.raises(UserError, match=r"has action space Discrete\(2\) but the world model .* Discrete\(3\)"):
            run(str(three))


def test_a_dataset_of_another_frame_skip_is_said_to_be(tiny_world_model: str, tiny_frame_cache,
                                                       minari_root: Path) -> None:
    """Reset contexts or held-out episodes from a dataset recorded at another frame skip (or in another env) than
    the model's training data come from another time scale: said, where it was silently accepted."""
    import warnings

    from diffusion_world.checkpoint import load_world_model
    from diffusion_world.data.collect import collect
    from diffusion_world.envs.core import open_dataset_for

    wm = load_world_model(tiny_world_model)
    collect("CartPole-v1", "tt/skip2-v0", steps=40, size=tiny_frame_cache.frame_size[0], frame_skip=2,
            progress=False)
    with pytest.warns(UserWarning, match=r"'tt/skip2-v0' was recorded in another env than the world model's "
                                         r"training data \(frame_skip 2 vs 1\)"):
        open_dataset_for("tt/skip2-v0", wm, progress=False)
    collect("CartPole-v1", "tt/skip1-v0", steps=40, size=tiny_frame_cache.frame_size[0], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset_for("tt/skip1-v0", wm, progress=False)
    # the same env named with its module; frame skips compared between pixel envs only (another tool's dataset
    # skips frames by its own means: an env kwarg, a wrapper)
    from diffusion_world.data.pixel_env import PIXEL_ENV_ID, recorded_env_difference

    pixels = {"id": PIXEL_ENV_ID, "env_id": "CartPole-v1", "frame_skip": 1}
    assert recorded_env_difference({**pixels, "env_id": "gymnasium.envs.classic_control:CartPole-v1"}, pixels) is None
    assert recorded_env_difference({"id": "HalfCheetah-v5", "frame_skip": 5},
                                   {**pixels, "env_id": "HalfCheetah-v5"}) is None
    assert recorded_env_difference({**pixels, "frame_skip": 2}, pixels) == "frame_skip 2 vs 1"
    assert recorded_env_difference({"id": "Pendulum-v1"}, pixels) == "env 'Pendulum-v1' vs 'CartPole-v1'"


def test_heldout_windows_too_short_names_the_longest() -> None:
    from types import SimpleNamespace

    from diffusion_world.bench.fidelity import heldout_windows

    cache = SimpleNamespace(episode_lengths=np.array([15, 18, 27]), episode_starts=np.array([0, 16, 35]))
    starts = heldout_windows(cache, np.arange(3), 20, 6, 0)
    assert set(starts.tolist()) <= set(range(35, 35 + 27 - 20 + 1))  # only the 27-frame episode holds 20 frames
    with pytest.raises(UserError, match="no held-out episode has 40 frames .* the longest has 27: use a shorter "
                                        "horizon \\(benchmark fidelity --horizon\\)"):
        heldout_windows(cache, np.arange(3), 40, 6, 0)


def test_foreground_retention() -> None:
    """Objects drawn as in reality score 1, faded into the background 0, at half contrast about half, drawn
    elsewhere 0; faint noise and extra marks count for nothing."""
    rng = np.random.default_rng(0)
    background = np.full((8, 8, 3), 255, np.uint8)
    real = np.repeat(background[None, None], 3, axis=1).repeat(2, axis=0)  # (N=2, h=3, 8, 8, 3)
    real[:, :, 2:4, 3, :] = 0  # a 2-pixel black "pole" in every frame
    assert static_background(np.concatenate([real[0], np.repeat(background[None], 4, 0)])).min() == 255
    faded = real.copy()
    faded[:, 1, 2:4, 3, :] = 128  # drawn at half contrast at h=2
    faded[:, 2] = background  # gone at h=3
    noisy = np.clip(faded.astype(np.int16) + rng.integers(-3, 4, faded.shape), 0, 255).astype(np.uint8)
    r = foreground_retention(real, noisy, background, [1, 2, 3])
    assert r["1"] == pytest.approx(1.0, abs=0.02) and r["2"] == pytest.approx(0.5, abs=0.02) and r["3"] == 0.0
    moved = real.copy()
    moved[:, :, 2:4, 3, :] = 255
    moved[:, 0, 2:4, 4, :] = 0  # one pixel off: still in place (within the radius)
    moved[:, 1, 2:4, 7, :] = 0  # four pixels off: drawn elsewhere, counts for nothing
    moved[:, 2, 6, :, :] = 0  # a line the real frame does not have, plus the real object
    moved[:, 2, 2:4, 3, :] = 0
    r = foreground_retention(real, moved, background, [1, 2, 3])
    assert r["1"] == pytest.approx(1.0) and r["2"] == 0.0 and r["3"] == pytest.approx(1.0)
    # recall: pixels, not contrast; a half-contrast object is still drawn, a vanished one is not
    r = foreground_recall(real, noisy, background, [1, 2, 3])
    assert (r["1"], r["2"], r["3"]) == (1.0, 1.0, 0.0)
    r = foreground_recall(real, moved, background, [1, 2, 3])
    assert (r["1"], r["2"], r["3"]) == (1.0, 0.0, 1.0)
    half = real.copy()
    half[:, :, 3, 3, :] = 255  # one of the object's two pixels gone: half recalled at radius 0, all at radius 1
    assert foreground_recall(real, half, background, [1], radius=0)["1"] == 0.5
    assert foreground_recall(real, half, background, [1], radius=1)["1"] == 1.0
    # precision: what the imagined frame draws that the real one does not (recall alone rewards drawing everywhere)
    r = foreground_precision(real, moved, background, [1, 2, 3])
    assert (r["1"], r["2"], r["3"]) == (1.0, 0.0, pytest.approx(2 / 10))  # a line of 8 pixels and the 2 real ones
    everywhere = np.zeros_like(real)
    assert foreground_recall(real, everywhere, background, [1])["1"] == 1.0
    assert foreground_precision(real, everywhere, background, [1])["1"] == pytest.approx(12 / 64)  # 2 px, dilated
    assert foreground_precision(real, real * 0 + 255, background, [1])["1"] is None  # nothing drawn
    assert foreground_retention(real * 0 + 255, real, background, [1])["1"] is None  # no real foreground


def test_motion() -> None:
    """An object that moves as in reality scores 1, one left where it was 0, one drawn half way (half contrast at
    both places) 0.5, one that moved the other way 0.5 as well (it did leave its place: half of the real change);
    nothing moving in the real frames gives None."""
    last = np.full((2, 8, 8, 3), 255, np.uint8)
    last[:, 2:4, 3] = 0
    real = np.repeat(last[:, None], 4, axis=1)  # (N=2, h=4, 8, 8, 3)
    real[:, :, 2:4, 3] = 255
    real[:, :, 2:4, 4] = 0  # one pixel to the right
    fake = real.copy()
    fake[:, 1] = last  # h=2: stayed
    fake[:, 2, 2:4, 3] = 128  # h=3: half here, half there
    fake[:, 2, 2:4, 4] = 128
    fake[:, 3, 2:4, 4] = 255  # h=4: moved left instead
    fake[:, 3, 2:4, 3] = 255
    fake[:, 3, 2:4, 2] = 0
    m = motion(real, fake, last, [1, 2, 3, 4])
    assert m["1"] == 1.0 and m["2"] == 0.0 and m["3"] == pytest.approx(0.5, abs=0.01) and m["4"] == 0.5
    assert motion(np.repeat(last[:, None], 1, axis=1), real[:, :1], last, [1])["1"] is None


def test_background_error() -> None:
    """Faint noise on the static scene puts the squared error on the quiet background; a moved object puts it on
    the object; a perfect frame has no error to share."""
    rng = np.random.default_rng(0)
    background = np.full((8, 8, 3), 255, np.uint8)
    real = np.repeat(background[None, None], 2, axis=1).repeat(2, axis=0)  # (N=2, h=2, 8, 8, 3)
    real[:, :, 2:4, 3, :] = 0  # a 2-pixel black object
    noisy = real.copy()
    noisy[:, 0] = np.clip(real[:, 0].astype(np.int16) - rng.integers(0, 5, real[:, 0].shape), 0, 255)
    noisy[:, 0, 2:4, 3, :] = 0  # the object exactly in place: all the error is the background's
    noisy[:, 1, 2:4, 3, :] = 255
    noisy[:, 1, 2:4, 6, :] = 0  # moved, on a clean background: none of it is
    r = background_error(real, noisy, background, [1, 2])
    assert r["1"]["share"] == pytest.approx(1.0) and 1.5 < r["1"]["mean_abs"] < 2.5
    assert r["2"]["share"] == 0.0 and r["2"]["mean_abs"] == 0.0
    assert background_error(real, real, background, [1])["1"]["share"] is None


def test_termination_on_real_frames_covers_every_frame(tiny_world_model: str, tiny_frame_cache,
                                                       one_torch_thread: None) -> None:
    """Every frame of the episodes once, in order; the one-noisy-frame pass gives the heads of the full pass."""
    import torch

    from diffusion_world.checkpoint import load_world_model
    from diffusion_world.diffusion.sampler import frames_to_x

    wm, cache = load_world_model(tiny_world_model), tiny_frame_cache
    episodes = np.arange(min(3, cache.num_episodes))
    real, probs = real_frame_termination_probs(wm, cache, episodes, seq_len=4, progress=False)
    frames = np.concatenate([np.arange(s, s + n) for s, n in zip(cache.episode_starts[episodes],
                                                                 cache.episode_lengths[episodes])])
    assert np.array_equal(real, cache.terminations[frames]) and probs.shape == real.shape
    start, n = int(cache.episode_starts[0]), 4  # the first window, all T frames noisy
    x = frames_to_x(torch.from_numpy(np.array(cache.frames[start: start + n]))[None])  # a copy: writable
    sig = torch.full((1, n), 0.002)
    with torch.no_grad():
        out = wm.model(x, sig, x, sig, torch.from_numpy(cache.prev_actions[start: start + n])[None],
                       torch.from_numpy(cache.has_prev_action[start: start + n])[None])
    expected = wm.termination_probability(out.termination_logit[0]).numpy()
    np.testing.assert_allclose(expected, probs[:n], rtol=1e-4, atol=1e-6)


def test_calibration_bins_by_probability() -> None:
    """Equal-width bins, [lo, hi) and the last one [lo, 1]; the ECE weighs each bin's gap by its frames."""
    from diffusion_world.bench.termination import calibration

    probs = np.array([0.05, 0.05, 0.95, 1.0, 0.55, 0.1])
    real = np.array([False, True, True, True, False, False])
    c = calibration(real, probs)
    assert [(b["lo"], b["frames"], b["terminal_frames"]) for b in c["bins"]] == [
        (0.0, 2, 1), (pytest.approx(0.1), 1, 0), (pytest.approx(0.5), 1, 0), (pytest.approx(0.9), 2, 2)]
    assert c["bins"][0]["mean_probability"] == pytest.approx(0.05) and c["bins"][0]["terminal_share"] == 0.5
    assert c["bins"][-1]["mean_probability"] == pytest.approx(0.975)
    # bins' gaps: 0.45 (2 frames), 0.1 (1), 0.55 (1), 0.025 (2)
    assert c["expected_calibration_error"] == pytest.approx((2 * 0.45 + 0.1 + 0.55 + 2 * 0.025) / 6)
    sq = [0.05 ** 2, 0.95 ** 2, 0.05 ** 2, 0.0, 0.55 ** 2, 0.1 ** 2]
    assert c["brier"] == pytest.approx(sum(sq) / 6)
    assert c["mean_probability"] == pytest.approx(2.7 / 6) and c["terminal_share"] == pytest.approx(0.5)
    assert calibration(real, real.astype(float))["expected_calibration_error"] == 0.0
    lo, hi = c["bins"][0]["terminal_share_95"]  # 1 of 2: Wilson's interval, (0.0945, 0.9055)
    assert lo == pytest.approx(0.0945, abs=1e-4) and hi == pytest.approx(0.9055, abs=1e-4)
    assert c["bins"][1]["terminal_share_95"][0] == 0.0 and 0.79 < c["bins"][1]["terminal_share_95"][1] < 0.80
    with pytest.raises(ValueError, match="equal 1-D non-empty"):
        calibration(real, probs[:-1])
    # all or none of a bin's frames terminal: the interval holds the share exactly (rounding put 0 just outside,
    # and the reliability plot failed on a negative error bar, after the whole benchmark had run)
    from diffusion_world.bench.termination import wilson_interval

    for n in range(1, 201):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0, n


@pytest.mark.slow
def test_benchmark_cli_quick(tiny_world_model: str, tmp_path: Path) -> None:
    assert main(["benchmark", "speed", "--world-model", tiny_world_model, "--quick", "--out", str(tmp_path)]) == 0
    speed = json.loads((tmp_path / "speed_quick.json").read_text())
    assert speed["headline"]["step_time_ratio_late_vs_early"] > 0 and speed["machine"]["cpu"]
    make_readme(tmp_path, tmp_path / "README.md")
    assert "speed_quick" in (tmp_path / "README.md").read_text()


def test_rl_records_the_ppo_settings_it_trains_with(tiny_world_model: str, one_torch_thread: None) -> None:
    """A budget below one full rollout: PPO trains a whole rollout (128 steps over 8 envs, not 64) in minibatches
    of the rollout's size (128, not 256); results and the reference key record those, while the defaults' keys (and
    so existing cached references) stay as they were."""
    import gymnasium
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from diffusion_world.bench.rl import PPO_LR, PPO_SETTINGS, _ppo_kwargs, ppo_settings, reference_key
    from diffusion_world.checkpoint import load_world_model

    model = PPO("MlpPolicy", DummyVecEnv([lambda: gymnasium.make("CartPole-v1")] * 8),
                **_ppo_kwargs(64, 8, False, 0)).learn(64)
    assert ppo_settings(64, 8) == {**PPO_SETTINGS, "n_steps": 16, "batch_size": 128,
                                   "learning_rate": f"linear {PPO_LR} -> 0"}
    assert (model.n_steps, model.batch_size, model.num_timesteps) == (16, 128, 128)
    wm = load_world_model(tiny_world_model)
    assert reference_key(wm, 64, 8, 4, 0, 1)["ppo"] == ppo_settings(64, 8)
    for steps in (256, 20_000):  # the key as it was before the settings were recorded
        assert reference_key(wm, steps, 8, 4, 0, 1)["ppo"] == {**PPO_SETTINGS, "learning_rate": f"linear {PPO_LR} -> 0"}
    committed = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/rl_step7995.json").read_text())
    assert f"for {committed['agent_steps']:,} steps" in render("rl", committed)  # older results: the budget
    text = render("rl", {**committed, "agent_steps": 64, "agent_steps_trained": 128})
    assert "for 128 steps (budget 64: PPO trains whole rollouts)" in text
    # a learning curve of cut imagined episodes is not set beside whole-episode evaluations without a word
    cut = render("rl", {**committed, "train_horizon": 16, "real_eval_horizon": 200})
    assert "trained on imagined episodes cut at 16 steps" in cut and "up to 200 real steps" in cut
    assert "trained on imagined episodes cut" not in render("rl", {**committed, "train_horizon": 200,
                                                                    "real_eval_horizon": 200})
    seeds = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/rl_50k_sampled_seeds.json")
                       .read_text())
    assert "PPO for 50,000 steps per agent, " in render("rl_50k_sampled_seeds", seeds)
    assert "PPO for 128 steps per agent (budget 64: PPO trains whole rollouts), " in render(
        "rl_50k_sampled_seeds", {**seeds, "agent_steps": 64, "agent_steps_trained": 128})


def test_card_rl_section_sets_ppo(tiny_world_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A card's [rl] section replaces the CartPole-tuned PPO settings of `benchmark rl` (they were fixed for every
    env): both agents train with them, results and the reference key record them; bad keys are refused."""
    import gymnasium
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from diffusion_world.bench import rl
    from diffusion_world.bench.run import run_benchmark
    from diffusion_world.checkpoint import load_world_model

    ppo = {"n_steps": 64, "gamma": 0.99, "learning_rate": 3e-4, "vf_coef": 0.25}
    kwargs = rl._ppo_kwargs(4096, 8, False, 0, ppo)
    agent = PPO("MlpPolicy", DummyVecEnv([lambda: gymnasium.make("CartPole-v1")] * 8), **kwargs)
    assert (agent.n_steps, agent.gamma, agent.vf_coef) == (64, 0.99, 0.25)
    assert agent.gae_lambda == rl.PPO_SETTINGS["gae_lambda"]
    assert agent.lr_schedule(1.0) == pytest.approx(3e-4) and agent.lr_schedule(0.5) == pytest.approx(1.5e-4)
    assert rl.ppo_settings(4096, 8, ppo)["learning_rate"] == "linear 0.0003 -> 0"
    assert rl.ppo_settings(64, 8, {"n_steps": 8})["n_steps"] == 8  # not raised to the 16-step floor
    wm = load_world_model(tiny_world_model)
    assert rl.reference_key(wm, 4096, 8, 4, 0, 1, ppo) != rl.reference_key(wm, 4096, 8, 4, 0, 1)

    def capture(*args, **kwargs):
        raise _Called(kwargs)

    monkeypatch.setattr(rl, "run_rl", capture)
    card = tmp_path / "card.toml"
    card.write_text('[env]\nid = "CartPole-v1"\n[rl]\nn_steps = 64\ngamma = 0.99\nlearning_rate = 3e-4\n')
    with pytest.raises(_Called) as called:
        run_benchmark("rl", tiny_world_model, tmp_path, card=str(card))
    assert called.value.args[0]["ppo"] == {"n_steps": 64, "gamma": 0.99, "learning_rate": 3e-4}
    with pytest.raises(_Called) as called:
        run_benchmark("rl", tiny_world_model, tmp_path)
    assert called.value.args[0]["ppo"] is None
    for bad, match in (("gama = 0.9", r"unknown key\(s\) gama"), ("gamma = 1.5", r"gamma must be a number in \(0, 1\]"),
                       ("n_steps = 0.5", "n_steps must be an integer >= 1")):
        card.write_text(f'[env]\nid = "CartPole-v1"\n[rl]\n{bad}\n')
        with pytest.raises(UserError, match=match):
            run_benchmark("rl", tiny_world_model, tmp_path, card=str(card))


def test_rl_refuses_a_real_env_it_cannot_make_before_training(tiny_world_model: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The real env is made only for the final evaluation: a user env whose module is not importable failed there,
    after both agents had trained (hours at the default budget)."""
    from diffusion_world.bench import rl
    from diffusion_world.checkpoint import load_world_model

    wm = load_world_model(tiny_world_model)
    wm.dataset["env_spec"] = {**wm.dataset["env_spec"], "env_id": "no_such_module_here:Dot-v0"}
    monkeypatch.setattr(rl, "load_world_model", lambda path: wm)

    def trained(*args: object, **kwargs: object) -> None:
        raise AssertionError("an agent was trained first")

    monkeypatch.setattr("diffusion_world.make_sb3_vec_env", trained)
    monkeypatch.setattr(rl, "_train_real", trained)
    with pytest.raises(UserError, match="no_such_module_here"):
        rl.run_rl(tiny_world_model, agent_steps=64, num_envs=2, frame_stack=2, progress=False)


def test_random_play_refuses_a_real_env_it_cannot_make_before_imagining(tiny_world_model: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """random_play made the real env after all its imagined rollouts (minutes at the default budget)."""
    from diffusion_world.bench import random_play
    from diffusion_world.checkpoint import load_world_model

    wm = load_world_model(tiny_world_model)
    wm.dataset["env_spec"] = None
    monkeypatch.setattr(random_play, "load_world_model", lambda path, device: wm)
    monkeypatch.setattr("diffusion_world.envs.core.ImaginationCore.step",
                        lambda *a, **k: pytest.fail("imagined before making the real env"))
    with pytest.raises(UserError, match="records no env spec of its dataset: cannot rebuild the real env"):
        random_play.run_random_play(tiny_world_model, num_envs=2, steps=3, progress=False)


@pytest.mark.slow
def test_rl_transfer_runs(tiny_world_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent trains in short imagined episodes from anywhere in the data (``reset_mode="anywhere"``, a
    horizon of 6); the evaluation in imagination still plays whole episodes from episode starts, cut at the
    env's own horizon (20)."""
    from diffusion_world.bench import rl
    from diffusion_world.bench.report import render
    from diffusion_world.bench.rl import plot_curves, run_rl
    from diffusion_world.checkpoint import load_world_model

    evaluated = []

    def evaluate_imagined(*args, **kwargs):
        evaluated.append((args[5], args[6]))
        return original(*args, **kwargs)

    original = rl.evaluate_imagined
    monkeypatch.setattr(rl, "evaluate_imagined", evaluate_imagined)
    kwargs = {"termination": "sample", "reset_mode": "anywhere", "horizon": 6}
    with pytest.warns(UserWarning, match="is one PPO rollout .*learning rate 0, so the agents stay untrained"):
        r = run_rl(tiny_world_model, agent_steps=64, eval_episodes=2, num_envs=2, frame_stack=2, horizon=20,
                   progress=False, imagination_kwargs=kwargs)
    assert evaluated == [(20, {"termination": "sample"})] * 3
    assert set(r["headline"]) >= {"agent_steps", "imagination_return_mean", "real_trained_return_mean",
                                  "random_return_mean"}
    assert len(r["random"]["returns"]) == 2 and all(x >= 1 for x in r["random"]["returns"])  # CartPole: >= 1
    # real evaluation episodes end where imagined ones do by default (the env's horizon, 20), not after hours
    assert r["real_eval_horizon"] == 20
    assert r["train_horizon"] == 6 and "trained on imagined episodes cut at 6 steps" in render("rl", r)
    assert all(x <= 20 for key in ("imagination", "real_trained", "random") for x in r[key]["returns"])
    assert r["checkpoint_step"] == load_world_model(tiny_world_model).step
    im = r["in_imagination"]
    assert im["horizon"] == 20 and set(im) == {"horizon", "imagination", "real_trained", "random"}
    for key in ("imagination", "real_trained", "random"):  # the tiny model never terminates: cut at the horizon
        assert len(im[key]["returns"]) == 2 and all(1 <= x <= 20 for x in im[key]["returns"])
    # learning curves: [steps, mean return, mean length, episodes] per rollout; 64 steps = 2 rollouts of 2 x 16
    assert r["imagination_kwargs"] == kwargs
    assert r["agent_steps_trained"] == 64 and (r["ppo"]["n_steps"], r["ppo"]["batch_size"]) == (32, 64)
    for key in ("imagination", "real_trained"):
        curve = r[key]["curve"]
        assert curve and all(row[0] in (32, 64) and row[3] >= 1 and 1 <= row[2] for row in curve)
    assert all(row[2] <= 6 for row in r["imagination"]["curve"])  # imagined episodes end by their horizon
    assert any(row[2] > 6 for row in r["real_trained"]["curve"])  # (the real env's do not)
    plot_curves(r, tmp_path / "rl.png")
    assert (tmp_path / "rl.png").stat().st_size > 1000
    text = render("rl", r)
    assert "termination='sample'" in text and "in the first rollout" in text
    assert "One PPO rollout (64 steps): its only update ran at learning rate 0" in text
    assert "One PPO rollout" not in render("rl", {**r, "agent_steps_trained": 128})
    # a ratio of negative returns says nothing: none is given
    assert "No imagination / real return ratio" in render("rl", {**r, "headline": {
        **r["headline"], "imagination_vs_real_ratio": None}})
    # where the imagined episodes started (the training dataset when it is here, else the stored contexts)
    assert r["contexts"].startswith("dataset ") or r["contexts"].endswith("contexts stored in the checkpoint")
    assert f"imagined episodes start from the {r['contexts']}." in text


def test_committed_tables_are_generated_from_the_committed_results(tmp_path: Path) -> None:
    """benchmarks/README.md and the README's benchmark block are exactly what the result files render to:
    nobody typed a number, and nobody forgot to regenerate after a benchmark run."""
    from diffusion_world.bench.report import update_readme_section

    root = Path(__file__).resolve().parents[1]
    results = root / "benchmarks" / "results"
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)  # the README names its results folder from itself
    for path in results.glob("*.json"):
        shutil.copy(path, tmp_path / "benchmarks" / "results")
    assert make_readme(tmp_path / "benchmarks" / "results", tmp_path / "benchmarks" / "README.md") == (
        root / "benchmarks" / "README.md").read_text()
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text())
    update_readme_section(readme, results)
    assert readme.read_text() == (root / "README.md").read_text()
    text = readme.read_text()
    in_sweep = {row["result"] for path in results.glob("*_seeds.json")
                for row in json.loads(path.read_text())["per_seed"].values()}
    for path in results.glob("*.json"):
        if "headline" in json.loads(path.read_text()):  # current results with their table, archived ones named
            sampler_table = text.split("#### Sampler settings")[1].split("####")[0]
            training_table = text.split("#### Training in imagination")[1].split("####")[0]
            precision_table = text.split("#### fp32 or bf16")[1].split("####")[0]
            candidates_table = text.split("#### Trained further")[1].split("####")[0]
            assert (f"#### `{path.stem}`" in text or f"`{path.stem}`" in text.split("Other checkpoints")[1]
                    or path.stem in in_sweep  # a seed sweep's rows name each seed's result
                    or f"`{path.stem}`" in sampler_table  # so does the sampler table its variants
                    or f"`{path.stem}`" in training_table  # and the training table the other RL recipes
                    or f"`{path.stem}`" in precision_table  # and the precision table its fp32 / bf16 pairs
                    or path.stem.split("_")[-1] in candidates_table)  # and the candidates table their tags
    assert "#### `fidelity`" in text and "#### `fidelity_step4150`" not in text


def test_report_cli_and_a_results_folder_without_a_project_readme(tmp_path: Path, monkeypatch, capsys) -> None:
    """``benchmark`` with the default --out benchmarks/results run outside this repo (no README there) writes its
    result and benchmarks/README.md, and stops there (before: FileNotFoundError after the result was written);
    the report takes --help, and touches a README only where it has the block's markers."""
    from diffusion_world.bench.report import END, START, main
    from diffusion_world.bench.run import record_result

    monkeypatch.chdir(tmp_path)
    record_result(Path("benchmarks/results"), "generic", {"world_model": "x", "value": 1.5})
    assert Path("benchmarks/results/generic.md").exists() and Path("benchmarks/README.md").exists()
    assert "from the JSON files in `results/`" in Path("benchmarks/README.md").read_text()  # where it stands
    assert not Path("README.md").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "results/" in capsys.readouterr().out
    assert main([]) == 0 and "has no benchmark block: left as it is" in capsys.readouterr().out
    assert main(["nowhere"]) == 2 and "no results folder" in capsys.readouterr().err
    Path("notes.md").write_text("mine\n")
    assert main(["--readme", "notes.md"]) == 2 and Path("notes.md").read_text() == "mine\n"
    Path("README.md").write_text(f"intro\n{START}\nold\n{END}\n")
    assert main([]) == 0 and "old" not in Path("README.md").read_text()


def test_a_card_of_another_env_is_refused(tiny_world_model: str, tmp_path: Path) -> None:
    from diffusion_world.bench.run import card_imagination, run_benchmark

    lunar = str(Path(__file__).resolve().parents[1] / "envs" / "lunarlander.toml")
    for suite in ("termination", "rl"):
        with pytest.raises(UserError, match="describes LunarLander-v3, but the world model .* learned CartPole-v1"):
            run_benchmark(suite, tiny_world_model, tmp_path, card=lunar)
    cartpole = str(Path(__file__).resolve().parents[1] / "envs" / "cartpole.toml")
    assert card_imagination(cartpole, tiny_world_model) == card_imagination(cartpole, None)


def _readme_block(results: Path, readme: Path) -> str:
    """A README with an old benchmark block, updated from ``results``."""
    from diffusion_world.bench.report import END, START, update_readme_section

    readme.write_text(f"intro\n{START}\nold\n{END}\nafter\n")
    update_readme_section(readme, results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old\n" not in text.split(START)[1]
    return text


def test_readme_block_shows_current_results_and_names_archived_ones(tmp_path: Path) -> None:
    head = {"headline": {"chance": 0.25, "n": 8}, "machine": {}}
    for stem in ("memory", "memory_old", "speed"):
        (tmp_path / f"{stem}.json").write_text(json.dumps({**head, "ours": {"accuracy": 0.5, "accuracy_ci95": [0, 1]},
                                                           "short_memory": {"accuracy": 0.5,
                                                                            "accuracy_ci95": [0, 1]}}))
    text = _readme_block(tmp_path, tmp_path / "README.md")
    assert "#### `memory`" in text and "#### `speed`" in text and "#### `memory_old`" not in text
    assert OTHER_CHECKPOINTS + "`memory_old`." in text


def test_memory_markdown_says_the_gap_the_baseline_and_what_is_drawn() -> None:
    """The cue reappears n + 1 steps after it was shown (it said n); the table says how often each model draws a
    cue colour at all (a frame without one is read as a guess), and the text what the baseline is and is not."""
    from diffusion_world.bench.report import memory_markdown

    r = {"headline": {"chance": 0.25, "n": 24},
         "ours": {"accuracy": 0.98, "accuracy_ci95": [0.95, 0.99], "revealed": 0.99},
         "short_memory": {"accuracy": 0.23, "accuracy_ci95": [0.18, 0.28], "revealed": 0.68},
         "training": {"ours": {"context_window": 32, "supervised_frames": 182000},
                      "short_memory": {"context_window": 4, "supervised_frames": 183750}}}
    text = memory_markdown(r)
    assert "25 steps later (after 24 distractor frames)" in text
    assert "| short memory (DIAMOND-style) | 4 | 0.230 | 0.180–0.280 | 0.68 |" in text
    assert "(182,000 and 183,750 supervised frames)" in text and "not DIAMOND's own network" in text
    old = {**r, "ours": {k: v for k, v in r["ours"].items() if k != "revealed"}}  # results from before `revealed`
    assert "draws a cue colour |" not in memory_markdown(old)


def test_readme_block_sums_up_sampler_variants_in_the_sampler_table(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Variants of the current model (``control_k2``, ``control_hg2``) are rows of the sampler table, not
    sections of their own; the base result keeps its section."""
    from diffusion_world.bench import report

    monkeypatch.setitem(report.RENDERERS, "control", lambda r: "the control tables")
    model = {"world_model": "m", "checkpoint_step": 5, "machine": {}}
    sweep = {str(k): {"1": {"psnr": {"mean": 40.0}}, "32": {"psnr": {"mean": 20.0}}} for k in (2, 3)}
    (tmp_path / "fidelity.json").write_text(json.dumps({**model, "sampler_steps": 3, "sampler_sweep": sweep}))
    for stem, extra in (("control", {"sampler_steps": 3}), ("control_k2", {"sampler_steps": 2}),
                        ("control_hg2", {"sampler_steps": 3, "history_guidance": 2.0})):
        (tmp_path / f"{stem}.json").write_text(json.dumps(
            {**model, **extra, "headline": {"gain_h8": 0.8, "termination_on_time": 0.5, "accuracy_h8": 1.0}}))
    text = _readme_block(tmp_path, tmp_path / "README.md")
    assert "| 2, off |" in text and "| 3, w=2 |" in text
    assert "#### `control_k2`" not in text and "#### `control_hg2`" not in text
    assert "#### `control`\n" in text


def test_random_play_expected_length() -> None:
    from diffusion_world.bench.random_play import expected_length, survival

    assert expected_length(np.zeros(5)) == 5.0
    assert expected_length(np.array([1.0, 0.3, 0.3])) == 1.0
    assert expected_length(np.array([0.5, 0.5, 0.5])) == pytest.approx(1 + 0.5 + 0.25)
    np.testing.assert_allclose(survival(np.array([[0.5, 0.5], [0.0, 1.0]])), [[1.0, 0.5], [1.0, 1.0]])


def test_threshold_lengths() -> None:
    from diffusion_world.bench.random_play import threshold_lengths

    p = np.array([[0.1, 0.4, 0.6, 0.9], [0.0, 0.0, 0.0, 0.2], [0.8, 0.1, 0.1, 0.1]])
    lengths, ended = threshold_lengths(p, 0.5)
    assert lengths.tolist() == [3, 4, 1] and ended.tolist() == [True, False, True]
    lengths, ended = threshold_lengths(p, 0.15)
    assert lengths.tolist() == [2, 4, 1] and ended.tolist() == [True, True, True]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_random_play_benchmark(tiny_world_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               one_torch_thread: None, p: float) -> None:
    """A termination probability of 1 (0) everywhere ends every imagined episode at step 1 (none), by the
    threshold and in expectation; the real env's random play is CartPole's."""
    from diffusion_world.bench import random_play
    from diffusion_world.checkpoint import load_world_model

    def constant(path, device="cpu"):
        wm = load_world_model(path, device=device)
        wm.termination_probability = lambda logits, frames=None: torch.full(logits.shape, p)
        return wm

    monkeypatch.setattr(random_play, "load_world_model", constant)
    steps = 6
    r = random_play.run_random_play(tiny_world_model, tmp_path, num_envs=3, steps=steps, progress=False)
    e = r["episode_length"]
    assert e["threshold"]["lengths"] == ([1, 1, 1] if p else [steps] * 3)
    assert e["threshold"]["cut"] == e["sampled"]["cut"] == (0.0 if p else 1.0)
    assert e["sampled"]["mean"] == pytest.approx(1.0 if p else steps)
    assert len(e["real"]["lengths"]) == 3 and all(1 <= n <= steps for n in e["real"]["lengths"])
    assert r["survival"]["threshold"] == ([1.0] + [0.0] * (steps - 1) if p else [1.0] * steps)
    for row in r["threshold_sweep"]:
        assert row["mean"] == (1.0 if p else steps) and row["cut"] == (0.0 if p else 1.0)
    assert (tmp_path / "random_play.png").stat().st_size > 1000
    # returns: CartPole pays 1 per real step; imagined episodes collect the model's rewards of the steps they take
    ret = r["return"]
    assert ret["real"]["returns"] == [float(n) for n in e["real"]["lengths"]] and ret["real"]["per_step"] == 1.0
    assert ret["threshold"]["returns"] == pytest.approx(ret["sampled"]["returns"])  # p in {0, 1}: the same ends
    assert all(np.isfinite(ret["threshold"]["returns"]))
    assert ret["threshold"]["per_step"] == pytest.approx(sum(ret["threshold"]["returns"]) / sum(
        e["threshold"]["lengths"]))
    text = render("random_play", r)
    assert "| real env |" in text and 'termination=\"sample\"' in text and "| termination_threshold | 0.05 |" in text
    assert "| mean return | reward per step |" in text
    # random CartPole episodes last about 20 steps: cut at 6 they say little about how episodes end
    assert ("Most real episodes were still running after 6 steps" in text) == (e["real"]["cut"] > 0.5)


def test_random_play_stops_both_envs_at_their_time_limit(tiny_frame_cache, tmp_path: Path, minari_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          one_torch_thread: None) -> None:
    """Episodes of an env whose time limit comes before ``steps`` end there in both envs, truncated, not failed:
    the imagined ones ran on to ``steps`` and the real ones counted as ended, which read as an imagined env that
    outlasts the real one."""
    from worldmodel_fixtures import make_tiny_checkpoint

    from diffusion_world.bench import random_play
    from diffusion_world.checkpoint import load_world_model
    from diffusion_world.data.collect import collect
    from diffusion_world.data.dataset import FrameCache

    collect("CartPole-v1", "tt/limit3-v0", steps=30, size=tiny_frame_cache.frame_size[0], seed=1, progress=False,
            env_kwargs={"max_episode_steps": 3})
    cache = FrameCache.open("tt/limit3-v0", progress=False)
    model = make_tiny_checkpoint(tmp_path / "limit3.pt", cache=cache)

    def never_ends(path, device="cpu"):
        wm = load_world_model(path, device=device)
        wm.termination_probability = lambda logits, frames=None: torch.zeros(logits.shape)
        return wm

    monkeypatch.setattr(random_play, "load_world_model", never_ends)
    r = random_play.run_random_play(str(model), num_envs=3, steps=6, progress=False)
    e = r["episode_length"]
    assert r["steps"] == 3 and r["requested_steps"] == 6 and len(r["survival"]["real"]) == 3
    assert e["real"]["lengths"] == e["threshold"]["lengths"] == [3, 3, 3]  # random CartPole lasts > 3 steps
    assert e["real"]["cut"] == e["threshold"]["cut"] == 1.0
    assert "still running at the envs' time limit (3 steps)" in random_play.random_play_markdown(r)
    exact = random_play.run_random_play(str(model), num_envs=2, steps=3, progress=False)  # --horizon = the limit
    assert "requested_steps" not in exact and exact["time_limit"] == 3
    assert "longer `--horizon`" not in random_play.random_play_markdown(exact)
    # the imagined env's horizon cuts too, where it is the shorter
    limited = make_tiny_checkpoint(tmp_path / "horizon2.pt", cache=cache, imagination={"horizon": 2})
    assert random_play.run_random_play(str(limited), num_envs=2, steps=6, progress=False)["steps"] == 2


def test_random_play_context_source(tiny_world_model: str, tmp_path: Path, one_torch_thread: None) -> None:
    """random_play starts from the dataset when it is on this machine, unless told to use the checkpoint's own
    contexts (as on a machine without it), and records which: results from other contexts do not compare."""
    from diffusion_world.bench.run import run_benchmark

    for source, expected in ((None, "dataset"), ("checkpoint", "stored in the checkpoint")):
        path = run_benchmark("random_play", tiny_world_model, tmp_path, quick=True, name=f"play_{source}",
                             context_source=source)
        assert expected in json.loads(path.read_text())["contexts"]
    # --horizon: how long its episodes may last (envs whose random episodes outlast 32 or 100 steps)
    path = run_benchmark("random_play", tiny_world_model, tmp_path, quick=True, name="play_long", horizon=5)
    assert json.loads(path.read_text())["steps"] == 5
    with pytest.raises(UserError, match="random_play only"):
        run_benchmark("control", tiny_world_model, tmp_path, context_source="checkpoint")


@pytest.mark.slow
def test_rl_parallel_matches_sequential(tiny_world_model: str, one_torch_thread: None, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-env reference trained in a second process is the agent a sequential run trains: same learning
    curve, same evaluation returns (greedy and sampled). So is the one kept in a ``reference_cache`` and read back
    by a later run, which trains no reference of its own."""
    from diffusion_world.bench import rl
    from diffusion_world.bench.report import render
    from diffusion_world.bench.rl import reference_key, run_rl
    from diffusion_world.checkpoint import load_world_model

    kwargs = dict(agent_steps=64, eval_episodes=2, num_envs=2, frame_stack=2, horizon=10, progress=False)
    seq = run_rl(tiny_world_model, **kwargs)
    par = run_rl(tiny_world_model, parallel=True, reference_cache=tmp_path / "cache", **kwargs)
    assert len(list((tmp_path / "cache").glob("*.zip"))) == 1 and not list((tmp_path / "cache").glob("*tmp*"))

    def no_training(*args, **kwargs):
        raise AssertionError("the reference agent was trained again")

    monkeypatch.setattr(rl, "_train_real", no_training)
    reused = run_rl(tiny_world_model, reference_cache=tmp_path / "cache", **kwargs)
    for run in (par, reused):
        for key in ("imagination", "real_trained"):
            assert run[key]["curve"] == seq[key]["curve"] and run[key]["returns"] == seq[key]["returns"]
            assert run[key]["stochastic"]["returns"] == seq[key]["stochastic"]["returns"]
        assert run["in_imagination"] == seq["in_imagination"]
    assert "reused" not in par["real_trained"] and "reused" in reused["real_trained"]
    assert "reused from `--reference-cache`" in render("rl", reused)
    import torch

    assert torch.get_num_threads() == 1  # restored
    # what the reference depends on is in its key; what it does not (the world model's weights) is not
    wm = load_world_model(tiny_world_model)
    key = reference_key(wm, 64, 2, 2, 0, 1)
    assert all(reference_key(wm, *args) != key for args in ((65, 2, 2, 0, 1), (64, 4, 2, 0, 1), (64, 2, 1, 0, 1),
                                                             (64, 2, 2, 1, 1), (64, 2, 2, 0, 2)))
    assert reference_key(wm, 64, 2, 2, 0, 1) == key


def test_readme_block_shows_settings_of_the_current_model_in_full(tmp_path: Path) -> None:
    """``<suite>_<tag>.json`` on the same checkpoint as ``<suite>.json`` (another setting) gets its table in the
    README block; one on an earlier checkpoint is only named."""
    import shutil

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    out = tmp_path / "results"
    out.mkdir()
    for src, stem in (("rl_step7995", "rl"), ("rl_sampled_step7995", "rl_sampled"), ("rl_step5300", "rl_step5300")):
        shutil.copy(results / f"{src}.json", out / f"{stem}.json")
    text = _readme_block(out, tmp_path / "README.md")
    assert "#### `rl`" in text and "#### `rl_sampled`" in text and "#### `rl_step5300`" not in text
    assert OTHER_CHECKPOINTS + "`rl_step5300`." in text
    # without rl.json, a variant on the current model (fidelity.json's) is still shown in full
    (out / "rl.json").unlink()
    fidelity = json.loads((results / "fidelity_step7995.json").read_text())
    assert (fidelity["world_model"], fidelity["checkpoint_step"]) == ("cartpole", 7995)
    (out / "fidelity.json").write_text(json.dumps(fidelity))
    text = _readme_block(out, tmp_path / "README.md")
    assert "#### `rl_sampled`" in text and "#### `rl_step5300`" not in text and "`rl_sampled`." not in text
    (out / "fidelity.json").write_text(json.dumps({**fidelity, "checkpoint_step": 10748}))
    text = _readme_block(out, tmp_path / "README.md")
    assert "#### `rl_sampled`" not in text and "`rl_sampled`" in text.split("Other checkpoints")[1]
    # the same name and step, another checkpoint file (e.g. a termination classifier added): archived too
    (out / "fidelity.json").write_text(json.dumps({**fidelity, "model_sha256": "0123456789abcdef"}))
    text = _readme_block(out, tmp_path / "README.md")
    assert "#### `rl_sampled`" not in text and "`rl_sampled`" in text.split("Other checkpoints")[1]
    sampled = json.loads((out / "rl_sampled.json").read_text())
    (out / "rl_sampled.json").write_text(json.dumps({**sampled, "model_sha256": "0123456789abcdef"}))
    text = _readme_block(out, tmp_path / "README.md")
    assert "#### `rl_sampled`" in text and "Other checkpoints" in text and "`rl_sampled`" not in text.split(
        "Other checkpoints")[1]


def test_results_record_the_checkpoint_file(tiny_world_model: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every result names the SHA-256 of the checkpoint file it ran on, which changes with any byte of it."""
    import hashlib
    import shutil

    from diffusion_world.bench import random_play, run
    from diffusion_world.bench.run import run_benchmark

    monkeypatch.setattr(random_play, "run_random_play", lambda *a, **k: {"headline": {}})
    monkeypatch.setattr(run, "render", lambda stem, r: "")
    r = json.loads(run_benchmark("random_play", tiny_world_model, tmp_path).read_text())
    assert r["model_sha256"] == hashlib.sha256(Path(tiny_world_model).read_bytes()).hexdigest()[:16]
    other = tmp_path / "other.pt"
    shutil.copy(tiny_world_model, other)
    with open(other, "ab") as f:
        f.write(b"\0")
    assert json.loads(run_benchmark("random_play", str(other), tmp_path).read_text())["model_sha256"] != r[
        "model_sha256"]


class _Called(Exception):
    pass


def test_bad_output_and_options_are_refused_before_the_run(tiny_world_model: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An --out that cannot be written is refused before the suite runs (it ran for minutes, then lost its
    results to a FileExistsError); so are negative seeds, and --world-model for memory (it was ignored). A
    benchmarks/README.md that the benchmarks did not write is left as it is (it was overwritten)."""
    from diffusion_world.bench import control
    from diffusion_world.bench.run import run_benchmark

    def never(*args, **kwargs):
        raise AssertionError("the suite ran")

    monkeypatch.setattr(control, "run_control", never)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(UserError, match="the results folder \\(--out\\) '.*afile' is a file"):
        run_benchmark("control", tiny_world_model, a_file)
    with pytest.raises(UserError, match="cannot write the results folder"):
        run_benchmark("control", tiny_world_model, a_file / "sub")
    with pytest.raises(UserError, match=r"seeds must be >= 0, got \[-1\]"):
        run_benchmark("rl", tiny_world_model, tmp_path, seed=-1)
    with pytest.raises(UserError, match="memory trains and compares its own two models"):
        run_benchmark("memory", tiny_world_model, tmp_path)

    monkeypatch.chdir(tmp_path)
    results = Path("benchmarks/results")
    results.mkdir(parents=True)
    Path("benchmarks/README.md").write_text("# My own notes\n")
    with pytest.warns(UserWarning, match="was not written by diffusion_world's benchmarks: left as it is"):
        run_benchmark("random_play", tiny_world_model, results, quick=True, horizon=3)
    assert Path("benchmarks/README.md").read_text() == "# My own notes\n"
    assert (results / "random_play_quick.json").exists()
    Path("benchmarks/README.md").unlink()  # a generated one is regenerated
    run_benchmark("random_play", tiny_world_model, results, quick=True, horizon=3)
    assert Path("benchmarks/README.md").read_text().startswith("# Benchmark results")


def test_git_commit_is_none_for_a_copy_inside_another_repository(tmp_path: Path) -> None:
    """An installed copy in a .venv inside the user's own git project recorded that project's commit as the
    commit that produced a result."""
    import os
    import shutil
    import subprocess
    import sys

    from diffusion_world.bench.common import git_commit

    if shutil.which("git") is None:
        pytest.skip("no git")
    assert git_commit() == subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parents[1],
                                          capture_output=True, text=True).stdout.strip()  # the checkout's
    project = tmp_path / "project"
    site = project / ".venv" / "site-packages"
    shutil.copytree(Path(__file__).parents[1] / "diffusion_world", site / "diffusion_world",
                    ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    for args in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty",
                                  "-m", "x"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", "from diffusion_world.bench.common import git_commit; "
                          "print(git_commit())"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.stdout.strip() == "None", out.stdout + out.stderr


def test_missing_comparison_dataset_says_what_to_give(tmp_path: Path) -> None:
    """The shipped model after a pip install: its training dataset is not on the machine. fidelity and termination
    say how to give one (it said "not found in MINARI_DATASETS_PATH=..." with the variable unset)."""
    from worldmodel_fixtures import make_tiny_checkpoint

    from diffusion_world.bench.run import run_benchmark

    bare = make_tiny_checkpoint(tmp_path / "bare.pt", dataset_id="nowhere/absent-v0")
    for suite in ("fidelity", "termination"):
        with pytest.raises(UserError, match=f"benchmark {suite} compares the model with real episodes: .*"
                                            "'nowhere/absent-v0', which is not in the Minari root .*Give --dataset-id"):
            run_benchmark(suite, str(bare), tmp_path / "out", quick=True)


@pytest.mark.parametrize("suite,module,function", [
    ("fidelity", "fidelity", "run_fidelity"), ("termination", "termination", "run_termination"),
    ("control", "control", "run_control"), ("random_play", "random_play", "run_random_play"),
    ("speed", "speed", "run_speed"), ("memory", "memory", "run_memory"), ("rl", "rl", "run_rl")])
def test_sampler_steps_reach_every_suite(suite: str, module: str, function: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--sampler-steps overrides the card's [imagination] sampler_steps, which overrides the checkpoint's; --name
    names the plots too (a variant must not overwrite the main result's)."""
    import importlib

    from diffusion_world.bench.run import run_benchmark

    def capture(*args, **kwargs):
        raise _Called(kwargs)

    monkeypatch.setattr(importlib.import_module(f"diffusion_world.bench.{module}"), function, capture)
    model = None if suite == "memory" else "model.pt"  # memory trains its own models
    card = tmp_path / "card.toml"
    card.write_text('[env]\nid = "CartPole-v1"\n[imagination]\nsampler_steps = 5\n')

    def k_seen(**kwargs) -> object:
        with pytest.raises(_Called) as called:
            run_benchmark(suite, model, tmp_path, **kwargs)
        seen = called.value.args[0]
        if suite == "rl":
            return (seen["imagination_kwargs"] or {}).get("sampler_steps")
        return seen.get("sampler_steps")

    default = {"speed": 3, "memory": None}.get(suite)  # speed: random weights have no checkpoint default
    assert k_seen() == default
    assert k_seen(card=str(card)) == 5
    assert k_seen(card=str(card), sampler_steps=2) == 2
    with pytest.raises(UserError, match="sampler_steps must be positive"):
        run_benchmark(suite, model, tmp_path, sampler_steps=0)
    # --history-guidance (and the card's history_guidance) reach every suite that imagines, like K
    if suite == "memory":
        with pytest.raises(UserError, match="does not apply"):
            run_benchmark(suite, model, tmp_path, history_guidance=2.0)
    else:
        for kwargs, w in (({"history_guidance": 2.0}, 2.0), ({}, None)):
            with pytest.raises(_Called) as called:
                run_benchmark(suite, model, tmp_path, **kwargs)
            seen = called.value.args[0]
            seen = (seen["imagination_kwargs"] or {}) if suite == "rl" else seen
            assert seen.get("history_guidance") == w
        card.write_text('[env]\nid = "CartPole-v1"\n[imagination]\nhistory_guidance = 1.5\n')
        with pytest.raises(_Called) as called:
            run_benchmark(suite, model, tmp_path, card=str(card))
        seen = called.value.args[0]
        assert ((seen["imagination_kwargs"] or {}) if suite == "rl" else seen).get("history_guidance") == 1.5
    if suite in ("fidelity", "control", "random_play", "memory"):  # their plots are named after the result
        with pytest.raises(_Called) as called:
            run_benchmark(suite, model, tmp_path, name=f"{suite}_k2")
        assert called.value.args[0]["stem"] == f"{suite}_k2"
    # a suite-specific option reaches its suites and is refused by the others, never silently dropped
    from diffusion_world.bench.run import OPTION_SUITES

    for option, value in (("seed", 0), ("termination", "sample"), ("agent_steps", 64), ("parallel", True),
                          ("short_memory", "short.pt"), ("dataset_id", "x/y-v0"), ("reset_mode", "anywhere"),
                          ("horizon", 15), ("reference_cache", "refs"), ("precision", "bf16")):
        if suite in OPTION_SUITES[option]:
            with pytest.raises(_Called) as called:
                run_benchmark(suite, model, tmp_path, **{option: value})
            if option == "horizon" and suite == "fidelity":  # the rollout length of each replayed window
                assert called.value.args[0]["horizon"] == value
            elif option == "horizon" and suite == "random_play":  # how long each episode may last
                assert called.value.args[0]["steps"] == value
            elif option in ("reset_mode", "horizon"):  # recorded with the imagined env's settings
                assert called.value.args[0]["imagination_kwargs"][option] == value
            if option == "reference_cache":  # not a setting of the result: the same agents either way
                assert called.value.args[0]["reference_cache"] == value
            if option == "precision":  # the imagined env's setting for rl, the suite's own argument otherwise
                seen = called.value.args[0]
                assert (seen["imagination_kwargs"] if suite == "rl" else seen)["precision"] == value
        else:
            with pytest.raises(UserError, match=f"{option} .* applies to benchmark .* only, not to {suite}"):
                run_benchmark(suite, model, tmp_path, **{option: value})


def test_sampler_steps_table() -> None:
    """One row per K that a variant measured on the current model; a variant of another checkpoint, another
    tag, or a single K give no row (or no table)."""
    from diffusion_world.bench.report import sampler_steps_markdown

    model = {"world_model": "m", "checkpoint_step": 5}
    sweep = {str(k): {"1": {"psnr": {"mean": 40.0 - k}}, "32": {"psnr": {"mean": 20.0 + k}}} for k in (1, 2, 3)}
    fidelity = {**model, "sampler_steps": 3, "sampler_sweep": sweep}

    def control(k: int, gain: float) -> dict:
        return {**model, "sampler_steps": k, "headline": {"gain_h8": gain, "termination_on_time": 0.5}}

    tails = {"imagined": {"on_time": 0.25, "early": 0.5, "missed": 0.25},
             "imagined_sampled": {"on_time": 0.1, "early": 0.2, "missed": 0.7}}
    results = {"fidelity": fidelity, "control": control(3, 0.75), "control_k2": control(2, 0.5),
               "control_k9": {**control(9, 0.1), "checkpoint_step": 4}, "control_other": control(7, 0.2),
               "termination_tails_k2": {**model, "sampler_steps": 2, **tails},
               "rl_50k_sampled": {**model, "imagination_kwargs": {"termination": "sample"},
                                  "imagination": {"mean": 54.4, "std": 17.3}}}

    def rows() -> list[str]:
        text = sampler_steps_markdown(results)
        return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| K")]

    # without its base result (the same model at the default K), a variant counts for nothing
    assert rows()[0] == "| 2 | 38.00 / 22.00 | 0.50 | 50 % | – |"
    results["termination_tails"] = {**model, "sampler_steps": 3, **tails}
    assert rows() == ["| 2 | 38.00 / 22.00 | 0.50 | 50 % | 25 / 50 / 25 % | 10 / 20 / 70 % | – |",
                    "| 3 (default) | 37.00 / 23.00 | 0.75 | 50 % | 25 / 50 / 25 % | 10 / 20 / 70 % | 54.4 ± 17.3 |"]
    assert "random-play" not in sampler_steps_markdown(results)  # a family measured at no K has no column
    assert sampler_steps_markdown({k: v for k, v in results.items() if not k.endswith("_k2")}) is None
    # a base result named by the checkpoint's path counts (control records it); on another file it does not
    with_path = {**results, "control": {**results["control"], "world_model": "/m.pt"},
                 "control_k2": {**results["control_k2"], "world_model": "/m.pt"}}
    assert "| 0.50 | 50 % |" in sampler_steps_markdown(with_path)
    other_file = {**with_path, "control": {**with_path["control"], "model_sha256": "0123456789abcdef"}}
    assert "| 0.50 | 50 % |" not in sampler_steps_markdown(other_file)
    # two results of one K (e.g. run on two machines): the cell names each
    results["rl_50k_sampled_k3"] = {**results["rl_50k_sampled"], "imagination_kwargs": {"sampler_steps": 3},
                                    "imagination": {"mean": 40.0, "std": 1.0}, "machine": {"cpu": "AMD"}}
    assert rows()[1].endswith("| 54.4 ± 17.3 (`rl_50k_sampled`, ?); 40.0 ± 1.0 (`rl_50k_sampled_k3`, AMD) |")
    # history guidance: a row per (K, w), its PSNR from the fidelity variant of that w
    del results["rl_50k_sampled_k3"]
    results["control_hg2"] = {**control(3, 0.9), "history_guidance": 2.0}
    results["fidelity_hg2"] = {**fidelity, "history_guidance": 2.0,
                               "sampler_sweep": {"3": {"1": {"psnr": {"mean": 36.5}}, "32": {"psnr": {"mean": 22.5}}}}}
    text = sampler_steps_markdown(results)
    assert text.startswith("| K, history guidance w |")
    assert rows()[1:] == ["| 3, off (default) | 37.00 / 23.00 | 0.75 | 50 % | 25 / 50 / 25 % | 10 / 20 / 70 % | "
                          "54.4 ± 17.3 |", "| 3, w=2 | 36.50 / 22.50 | 0.90 | 50 % | – | – | – |"]
    assert "--history-guidance w --name <base>_hg<w>" in text
    # a fidelity variant on other held-out windows gives no PSNR to compare with
    other_windows = {**results, "fidelity_hg2": {**results["fidelity_hg2"], "dataset_id": "other/test-v0"}}
    assert "| 3, w=2 | – | 0.90 |" in sampler_steps_markdown(other_windows)
    # motion (fidelity's, at each result's own K and w) gets a column once a fidelity result has it
    results["fidelity_hg2"] = {**results["fidelity_hg2"], "motion": {"model": {"8": 0.875, "32": 0.5}}}
    text = sampler_steps_markdown(results)
    assert "| PSNR h=1 / 32 (dB) | motion h=8 / 32 |" in text
    assert "| 3, w=2 | 36.50 / 22.50 | 0.88 / 0.50 | 0.90 |" in text and "| 37.00 / 23.00 | – | 0.75 |" in text
    del results["fidelity_hg2"]["motion"]
    # RL seed sweeps: compared on the seeds both ran (imagination-trained return, real-trained in brackets)
    def sweep(returns: dict[int, float], **kwargs: float) -> dict:
        return {**model, "imagination_kwargs": {"termination": "sample", **kwargs}, "seeds": list(returns),
                "per_seed": {str(s): {"imagination": v, "real_trained": 50.0 + s} for s, v in returns.items()}}

    results["rl_50k_sampled_seeds"] = sweep({0: 10.0, 1: 30.0, 2: 80.0})
    results["rl_50k_sampled_hg2_seeds"] = sweep({1: 40.0, 0: 60.0}, history_guidance=2.0)
    assert rows()[1].endswith("| seeds 0, 1: 20.0 ± 10.0 (50.5); all 3: 40.0 ± 29.4 (51.0) |")
    assert rows()[2].endswith("| seeds 0, 1: 50.0 ± 10.0 (50.5) |")
    assert "`rl_50k_sampled_hg2_seeds`" in sampler_steps_markdown(results)


def test_glance_table_answers_from_current_results_only() -> None:
    """The at-a-glance table takes each row from a result of the current checkpoint (fidelity's) at its default
    sampler settings, next to its reference; results of another checkpoint or setting give no row."""
    from diffusion_world.bench.report import glance_markdown

    model = {"world_model": "m", "checkpoint_step": 5, "model_sha256": "ab"}
    psnr = {str(h): {"psnr": {"mean": 40.0 - h / 2}} for h in (1, 8, 16, 32)}
    last = {str(h): {"psnr": {"mean": 50.0 - h}} for h in (1, 8, 16, 32)}
    results = {"fidelity": {**model, "sampler_steps": 3, "context_frames": 4, "model": psnr,
                            "repeat_last_frame": last, "reward_mae": 0.125,
                            "motion": {"model": {"8": 0.75, "16": 0.5, "32": 0.25}}},
               "control": {**model, "world_model": "/m.pt", "sampler_steps": 3,
                           "headline": {"gain_h8": 0.75, "termination_on_time": 0.5}},
               "control_hg2": {**model, "sampler_steps": 3, "history_guidance": 2.0,
                               "headline": {"gain_h8": 0.99, "termination_on_time": 0.99}},
               "termination_tails": {**model, "sampler_steps": 3, "imagined": {
                   "episodes": 8, "on_time": 0.25, "early": 0.125, "missed": 0.625}},
               "random_play": {**model, "checkpoint_step": 4, "sampler_steps": 3,
                               "headline": {"threshold_mean_length": 30.0}},
               "rl_50k_seeds": {**model, "agent_steps": 50000, "seeds": [0, 1],
                                "imagination_kwargs": {"termination": "sample", "sampler_steps": 3},
                                "across_seeds": {k: {"mean": m, "std": 1.0} for k, m in (
                                    ("imagination", 80.0), ("real_trained", 70.0), ("random", 20.0))}},
               "rl_hg2_seeds": {**model, "agent_steps": 50000, "seeds": [0],
                                "imagination_kwargs": {"history_guidance": 2.0}, "across_seeds": {}}}
    rows = [line.split(" | ") for line in glance_markdown(results).splitlines()[2:] if line.startswith("| ")]
    assert [(r[1], r[2], r[3].rstrip(" |")) for r in rows] == [
        ("36.00 / 32.00 / 24.00", "repeat the last real frame: 42.00 / 34.00 / 18.00", "`fidelity`"),
        ("0.75 / 0.50 / 0.25", "1 (repeating the last frame: 0)", "`fidelity`"),
        ("0.125", "0", "`fidelity`"), ("0.75", "1", "`control`"), ("50 %", "100 %", "`control`"),
        ("25 / 12 / 62 %", "100 / 0 / 0 %", "`termination_tails`"),
        ("80.0 ± 1.0", "PPO trained in the real env: 70.0 ± 1.0; random: 20.0 ± 1.0", "`rl_50k_seeds`")]
    assert "termination='sample'" in rows[-1][0] and "over 2 seeds" in rows[-1][0]
    assert "K=3 denoiser calls per frame, no history guidance" in glance_markdown(results)
    # an env whose held-action episodes never ended within the horizon (Pendulum): no share, not a crash
    never = {**results, "control": {**results["control"], "headline": {"gain_h8": 0.75, "termination_on_time": None}}}
    row = next(r for r in glance_markdown(never).splitlines() if "held actions end" in r)
    assert row.endswith("| – | no real episode ended | `control` |")
    # speed: the `speed` result's row, then a row for each `speed_<machine>` measured the same way elsewhere
    def speed(cpu: str, fps: tuple[float, float], **kw: object) -> dict:
        return {"sampler_steps": 3, "preset": "small", "device": "cpu", "world_model": None,
                "machine": {"cpu": cpu, "cpu_count": 2}, **kw,
                "batch_sweep": [{"batch": b, "steps_per_s": v} for b, v in zip((1, 16, 64), (*fps, 99.0))]}

    timed = {**results, "speed": speed("CPU A", (20.0, 64.0), batch_sweep_bf16=[
        {"batch": 1, "steps_per_s": 25.0}, {"batch": 16, "steps_per_s": 100.0}]),
             "speed_b": speed("CPU B", (5.0, 16.0)), "speed_b_k5": speed("CPU B", (2.0, 8.0), sampler_steps=5),
             "speed_b_base": speed("CPU B", (1.0, 3.0), preset="base")}
    rows = [line.split(" | ") for line in glance_markdown(timed).splitlines()[2:] if line.startswith("| ")]
    assert [(r[1], r[2], r[3].rstrip(" |")) for r in rows[-2:]] == [
        ("20.0 / 64.0", 'with `precision="bf16"`: 25.0 / 100.0', "`speed`"), ("5.0 / 16.0", "–", "`speed_b`")]
    assert "(small preset, cpu, CPU A)" in rows[-2][0] and rows[-1][0] == "| The same on CPU B (2 cores)"
    # another checkpoint file: only fidelity's own rows remain
    other = {k: {**v, "model_sha256": "cd"} if k != "fidelity" else v for k, v in results.items()}
    assert glance_markdown(other).count("\n| ") == 3
    assert glance_markdown({k: v for k, v in results.items() if k != "fidelity"}) is None


def test_rl_recipe_table_compares_training_recipes_on_common_seeds() -> None:
    """The training table has one row per seed sweep of the current model at its default sampler settings, each
    compared on the seeds all of them ran; the at-a-glance table keeps only the sweep whose imagined episodes
    start and end as real ones do."""
    from diffusion_world.bench.report import glance_markdown, rl_recipes_markdown

    model = {"world_model": "m", "checkpoint_step": 5, "model_sha256": "ab"}

    def sweep(seeds: dict[int, float], **kwargs: object) -> dict:
        per_seed = {str(s): {"imagination": v, "imagination_sampled": v / 2, "imagination_in_imagination": 2 * v,
                             "real_trained": 70.0 + s, "real_trained_in_imagination": 90.0} for s, v in seeds.items()}
        mean = float(np.mean(list(seeds.values())))
        return {**model, "agent_steps": 50000, "seeds": sorted(seeds), "per_seed": per_seed,
                "imagination_kwargs": {"termination": "sample", "sampler_steps": 3, **kwargs},
                "across_seeds": {k: {"mean": mean, "std": 0.0} for k in ("imagination", "real_trained", "random")}}

    results = {"fidelity": {**model, "sampler_steps": 3, "context_frames": 4},
               "rl_seeds": sweep({0: 100.0, 1: 40.0, 2: 10.0}),
               "rl_anywhere_seeds": sweep({0: 30.0, 1: 10.0}, reset_mode="anywhere", horizon=15),
               "rl_hg2_seeds": sweep({0: 1.0, 1: 1.0}, history_guidance=2.0),
               "rl_old_seeds": {**sweep({0: 1.0, 1: 1.0}), "model_sha256": "cd"}}
    rows = [line.split(" | ") for line in rl_recipes_markdown(results).splitlines()[2:] if line.startswith("| ")]
    assert [r[0] for r in rows] == ["| sampled, episode starts, the env's horizon",
                                    "| sampled, anywhere in the data, cut at 15 steps"]
    # seeds 0 and 1 only: seed 2 of the first sweep is left out of the comparison
    assert [r[2:6] for r in rows] == [["70.0 ± 30.0", "35.0 ± 15.0", "140.0 ± 60.0", "70.5 ± 0.5"],
                                      ["20.0 ± 10.0", "10.0 ± 5.0", "40.0 ± 20.0", "70.5 ± 0.5"]]
    assert rows[1][-1] == "`rl_anywhere_seeds` |" and "seeds 0, 1" in rl_recipes_markdown(results)
    glance = glance_markdown(results)
    assert "`rl_seeds`" in glance and "rl_anywhere_seeds" not in glance and "the training table" in glance
    # one sweep: no table to compare
    assert rl_recipes_markdown({k: v for k, v in results.items() if k != "rl_anywhere_seeds"}) is None


def _fake_rl(calls: list[int]):
    """Stands in for run_rl (PPO) in the seed-sweep tests: returns that depend on the seed."""
    from diffusion_world.bench import rl

    def fake(world_model: str, agent_steps: int, eval_episodes: int, seed: int = 0, **kwargs) -> dict:
        calls.append(seed)

        def summary(mean: float) -> dict:
            return {"mean": mean, "std": 1.0, "returns": [mean] * eval_episodes}

        return {"world_model": world_model, "checkpoint_step": 7, "agent_steps": agent_steps, "seed": seed,
                "agent_steps_trained": max(agent_steps, 4096),  # whole rollouts
                "num_envs": 2, "frame_stack": 2, "eval_episodes": eval_episodes,
                "ppo": rl.ppo_settings(agent_steps, 2, kwargs.get("ppo")),
                "imagination_kwargs": kwargs.get("imagination_kwargs") or {},
                "imagination": {**summary(10.0 + 30 * seed), "train_s": 1.0,  # training returns 1 + seed .. 7 + seed
                                "curve": [[32 * i, float(i + seed), 5.0, 1] for i in range(1, 8)],
                                "stochastic": summary(9.0 + seed)},
                "real_trained": {**summary(50.0 + seed), "train_s": 1.0, "curve": [[32, 5.0, 5.0, 1]],
                                 "stochastic": summary(40.0)},
                "random": summary(20.0),
                "in_imagination": {"horizon": 20, "imagination": summary(15.0 + seed),
                                   "real_trained": summary(12.0), "random": summary(8.0)},
                "headline": {"imagination_return_mean": 10.0 + 30 * seed}}

    return fake


def test_rl_seed_sweep_writes_each_seed_and_their_spread_and_resumes(tiny_world_model: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusion_world.bench import rl
    from diffusion_world.bench.run import run_benchmark

    calls: list[int] = []
    monkeypatch.setattr(rl, "run_rl", _fake_rl(calls))
    args = ["benchmark", "rl", "--world-model", tiny_world_model, "--quick", "--out", str(tmp_path),
            "--name", "rl_sweep", "--termination", "sample"]
    assert main([*args, "--seed", "0", "1"]) == 0
    assert calls == [0, 1]
    per_seed = [json.loads((tmp_path / f"rl_sweep_seed{s}.json").read_text()) for s in (0, 1)]
    assert [r["seed"] for r in per_seed] == [0, 1] and all(r["model_sha256"] for r in per_seed)
    summary = json.loads((tmp_path / "rl_sweep_seeds.json").read_text())
    imag = [r["imagination"]["mean"] for r in per_seed]
    assert summary["seeds"] == [0, 1] and summary["imagination_kwargs"] == {"termination": "sample"}
    assert (summary["agent_steps"], summary["agent_steps_trained"]) == (2_000, 4096)  # --quick's budget
    spread = summary["across_seeds"]["imagination"]
    assert spread == {"mean": np.mean(imag), "std": np.std(imag), "min": min(imag), "max": max(imag), "n": 2}
    assert summary["per_seed"]["1"]["imagination_sampled"] == per_seed[1]["imagination"]["stochastic"]["mean"]
    assert summary["per_seed"]["0"]["real_trained_in_imagination"] == 12.0
    # the training return at the end: the last 5 rollouts of the curve (returns 3..7, plus the seed)
    assert [summary["per_seed"][s]["imagination_training_end"] for s in ("0", "1")] == [5.0, 6.0]
    assert summary["across_seeds"]["imagination_training_end"]["mean"] == 5.5
    text = (tmp_path / "rl_sweep_seeds.md").read_text()
    assert "| mean ± std over seeds | 25.0 ± 15.0 |" in text and "`rl_sweep_seed1`" in text
    # each seed's table is its own file beside the summary (before: said to be in benchmarks/README.md)
    assert "benchmarks/README.md" not in text and all((tmp_path / f"rl_sweep_seed{s}.md").exists() for s in (0, 1))
    assert "training return, last 5 rollouts |\n" in text and "| 5.5 ± 0.5 |\n" in text

    # adding a seed runs only that seed; the others are read back from their files
    assert main([*args, "--seed", "0", "1", "2"]) == 0
    assert calls == [0, 1, 2]
    assert json.loads((tmp_path / "rl_sweep_seeds.json").read_text())["across_seeds"]["imagination"]["n"] == 3
    # a file of another run (other settings) is not mixed in
    with pytest.raises(UserError, match="holds another run"):
        run_benchmark("rl", tiny_world_model, tmp_path, quick=True, name="rl_sweep", seed=[0, 3], agent_steps=128,
                      termination="sample")
    assert calls == [0, 1, 2]
    card = tmp_path / "card.toml"  # other PPO settings ([rl]) are another run too
    card.write_text('[env]\nid = "CartPole-v1"\n[rl]\ngamma = 0.9\n')
    with pytest.raises(UserError, match="holds another run"):
        run_benchmark("rl", tiny_world_model, tmp_path, card=str(card), quick=True, name="rl_sweep", seed=[0, 3],
                      termination="sample")
    assert calls == [0, 1, 2]
    with pytest.raises(UserError, match="rl only"):
        run_benchmark("control", tiny_world_model, tmp_path, seed=[0, 1])
    with pytest.raises(UserError, match="distinct"):
        run_benchmark("rl", tiny_world_model, tmp_path, seed=[1, 1])


def test_readme_block_sums_up_a_seed_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           tiny_world_model: str) -> None:
    from diffusion_world.bench import rl
    from diffusion_world.bench.run import run_benchmark

    monkeypatch.setattr(rl, "run_rl", _fake_rl([]))
    run_benchmark("rl", tiny_world_model, tmp_path, quick=True, name="rl_sweep", seed=[0, 1])
    summary = json.loads((tmp_path / "rl_sweep_seeds.json").read_text())
    current = {k: summary[k] for k in ("world_model", "checkpoint_step", "model_sha256")}  # the current model
    (tmp_path / "fidelity.json").write_text(json.dumps({**current, "sampler_steps": 3}))
    text = _readme_block(tmp_path, tmp_path / "README.md")
    assert "#### `rl_sweep_seeds`" in text and "#### `rl_sweep_seed0`" not in text and "`rl_sweep_seed0`" in text


def test_precision_table(tmp_path: Path) -> None:
    """A row per measure of each `<base>_fp32` / `<base>_bf16` pair on one model; a pair that is incomplete, on two
    models, or mislabelled gives nothing, and the paired results get no section of their own in the README."""
    from diffusion_world.bench.report import precision_markdown, precision_stems

    model = {"world_model": "m", "checkpoint_step": 5, "sampler_steps": 3}

    def control(precision: str, gain: float) -> dict:
        return {**model, "precision": precision, "headline": {"gain_h8": gain, "accuracy_h8": 0.5}}

    def play(precision: str, length: float) -> dict:
        return {**model, "precision": precision, "headline": {"threshold_mean_length": length,
                                                              "sampled_mean_length": length - 1,
                                                              "real_mean_length": 19.0}}

    results = {"control_fp32": control("fp32", 0.8), "control_bf16": control("bf16", 0.7),
               "random_play_fp32": play("fp32", 30.0)}
    assert precision_stems(results) == ["control_fp32", "control_bf16"]
    text = precision_markdown(results)
    assert "| action gain, 8 steps held | 0.80 | 0.70 | real env: 1 | `control_fp32`, `control_bf16` |" in text
    assert "random-play" not in text  # no bf16 result: no row
    results["random_play_bf16"] = play("bf16", 25.0)
    assert "| 30.0 / 29.0 | 25.0 / 24.0 | real env: 19.0 |" in precision_markdown(results)
    results["random_play_bf16"] = {**play("bf16", 25.0), "checkpoint_step": 6}  # another model
    assert "random-play" not in precision_markdown(results)
    assert precision_markdown({"control_fp32": control("fp32", 0.8), "control_bf16": control("fp32", 0.7)}) is None

    def rl(precision: str, ret: float, minutes: float) -> dict:
        return {**model, "agent_steps": 50_000, "seed": 0, "imagination_kwargs": {"precision": precision},
                "imagination": {"mean": ret, "std": 1.0, "train_s": 60 * minutes}, "real_trained": {"mean": 80.0}}

    results.update(rl_50k_sampled_fp32=rl("fp32", 90.0, 30.0), rl_50k_sampled_bf16=rl("bf16", 70.0, 20.0))
    text = precision_markdown(results)
    assert "seed 0: real-env return | 90.0 ± 1.0 | 70.0 ± 1.0 | PPO trained in the real env: 80.0 |" in text
    assert "| minutes of PPO training in imagination | 30.0 | 20.0 |" in text.replace("the same: ", "")
    out = tmp_path / "results"
    out.mkdir()
    for stem in ("control_fp32", "control_bf16"):
        (out / f"{stem}.json").write_text(json.dumps(results[stem]))
    text = _readme_block(out, tmp_path / "README.md")
    assert "fp32 or bf16" in text and "`control_fp32`, `control_bf16` |" in text and "#### `control_" not in text


def test_candidates_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint trained past the shipped one, benchmarked on the shipped results' episodes, gets a column next
    to them; earlier checkpoints, results on other episodes and bf16 runs do not, and the candidates' results get no
    section of their own in the README."""
    from diffusion_world.bench import report
    from diffusion_world.bench.report import candidate_stems, candidates_markdown

    def control(step: int, gain: float, starts: int = 32, **kw: object) -> dict:
        return {"world_model": "m", "checkpoint_step": step, "model_sha256": f"sha{step}", "sampler_steps": 3,
                "num_starts": starts, "headline": {"gain_h8": gain, "accuracy_h8": 0.5}, **kw}

    fidelity = {"world_model": "m", "checkpoint_step": 10, "model_sha256": "sha10", "sampler_steps": 3}
    results = {"fidelity": fidelity, "control_fp32": control(10, 0.8)}
    assert candidates_markdown(results) is None
    results.update(control_cand=control(12, 0.9), control_step5=control(5, 0.6), control_other=control(14, 0.7, 16),
                   control_bf16cand=control(16, 0.95, precision="bf16"))
    assert candidate_stems(results) == ({"control": "control_fp32"}, {"cand": {"control": "control_cand"}})
    text = candidates_markdown(results)
    assert "| measure | shipped, step 10 | `cand`, step 12 | reference |" in text
    assert "| action gain, 8 steps held | 0.80 | 0.90 | real env: 1 |" in text
    # the suite's own result, where it ran on the same start states, is the reference
    results["control"] = control(10, 0.85, 16)
    assert candidate_stems(results) == ({"control": "control"}, {"other": {"control": "control_other"}})
    monkeypatch.setitem(report.RENDERERS, "control", lambda r: "(its table)")
    out = tmp_path / "results"
    out.mkdir()
    for stem in ("fidelity", "control_fp32", "control_cand", "control_step5"):
        (out / f"{stem}.json").write_text(json.dumps(results[stem]))
    text = _readme_block(out, tmp_path / "README.md")
    assert "| action gain, 8 steps held | 0.80 | 0.90 |" in text and "#### `control_cand`" not in text
    assert "`control_step5`" in text.split("Other checkpoints")[1] and "`control_cand`" not in text.split(
        "Other checkpoints")[1]


def test_candidates_table_rl_row() -> None:
    """A candidate's RL seed sweep (same PPO budget and imagined-env settings as the shipped model's
    `rl_50k_sampled_seeds`) is compared on the seeds both ran; other settings and the shipped model's other
    sweeps are not candidates."""
    from diffusion_world.bench.report import candidate_stems, candidates_markdown

    def sweep(step: int, rows: dict[int, tuple[float, float, float]], **kw: object) -> dict:
        return {"world_model": "m", "checkpoint_step": step, "model_sha256": f"sha{step}", "agent_steps": 50_000,
                "eval_episodes": 10, "imagination_kwargs": {"termination": "sample", "sampler_steps": 3},
                "quick": False, "seeds": list(rows), "headline": {}, **kw,
                "per_seed": {str(s): {"result": f"r{s}", "imagination": i, "real_trained": real, "random": rand}
                             for s, (i, real, rand) in rows.items()}}

    fidelity = {"world_model": "m", "checkpoint_step": 10, "model_sha256": "sha10", "sampler_steps": 3}
    shipped = sweep(10, {0: (100, 80, 20), 1: (50, 60, 30), 2: (30, 70, 25)})
    results = {"fidelity": fidelity, "rl_50k_sampled_seeds": shipped,
               "rl_50k_sampled_hg2_seeds": sweep(10, {0: (1, 1, 1)}),
               "rl_50k_sampled_cand_seeds": sweep(12, {0: (60, 90, 20), 1: (40, 100, 30)}),
               "rl_50k_sampled_k5cand_seeds": sweep(12, {0: (60, 90, 20)},
                                                     imagination_kwargs={"termination": "sample", "sampler_steps": 5})}
    assert candidate_stems(results) == ({"rl_50k_sampled_seeds": "rl_50k_sampled_seeds"},
                                        {"cand": {"rl_50k_sampled_seeds": "rl_50k_sampled_cand_seeds"}})
    row = next(line for line in candidates_markdown(results).splitlines() if line.startswith("| PPO 50k steps"))
    assert row.endswith("| seeds 0, 1: 75.0 ± 25.0 (70.0); all 3: 60.0 ± 29.4 (70.0) | seeds 0, 1: 50.0 ± 10.0 "
                        "(95.0) | random policy: 25.0 |")


def test_env_speed_script_compares_with_diamond_only_where_it_was_timed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/env_speed.py (tiny preset, a moment per batch size): DIAMOND's steps/s are those timed on the
    run's own CPU, per batch size; on another CPU, or at a batch size DIAMOND was not timed at, no ratio."""
    import importlib.util
    import sys

    from diffusion_world.bench.report import env_speed_markdown

    spec = importlib.util.spec_from_file_location("env_speed", Path(__file__).parents[1] / "benchmarks/env_speed.py")
    assert spec is not None and spec.loader is not None
    env_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env_speed)
    cpu, reference = next(iter(env_speed.DIAMOND_CPU_STEPS_PER_S.items()))
    out = tmp_path / "env_speed.json"
    monkeypatch.setattr(sys, "argv", ["env_speed.py", "--preset", "tiny", "--batches", "1", "2", "--seconds",
                                      "0.05", "--precision", "fp32", "--out", str(out)])
    monkeypatch.setattr(env_speed, "cpu_model", lambda: cpu)
    env_speed.main()
    r = json.loads(out.read_text())
    rows = {row["batch_size"]: row for row in r["batches"]}
    assert rows[1]["vs_diamond_cpu"] == pytest.approx(rows[1]["env_steps_per_s"] / reference[1])
    assert rows[2]["vs_diamond_cpu"] is None  # DIAMOND was timed at batch 1 and 16 only
    assert r["diamond_reference_cpu_steps_per_s"] == {str(b): v for b, v in reference.items()}
    table = env_speed_markdown(r)
    assert f"| fp32 | 1 | {rows[1]['env_steps_per_s']:.1f} |" in table
    assert f"| – | {rows[1]['vs_diamond_cpu']:.1f}× |" in table
    assert f"| fp32 | 2 | {rows[2]['env_steps_per_s']:.1f} | {rows[2]['best_step_s'] * 1e3:.0f} | – | – |" in table
    assert f"DIAMOND: {reference[1]:g} / {reference[16]:g} steps/s at batch 1 / 16" in table
    # a CPU DIAMOND never ran on: no reference at all
    monkeypatch.setattr(env_speed, "cpu_model", lambda: "Some Other CPU")
    env_speed.main()
    r = json.loads(out.read_text())
    assert r["diamond_reference_cpu_steps_per_s"] is None and all(b["vs_diamond_cpu"] is None for b in r["batches"])
    assert "DIAMOND: not timed on this CPU." in env_speed_markdown(r)


def test_results_tell_cpus_of_one_name_apart_by_native_bf16() -> None:
    """Two "AMD EPYC" machines, one with AVX512-BF16 and one without, ran bf16 at very different speeds, and the
    results named both alike: they record and show whether the CPU has native bf16."""
    from diffusion_world import precision
    from diffusion_world.bench.common import machine_info
    from diffusion_world.bench.report import _machine

    info = machine_info()
    assert info["cpu_native_bf16"] == precision.cpu_has_native_bf16()
    for native, shown in ((True, "AMD EPYC with native bf16 (2 cores)"), (False, "AMD EPYC without native bf16"),
                          (None, "AMD EPYC (2 cores)")):
        machine = {"cpu": "AMD EPYC", "cpu_count": 2, **({} if native is None else {"cpu_native_bf16": native})}
        assert shown in _machine({"machine": machine})
