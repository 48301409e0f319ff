"""Env cards: the shipped cards load, and malformed cards are one-line UserErrors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from diffusion_world.cards import load_card
from diffusion_world.errors import UserError

ENVS_DIR = Path(__file__).resolve().parents[1] / "envs"


@pytest.mark.parametrize("name", ["cartpole", "lunarlander", "breakout"])
def test_shipped_cards_load(name: str) -> None:
    card = load_card(ENVS_DIR / f"{name}.toml")
    assert card.path == ENVS_DIR / f"{name}.toml"
    assert card.env["size"] == 64 and card.collect["dataset_id"].startswith("diffusion_world/")
    assert card.model["preset"] == "small" and card.imagination["sampler_steps"] == 3
    assert {"steps", "batch_size", "seq_len"} <= set(card.train)
    assert {"horizon", "context_frames"} <= set(card.imagination)


def test_cartpole_card_values() -> None:
    card = load_card(ENVS_DIR / "cartpole.toml")
    assert card.env == {"id": "CartPole-v1", "size": 64, "frame_skip": 1, "env_kwargs": {}}
    assert card.collect["dataset_id"] == "diffusion_world/cartpole-pixels-v0"
    assert card.collect["policy"] == str(ENVS_DIR / "experts" / "cartpole_ppo_state.zip")  # relative to the card
    assert Path(card.collect["policy"]).is_file() and card.collect["epsilon"] == 0.25
    assert card.train["seq_len"] == 16 and card.train["batch_size"] == 8
    assert card.imagination == {"sampler_steps": 3, "horizon": 500, "context_frames": 4}


def test_cards_build_their_envs() -> None:
    pytest.importorskip("Box2D")
    pytest.importorskip("ale_py")
    from diffusion_world.data.pixel_env import make_pixel_env

    for name in ("cartpole", "lunarlander", "breakout"):
        env_cfg = load_card(ENVS_DIR / f"{name}.toml").env
        env = make_pixel_env(env_cfg["id"], size=8, frame_skip=env_cfg["frame_skip"], **env_cfg["env_kwargs"])
        assert env.reset(seed=0)[0].shape == (8, 8, 3)
        env.close()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "card.toml"
    path.write_text(text)
    return path


def test_defaults_and_pass_through(tmp_path: Path) -> None:
    card = load_card(_write(tmp_path, '[env]\nid = "Pendulum-v1"\n[train]\nanything = [1, 2]\n'))
    assert card.env == {"id": "Pendulum-v1", "size": 64, "frame_skip": 1, "env_kwargs": {}}
    assert card.collect == {} and card.train == {"anything": [1, 2]} and card.model == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[env]\nid = "CartPole-v1"\nsze = 64\n', r"unknown key\(s\) sze"),
        (
            '[env]\nid = "CartPole-v1"\n[collect]\ndataset_id = "a/b-v0"\nsteps = 5\nepsilonn = 0.1\n',
            r"unknown key\(s\) epsilonn",
        ),
        ("[env]\nsize = 64\n", "missing required key 'id'"),
        ("[collect]\nsteps = 5\n", r"missing \[env\] section"),
        ('[env]\nid = "CartPole-v1"\nsize = "64"\n', "size must be int"),
        ('[env]\nid = "CartPole-v1"\nsize = true\n', "size must be int"),
        ('[env]\nid = "CartPole-v1"\nsize = 4\n', "size must be >= 8"),
        (
            '[env]\nid = "CartPole-v1"\n[collect]\ndataset_id = "a/b-v0"\nsteps = 5\nepsilon = 2.0\n',
            "epsilon",
        ),
        ('[env]\nid = "CartPole-v1"\n[collect]\nsteps = 0\n', "steps must be >= 1"),
        ('[env]\nid = "CartPole-v1"\n[trian]\nsteps = 5\n', r"unknown section\(s\) trian"),
        ('[env]\nid = "CartPole-v1"\nmodel = 3\n', r"unknown key\(s\) model"),
        ("[env\n", "not valid TOML"),
        ('horizon = 40\n[env]\nid = "CartPole-v1"\n', r"key\(s\) horizon outside any section: put them under"),
        ('[env]\nid = "CartPole-v1"\n[imagination]\nsampler_step = 5\n',
         r"\[imagination\]: unknown key\(s\) sampler_step"),
        ('[env]\nid = "CartPole-v1"\n[imagination]\nhorizon = 5.5\n', "horizon must be an integer >= 1"),
        ('[env]\nid = "CartPole-v1"\n[imagination]\nsampler_steps = true\n', "sampler_steps must be an integer"),
        ('[env]\nid = "CartPole-v1"\n[imagination]\nsampler_order = 3\n', "sampler_order must be 1"),
        ('[env]\nid = "CartPole-v1"\n[imagination]\nhistory_guidance = -1\n', "history_guidance must be a number"),
        ('[env]\nid = "CartPole-v1"\n[imagination]\nsigma_ctx = nan\n', "sigma_ctx must be a number > 0"),
    ],
)
def test_bad_cards(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        load_card(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_collect_flags_supply_the_keys_a_card_leaves_out(tmp_path: Path, minari_root: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import minari

    from diffusion_world.cli import main

    card = _write(tmp_path, '[env]\nid = "CartPole-v1"\nsize = 16\n[collect]\nseed = 7\n')
    assert load_card(card).collect == {"policy": "random", "epsilon": 0.0, "seed": 7, "lossless": True,
                                       "chunk_steps": 5000, "post_terminal_steps": 0}
    assert main(["collect", "--card", str(card), "--dataset-id", "tt/card-v0", "--steps", "20", "--quiet"]) == 0
    dataset = minari.load_dataset("tt/card-v0")
    (first,) = dataset.storage.get_episode_metadata([0])
    assert dataset.total_steps == 20 and first["seed"] == 7  # the card's seed
    for flags, missing in ((["--steps", "20"], "--dataset-id"), (["--dataset-id", "tt/other-v0"], "--steps")):
        assert main(["collect", "--card", str(card), *flags, "--quiet"]) == 2
        assert f"{missing} is required" in capsys.readouterr().err


def test_missing_card(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="card not found"):
        load_card(tmp_path / "nope.toml")


def test_imagination_keys_are_those_the_code_reads() -> None:
    """Every key IMAGINATION_KEYS accepts is read somewhere in the package (a key nobody reads would be accepted
    and ignored, as a typo was before the check), and every key read off an imagination dict is accepted."""
    import re

    from diffusion_world.cards import IMAGINATION_KEYS

    package = Path(__file__).resolve().parents[1] / "diffusion_world"
    source = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "cards.py")
    read = set(re.findall(r"(?:imagination|defaults)\.get\(\"(\w+)\"", source))
    assert read == set(IMAGINATION_KEYS)


def test_imagination_values_pass_through_as_given(tmp_path: Path) -> None:
    card = load_card(_write(tmp_path, '[env]\nid = "CartPole-v1"\n[imagination]\nsampler_steps = 5\n'
                                      'history_guidance = 2\nsigma_ctx = 0.01\n'))
    assert card.imagination == {"sampler_steps": 5, "history_guidance": 2, "sigma_ctx": 0.01}


def test_a_checkpoint_with_an_unknown_imagination_key_loads_with_a_warning(tmp_path: Path) -> None:
    """Checkpoints written before [imagination] was checked may hold a typo: loading says it is ignored."""
    import warnings

    from worldmodel_fixtures import make_tiny_checkpoint

    from diffusion_world.checkpoint import load_world_model

    path = make_tiny_checkpoint(tmp_path / "typo.pt", imagination={"sampler_step": 5, "horizon": 7})
    with pytest.warns(UserWarning, match=r"unknown key\(s\) sampler_step, which are ignored"):
        wm = load_world_model(path)
    assert wm.imagination["horizon"] == 7 and wm.sampler_config().num_steps == 3
    good = make_tiny_checkpoint(tmp_path / "good.pt", imagination={"sampler_steps": 5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_world_model(good).sampler_config().num_steps == 5


def test_card_env_differences_name_what_the_dataset_was_recorded_with() -> None:
    """A card's [env] against a dataset's env spec: the pixel env's (collect) and an env's own (Minari's
    DataCollector), whose kwargs sit in the spec itself; a kwarg the dataset leaves out counts as the one its id
    registers, and is not compared where neither says."""
    from diffusion_world.cards import card_env_differences
    from diffusion_world.data.pixel_env import PIXEL_ENV_ID

    lander = load_card(ENVS_DIR / "lunarlander.toml").env  # frame_skip 2, continuous = false
    pixel = {"id": PIXEL_ENV_ID, "env_id": "LunarLander-v3", "size": 64, "frame_skip": 2,
             "env_kwargs": {"continuous": False}}
    assert card_env_differences(lander, pixel) == []
    both = ["frame_skip 2 in the card vs 1 in the dataset",
            "env_kwargs continuous=False in the card vs True in the dataset"]
    assert card_env_differences(lander, {**pixel, "frame_skip": 1, "env_kwargs": {"continuous": True}}) == both
    own = {"id": "LunarLander-v3", "continuous": True, "render_mode": "rgb_array", "max_episode_steps": 1000}
    assert card_env_differences(lander, own) == both
    assert card_env_differences({**lander, "frame_skip": 1}, {"id": "LunarLander-v3"}) == []  # not recorded
    assert card_env_differences({**lander, "frame_skip": 1}, {"id": "LunarLanderContinuous-v3"}) == [
        "env 'LunarLander-v3' in the card vs 'LunarLanderContinuous-v3' in the dataset"]
    # a module-qualified id names the same env; a recorded frame-skipping wrapper leaves the skip unknown
    assert card_env_differences({**lander, "id": "gymnasium.envs.box2d:LunarLander-v3"},
                                {"id": "LunarLander-v3", "continuous": False}) == [both[0]]
    skipping = {"entry_point": "gymnasium.wrappers.stateful_observation:MaxAndSkipObservation", "kwargs": {"skip": 2}}
    assert card_env_differences(lander, {"id": "LunarLander-v3", "additional_wrappers": [skipping]}) == []
    cartpole = load_card(ENVS_DIR / "cartpole.toml").env
    assert card_env_differences(cartpole, {"id": PIXEL_ENV_ID, "env_id": "CartPole-v1", "frame_skip": 1}) == []
    assert card_env_differences(cartpole, None) == []


def test_train_warns_of_a_card_for_another_env(tiny_dataset_id: str, tmp_path: Path,
                                               one_torch_thread: None) -> None:
    """The card's settings were chosen for its env: trained on a dataset of another (here frame skip 2 against the
    dataset's 1), the run says so, and an imagined horizon past the dataset's time limit (CartPole's 500) too."""
    from diffusion_world.cli import main

    card = _write(tmp_path, '[env]\nid = "CartPole-v1"\nframe_skip = 2\n[model]\npreset = "tiny"\n'
                            '[imagination]\nhorizon = 900\n')
    args = ["train", "--card", str(card), "--dataset-id", tiny_dataset_id, "--steps", "1", "--batch-size", "1",
            "--seq-len", "4", "--precision", "fp32", "--quiet"]
    with pytest.warns(UserWarning) as record:
        assert main([*args, "--out", str(tmp_path / "a")]) == 0
    messages = [str(w.message) for w in record]
    assert any("is not for the env that" in m and "frame_skip 2 in the card vs 1 in the dataset" in m
               for m in messages)
    assert any("horizon, 900 steps ([imagination] horizon), is longer than the time limit" in m and "500 steps" in m
               for m in messages)
    card.write_text('[env]\nid = "CartPole-v1"\n[model]\npreset = "tiny"\n[imagination]\nhorizon = 500\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert not [w for w in caught if "is not for the env" in str(w.message) or "outlast" in str(w.message)]
