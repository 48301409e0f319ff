"""The frame-level termination classifier: it learns terminal frames from real data, the env and the benchmarks
use it in place of the model's head, and it survives export."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_termination import edge_walk_dataset  # noqa: F401  (fixture)
from worldmodel_fixtures import make_tiny_checkpoint

from diffusion_world.checkpoint import export_for_inference, load_checkpoint, load_world_model, save_checkpoint
from diffusion_world.data.dataset import FrameCache
from diffusion_world.diffusion.sampler import frames_to_x
from diffusion_world.errors import UserError
from diffusion_world.model.termination import TerminationClassifier, TerminationClassifierConfig
from diffusion_world.registration import PIXEL_ENV_ID
from diffusion_world.training.termination import (
    TerminationFitConfig,
    fit_termination,
    format_report,
    report_path_for,
    roc_auc,
)


def test_roc_auc_matches_pairwise_counting() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.2
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(labels, scores) == pytest.approx(pairwise)
    assert roc_auc(labels, np.where(labels, 1.0, 0.0)) == 1.0
    assert roc_auc(np.zeros(5, bool), np.arange(5.0)) is None


def test_classifier_shapes_and_bad_frames() -> None:
    for size in ((16, 16), (64, 64), (24, 40)):
        model = TerminationClassifier(TerminationClassifierConfig(frame_size=size))
        assert model(torch.zeros(2, 5, 3, *size)).shape == (2, 5)
    with pytest.raises(UserError, match="expects frames of shape"):
        model(torch.zeros(2, 3, 16, 16))


def test_bad_fit_settings_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad, message in (({"steps": 0}, "steps=0: must be >= 1"), ({"lr": -1.0}, "lr=-1.0: must be > 0"),
                         ({"imagined_fraction": 1.0}, "imagined_fraction=1.0: must be in")):
        with pytest.raises(UserError, match=f"bad termination-classifier setting {message}"):
            TerminationFitConfig(**bad).validate()
    from diffusion_world.cli import main

    # settings are checked before the checkpoint is read
    assert main(["fit-termination", str(tmp_path / "missing.pt"), "--steps", "0"]) == 2
    assert "setting steps=0: must be >= 1" in capsys.readouterr().err


def test_fit_refuses_an_unwritable_out_before_training(tiny_world_model: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--out a directory or in a folder that cannot be written: refused before the data and the training (raw
    IsADirectoryError / PermissionError after it)."""
    from diffusion_world.training import termination

    monkeypatch.setattr(termination.FrameCache, "open", lambda *a, **k: pytest.fail("read the data"))
    (tmp_path / "somedir").mkdir()
    with pytest.raises(UserError, match="is a directory: give the checkpoint file to write"):
        fit_termination(tiny_world_model, tmp_path / "somedir")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot write the folder of the checkpoint to write"):
        fit_termination(tiny_world_model, tmp_path / "afile" / "sub" / "wm.pt")


def test_fit_learns_held_out_terminal_frames(edge_walk_dataset: str, tmp_path: Path) -> None:  # noqa: F811
    cache = FrameCache.open(edge_walk_dataset, progress=False)
    src = make_tiny_checkpoint(tmp_path / "wm.pt", cache=cache)
    before = load_checkpoint(src)
    report = fit_termination(src, tmp_path / "out" / "wm.pt", cfg=TerminationFitConfig(steps=300, batch_size=64),
                             progress=False)
    val = report["val"][edge_walk_dataset]
    assert val["positives"] >= 10, format_report(report)
    assert val["recall"] >= 0.9 and val["precision"] >= 0.9 and val["auc"] > 0.99, format_report(report)
    assert report["loss_steps"] == 50 and report["loss_last"] < report["loss_first"]
    # named after its checkpoint (two checkpoints in one folder shared, and overwrote, one termination.json)
    assert json.loads((tmp_path / "out" / "wm.termination.json").read_text()) == json.loads(json.dumps(report))
    assert report_path_for(tmp_path / "run" / "checkpoint.pt") == tmp_path / "run" / "termination.json"

    # the checkpoint is the source plus the classifier; WorldModel scores real held-out frames with it
    after = load_checkpoint(tmp_path / "out" / "wm.pt")
    assert set(after) - set(before) == {"termination_classifier"}
    wm = load_world_model(tmp_path / "out" / "wm.pt")
    _, val_eps = cache.episode_split(0.2, 0)
    idx = np.concatenate([np.arange(cache.episode_starts[e], cache.episode_starts[e] + cache.episode_lengths[e])
                          for e in val_eps])
    p = wm.termination_probability(torch.zeros(len(idx)), frames_to_x(np.asarray(cache.frames[idx]))).numpy()
    real = cache.terminations[idx]
    assert (p[real] > 0.5).mean() == pytest.approx(val["recall"])
    with pytest.raises(ValueError, match="pass the frames"):
        wm.termination_probability(torch.zeros(3))


def test_fit_refuses_a_dataset_of_another_frame_size(edge_walk_dataset: str, tmp_path: Path) -> None:  # noqa: F811
    from test_termination import EDGE_ENV_ID

    from diffusion_world.data.collect import collect

    collect(EDGE_ENV_ID, "tt/edge-walk-8px-v0", steps=100, size=8, seed=1, progress=False)
    src = make_tiny_checkpoint(tmp_path / "wm.pt", cache=FrameCache.open(edge_walk_dataset, progress=False))
    with pytest.raises(UserError, match=r"does not match the world model's: frames \(8, 8\)"):
        fit_termination(src, extra_datasets=["tt/edge-walk-8px-v0"], cfg=TerminationFitConfig(steps=1),
                        progress=False)


def test_fit_compares_the_envs_of_datasets_other_tools_recorded() -> None:
    """--extra-dataset-id compared the pixel env's "env_id" only: two datasets recorded by other tools (whose
    spec names the env as "id") passed as one env whatever they were, a dataset without a spec too."""
    from types import SimpleNamespace

    from diffusion_world.training.termination import _check_compatible

    def cache(spec):
        return SimpleNamespace(frame_size=(16, 16), action_space=gym.spaces.Discrete(2), env_spec=spec,
                               dataset_id="tt/extra-v0")

    pixel = {"id": PIXEL_ENV_ID, "env_id": "CartPole-v1", "size": 16, "frame_skip": 1}
    model = {"frame_size": [16, 16], "action_space": {"type": "discrete", "n": 2}}
    for own, extra in ((pixel, {**pixel, "env_id": "CartPole-v0"}), ({"id": "CartPole-v1"}, {"id": "CartPole-v0"}),
                       ({"id": "CartPole-v1"}, None), (pixel, {**pixel, "frame_skip": 2})):
        with pytest.raises(UserError, match="does not match the world model's: (env|frame_skip)"):
            _check_compatible({**model, "env_spec": own}, cache(extra))
    _check_compatible({**model, "env_spec": pixel}, cache({"id": "CartPole-v1", "render_mode": "rgb_array"}))


def _with_classifier(src: str, dst: Path, bias: float) -> Path:
    """A copy of ``src`` whose termination classifier says ``bias`` (as a logit) for every frame."""
    ckpt = load_checkpoint(src)
    cfg = TerminationClassifierConfig(frame_size=tuple(ckpt["dataset"]["frame_size"]))
    model = TerminationClassifier(cfg)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.fill_(bias)
    ckpt["termination_classifier"] = {"config": cfg.to_dict(), "state_dict": model.state_dict(), "report": {}}
    save_checkpoint(dst, ckpt)
    return dst


@pytest.mark.parametrize("bias, terminated", [(8.0, True), (-8.0, False)])
def test_env_terminates_when_the_classifier_says_so(tiny_world_model: str, tmp_path: Path, bias: float,
                                                    terminated: bool) -> None:
    # the tiny model's head alone never terminates (its bias is -6); the classifier decides
    env = gym.make("DiffusionWorld-v0", world_model=str(_with_classifier(tiny_world_model, tmp_path / "c.pt", bias)))
    env.reset(seed=0)
    _, _, term, trunc, _ = env.step(0)
    assert term is terminated and trunc is False
    env.close()


def test_export_keeps_the_classifier(edge_walk_dataset: str, tmp_path: Path) -> None:  # noqa: F811
    cache = FrameCache.open(edge_walk_dataset, progress=False)
    src = make_tiny_checkpoint(tmp_path / "wm.pt", cache=cache)
    ckpt = load_checkpoint(src)
    ckpt["ema"] = ckpt["model"]
    save_checkpoint(src, ckpt)
    report = fit_termination(src, cfg=TerminationFitConfig(steps=20, batch_size=32), progress=False)
    # the first and last 10 steps (of 50 each, a short run's two were the same mean over all steps)
    assert report["loss_steps"] == 10 and report["loss_first"] != report["loss_last"]
    export_for_inference(src, tmp_path / "slim.pt")
    full, slim = load_world_model(src), load_world_model(tmp_path / "slim.pt")
    x = frames_to_x(np.array(cache.frames[:64]))
    assert slim.termination_classifier is not None
    torch.testing.assert_close(slim.termination_probability(torch.zeros(64), x),
                               full.termination_probability(torch.zeros(64), x), atol=2e-3, rtol=0)
    # refitting the export (e.g. the shipped model) keeps it slim: fp16 classifier weights, like the export's
    fit_termination(tmp_path / "slim.pt", tmp_path / "refit.pt", cfg=TerminationFitConfig(steps=5, batch_size=32),
                    progress=False)
    refit = load_checkpoint(tmp_path / "refit.pt")
    assert refit["model"] is None
    assert {v.dtype for v in refit["termination_classifier"]["state_dict"].values()} == {torch.float16}
    assert {v.dtype for v in load_checkpoint(src)["termination_classifier"]["state_dict"].values()} == {torch.float32}
    # or leaves it out: the head decides again
    export_for_inference(src, tmp_path / "head.pt", termination_classifier=False)
    head = load_world_model(tmp_path / "head.pt")
    assert head.termination_classifier is None
    assert load_checkpoint(tmp_path / "head.pt").get("termination_classifier") is None
    logits = torch.linspace(-3, 3, 64)
    torch.testing.assert_close(head.termination_probability(logits, x), full.head_termination_probability(logits))


def test_resumed_and_init_from_training_keep_the_classifier(tiny_dataset_id: str, tmp_path: Path) -> None:
    from diffusion_world.training.train import TrainConfig, train

    def cfg(steps: int, out: str = "run", **kw: object) -> TrainConfig:
        return TrainConfig(dataset_id=tiny_dataset_id, out_dir=str(tmp_path / out), preset="tiny", steps=steps,
                           batch_size=2, seq_len=4, eval_every=1000, progress=False, precision="fp32", **kw)

    path = train(cfg(1))
    # the run directory, as gym.make, play and benchmark take it: its checkpoint.pt gets the classifier
    fit_termination(path.parent, cfg=TerminationFitConfig(steps=5, batch_size=16), progress=False)
    clf = load_checkpoint(path)["termination_classifier"]
    train(cfg(2), resume=True)
    started = train(cfg(3, "started", init_from=str(path)))  # a new run from this one, same pixel env
    # a checkpoint from before datasets recorded their time limit: the same env all the same
    older = load_checkpoint(path)
    older["dataset"]["env_spec"] = {k: v for k, v in older["dataset"]["env_spec"].items() if k != "max_episode_steps"}
    from diffusion_world.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "older.pt", older)
    from_older = train(cfg(3, "from-older", init_from=str(tmp_path / "older.pt")))
    for ckpt, step in ((load_checkpoint(path), 2), (load_checkpoint(started), 3), (load_checkpoint(from_older), 3)):
        assert ckpt["step"] == step
        for name, t in clf["state_dict"].items():
            assert torch.equal(ckpt["termination_classifier"]["state_dict"][name], t)


def test_score_first_steps() -> None:
    from diffusion_world.bench.termination import score_first_steps

    s = score_first_steps([5, 1, None, 9], [6, 6, 6, 8], tolerance=2)
    assert s == {"episodes": 4, "on_time": 0.5, "early": 0.25, "missed": 0.25, "mean_abs_step_error": 7 / 3}


def test_score_sampled() -> None:
    """Expected shares when each step terminates with its probability: by hand, at the 0/1 limits (the threshold
    score), and against Monte Carlo draws."""
    from diffusion_world.bench.termination import score_first_steps, score_sampled

    # real end at step 3, tolerance 0: P(first = 1, 2, 3) = 0.5, 0.25, 0.125 -> early 0.75, on time 0.125
    s = score_sampled([np.array([0.5, 0.5, 0.5])], [3], tolerance=0)
    assert s["early"] == pytest.approx(0.75) and s["on_time"] == pytest.approx(0.125)
    assert s["missed"] == pytest.approx(0.125)
    assert s["mean_abs_step_error"] == pytest.approx((0.5 * 2 + 0.25 * 1) / 0.875)
    hard = [np.array([0, 0, 0, 0, 1.0, 1]), np.array([1.0, 0, 0]), np.zeros(6), np.array([0.0] * 8 + [1])]
    assert score_sampled(hard, [6, 6, 6, 8], 2) == pytest.approx(score_first_steps([5, 1, None, 9], [6, 6, 6, 8], 2))
    rng = np.random.default_rng(0)
    probs = [rng.uniform(0, 0.4, 10) for _ in range(3)]
    real = [4, 7, 10]
    draws = [[_first(rng.uniform(size=10) < p) for _ in range(4000)] for p in probs]
    mc = score_first_steps([d for row in draws for d in row], [r for r in real for _ in range(4000)], 1)
    exact = score_sampled(probs, real, 1)
    for key in ("on_time", "early", "missed"):
        assert exact[key] == pytest.approx(mc[key], abs=0.02)


def _first(hits: np.ndarray) -> int | None:
    return int(np.flatnonzero(hits)[0]) + 1 if hits.any() else None


@pytest.mark.parametrize("bias", [8.0, -8.0])
def test_termination_benchmark(edge_walk_dataset: str, tmp_path: Path, bias: float) -> None:  # noqa: F811
    """A classifier that always (never) fires: every imagined and real-frame episode terminates at the first
    step (none does); the head of the tiny model never fires. Episodes whose real end is within tolerance of
    step 1 count as on time."""
    from diffusion_world.bench.report import render
    from diffusion_world.bench.termination import run_termination

    cache = FrameCache.open(edge_walk_dataset, progress=False)
    src = make_tiny_checkpoint(tmp_path / "wm.pt", cache=cache, imagination={"context_frames": 2,
                                                                             "sampler_steps": 1})
    r = run_termination(str(_with_classifier(str(src), tmp_path / "c.pt", bias)), horizon=6, tolerance=1,
                        progress=False)
    n = r["imagined"]["episodes"]
    assert n >= 10 and r["termination_source"] == "classifier"
    _, val = cache.episode_split(0.2, 0)
    ends = cache.episode_starts[val] + cache.episode_lengths[val] - 1
    lengths = cache.episode_lengths[val][cache.terminations[ends] & (cache.episode_lengths[val] >= 3)]
    steps = np.minimum(lengths - 2, 6)  # imagined steps up to the real terminal frame
    assert n == len(steps)
    if bias > 0:
        for key in ("imagined", "real_frames"):
            assert r[key]["on_time"] == pytest.approx(np.mean(steps <= 2))
            assert r[key]["early"] == pytest.approx(np.mean(steps > 2))
    else:
        assert r["imagined"]["missed"] == r["real_frames"]["missed"] == 1.0
    assert r["imagined_head"]["missed"] == 1.0
    assert "| imagined frames, classifier |" in render("termination", r)


def test_fit_on_imagined_frames(edge_walk_dataset: str, tmp_path: Path) -> None:  # noqa: F811
    """The world model replays the end of every training (validation) episode from its real context; each imagined
    frame carries the real frame's termination label, so every terminated episode contributes exactly one positive,
    its last frame; the report scores the imagined validation rollouts separately."""
    from diffusion_world.training.termination import imagined_frames

    cache = FrameCache.open(edge_walk_dataset, progress=False)
    src = make_tiny_checkpoint(tmp_path / "wm.pt", cache=cache, imagination={"context_frames": 2,
                                                                             "sampler_steps": 1})
    cfg = TerminationFitConfig(steps=20, batch_size=32, imagined_episodes=1000, imagined_horizon=5)
    split = cache.episode_split(0.2, 0)
    out = imagined_frames(src, [cache], [split], cfg, progress=False)
    for name, eps in zip(("train", "val"), split):
        eps = eps[cache.episode_lengths[eps] >= 3]
        ends = cache.episode_starts[eps] + cache.episode_lengths[eps] - 1
        assert len(out[name]["frames"]) == len(out[name]["labels"]) == np.minimum(cache.episode_lengths[eps] - 2,
                                                                                    5).sum()
        assert out[name]["labels"].sum() == cache.terminations[ends].sum() > 0
        assert out[name]["frames"].dtype == np.uint8 and out[name]["frames"].shape[1:] == (16, 16, 3)

    report = fit_termination(src, tmp_path / "out.pt", cfg=cfg, progress=False)
    im = report["imagined"]
    assert im["train_frames"] == len(out["train"]["labels"]) and im["train_terminations"] > 0
    assert report["val"]["imagined rollouts of the validation episodes"]["frames"] == len(out["val"]["labels"])
    assert "imagined frames" in format_report(report)
    with pytest.raises(UserError, match="imagined"):
        fit_termination(src, tmp_path / "bad.pt", cfg=TerminationFitConfig(imagined_episodes=5, imagined_fraction=1.0),
                        progress=False)


def _with_head_bias(src: str, dst: Path, bias: float) -> Path:
    """A copy of ``src`` (no classifier) whose own termination head says ``bias`` (as a logit) for every frame."""
    ckpt = load_checkpoint(src)
    for weights in (w for w in (ckpt["model"], ckpt.get("ema")) if w is not None):
        weights["head_out.weight"][1].zero_()
        weights["head_out.bias"][1] = bias
    save_checkpoint(dst, ckpt)
    return dst


@pytest.mark.parametrize("bias", [8.0, -8.0])
def test_termination_benchmark_of_the_head(edge_walk_dataset: str, tmp_path: Path, bias: float) -> None:  # noqa: F811
    """Without a classifier the head scores imagined and real frames: a head that always (never) fires ends every
    episode at the first step (none)."""
    from diffusion_world.bench.report import render
    from diffusion_world.bench.termination import run_termination

    cache = FrameCache.open(edge_walk_dataset, progress=False)
    src = make_tiny_checkpoint(tmp_path / "wm.pt", cache=cache, imagination={"context_frames": 2,
                                                                             "sampler_steps": 1})
    r = run_termination(str(_with_head_bias(str(src), tmp_path / "h.pt", bias)), horizon=6, tolerance=1,
                        progress=False)
    assert r["termination_source"] == "head" and "imagined_head" not in r
    for key in ("imagined", "real_frames"):
        assert (r[key]["missed"] == 1.0) is (bias < 0)
        assert (r[key]["early"] + r[key]["on_time"] == 1.0) is (bias > 0)
    # a head this sure samples the same terminations as the threshold gives
    for key in ("on_time", "early", "missed"):
        assert r["imagined_sampled"][key] == pytest.approx(r["imagined"][key], abs=5e-3)
        # ... and every threshold of the sweep ends the episodes where 0.5 does
        assert all(row[key] == r["imagined"][key] for row in r["threshold_sweep"])
    assert [row["threshold"] for row in r["threshold_sweep"]] == [0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
    assert "| real frames, head |" in render("termination", r)
    assert "`termination_threshold=0.2`" in render("termination", r)
    assert "sampled" in render("termination", r)


def test_real_frame_head_matches_the_training_forward(edge_walk_dataset: str, tmp_path: Path) -> None:  # noqa: F811
    """The benchmark's teacher-forced head on real frames (one causal pass through the inference caches) equals
    the head of the training-mode forward on the same clean frames."""
    from diffusion_world.bench.termination import real_frame_head_probability

    cache = FrameCache.open(edge_walk_dataset, progress=False)
    wm = load_world_model(make_tiny_checkpoint(tmp_path / "wm.pt", cache=cache))
    with torch.no_grad():  # a head whose output varies with the frame (the tiny model's is nearly constant)
        wm.model.head_out.weight.normal_(0, 3.0)
    idx = np.array([0, 5])[:, None] + np.arange(7)
    fr = torch.from_numpy(np.asarray(cache.frames[idx]))
    act, has = torch.from_numpy(cache.prev_actions[idx]), torch.from_numpy(cache.has_prev_action[idx])
    got = real_frame_head_probability(wm, fr, act, has, 0.002)
    x = frames_to_x(fr)
    sig = torch.full(x.shape[:2], 0.002)
    last = torch.tensor([6])
    with torch.no_grad():
        out = wm.model(x[:, last], sig[:, last], x, sig, act, has, noisy_index=last, window=7)
    want = wm.head_termination_probability(out.termination_logit)
    assert got.shape == (2, 7) and want.std() > 0.01
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
