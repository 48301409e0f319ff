"""Env cards: one TOML file per supported real environment (``envs/*.toml``).

A card holds everything the pipeline needs to know about one environment: ``[env]`` (the real env id and its pixel
settings), ``[collect]`` (dataset id, size, policy), the ``[model]``, ``[train]`` and ``[imagination]`` settings
that later stages read, and ``[rl]`` (PPO settings of ``benchmark rl`` for this env). A ``[collect] policy`` path
is relative to the card's folder. ``[env]`` and ``[collect]`` are validated here; the other sections are passed
through as plain dicts for their owners to validate. Cards are data: CLI flags given next to ``--card`` override
them, and supply the ``[collect]`` keys a card leaves out (``collect --card C --dataset-id me/x-v0 --steps 500``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusion_world.errors import UserError

# key -> (accepted types, default). A default of None means required; OPTIONAL, left out unless given.
OPTIONAL: Any = object()
ENV_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "id": ((str,), None),
    "size": ((int,), 64),
    "frame_skip": ((int,), 1),
    "env_kwargs": ((dict,), {}),
    # [{entry_point = "module:Class", kwargs = {...}}, ...]: wrap the env before it is rendered (collect)
    "wrappers": ((list,), OPTIONAL),
}
COLLECT_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    # the command's flags give them where the card does not (its dataset id, its budget)
    "dataset_id": ((str,), OPTIONAL),
    "steps": ((int,), OPTIONAL),
    "policy": ((str,), "random"),
    "epsilon": ((int, float), 0.0),
    "seed": ((int,), 0),
    "lossless": ((bool,), True),
    "chunk_steps": ((int,), 5000),
    "post_terminal_steps": ((int,), 0),
}
PASS_THROUGH_SECTIONS = ("model", "train", "imagination", "rl")
# [imagination]: the imagined envs' defaults, stored in the checkpoint as given (no defaults filled in: each
# consumer has its own). key -> (description of the accepted values, check)
IMAGINATION_KEYS: dict[str, tuple[str, Any]] = {
    "sampler_steps": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "sampler_order": ("1 (Euler) or 2 (Heun)", lambda v: _is_int(v) and v in (1, 2)),
    "history_guidance": ("a number >= 0 (1 = off)", lambda v: _is_number(v) and v >= 0),
    "history_sigma": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "sigma_ctx": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "context_frames": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "horizon": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
}

# [rl]: PPO settings of `benchmark rl` that replace its CartPole-tuned ones (diffusion_world.bench.rl.PPO_SETTINGS);
# learning_rate is where the linear decay to 0 starts
RL_KEYS: dict[str, tuple[str, Any]] = {
    "n_steps": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "batch_size": ("an integer >= 2", lambda v: _is_int(v) and v >= 2),
    "n_epochs": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "gamma": ("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1),
    "gae_lambda": ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "ent_coef": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "vf_coef": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "clip_range": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "max_grad_norm": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "learning_rate": ("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def check_imagination(where: str, section: dict[str, Any], keys: dict[str, tuple[str, Any]] = IMAGINATION_KEYS
                      ) -> None:
    """A clear :class:`UserError` for an unknown ``[imagination]`` key (a typo would otherwise be stored and
    ignored) or a value of the wrong kind (``keys``: another section's, e.g. ``RL_KEYS``)."""
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(keys)})")
    for key, value in section.items():
        what, ok = keys[key]
        if not ok(value):
            raise UserError(f"{where}: {key} must be {what}, got {value!r}")


@dataclass
class Card:
    """A parsed env card; each section is a plain dict (``env`` and ``collect`` with defaults filled in;
    ``collect`` lacks ``dataset_id`` / ``steps`` where the card does not set them)."""

    env: dict[str, Any]
    collect: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    imagination: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _validate_section(
    where: str, section: Any, keys: dict[str, tuple[tuple[type, ...], Any]]
) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise UserError(f"{where} must be a table")
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(keys)})")
    out: dict[str, Any] = {}
    for key, (types, default) in keys.items():
        if key not in section:
            if default is None:
                raise UserError(f"{where}: missing required key {key!r}")
            if default is not OPTIONAL:
                out[key] = default
            continue
        value = section[key]
        # bool is an int in Python: reject `size = true` unless the key is a bool.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise UserError(f"{where}: {key} must be {expected}, got {value!r}")
        out[key] = value
    return out


def load_card(path: str | os.PathLike) -> Card:
    """Read and validate an env card.

    Example:
        >>> card = load_card("envs/cartpole.toml")
        >>> card.env["id"], card.collect["dataset_id"]
        ('CartPole-v1', 'diffusion_world/cartpole-pixels-v0')
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as e:
        raise UserError(f"card not found: {str(path)!r}") from e
    except OSError as e:  # a directory, unreadable
        raise UserError(f"cannot read card {str(path)!r}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"card {str(path)!r} is not valid TOML: {e}") from e
    allowed = {"env", "collect", *PASS_THROUGH_SECTIONS}
    loose = sorted(k for k, v in data.items() if not isinstance(v, dict))
    if loose:  # TOML puts keys written before the first [section] at the top level
        raise UserError(f"card {str(path)!r}: key(s) {', '.join(loose)} outside any section: put them under one of "
                        f"[{'], ['.join(sorted(allowed))}]")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(
            f"card {str(path)!r}: unknown section(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})"
        )
    if "env" not in data:
        raise UserError(f"card {str(path)!r}: missing [env] section")
    env = _validate_section(f"card {str(path)!r} [env]", data["env"], ENV_KEYS)
    # [collect] is optional: a card can describe an env whose data comes from elsewhere.
    collect: dict[str, Any] = {}
    if "collect" in data:
        collect = _validate_section(f"card {str(path)!r} [collect]", data["collect"], COLLECT_KEYS)
    if env["size"] < 8 or env["frame_skip"] < 1:
        raise UserError(f"card {str(path)!r} [env]: size must be >= 8 and frame_skip >= 1")
    if collect and not (collect.get("steps", 1) >= 1 and 0.0 <= collect["epsilon"] <= 1.0):
        raise UserError(f"card {str(path)!r} [collect]: steps must be >= 1 and epsilon in [0, 1]")
    if collect and collect["policy"] != "random" and not Path(collect["policy"]).is_absolute():
        # A policy file named by a card lives next to it (e.g. envs/experts/...), wherever the command runs.
        collect["policy"] = str(path.parent / collect["policy"])
    sections: dict[str, dict[str, Any]] = {}
    for name in PASS_THROUGH_SECTIONS:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise UserError(f"card {str(path)!r}: [{name}] must be a table")
        sections[name] = section
    check_imagination(f"card {str(path)!r} [imagination]", sections["imagination"])
    check_imagination(f"card {str(path)!r} [rl]", sections["rl"], RL_KEYS)
    return Card(env=env, collect=collect, path=path, **sections)


# keys of a dataset's env spec (as the frame cache keeps it) that are not the env's own kwargs
_SPEC_KEYS = frozenset({"id", "entry_point", "max_episode_steps", "additional_wrappers"})


def card_env_differences(env: dict[str, Any], env_spec: dict[str, Any] | None) -> list[str]:
    """How a card's ``[env]`` differs from the env a dataset was recorded in (its env spec as the frame cache keeps
    it): the env id, the frame skip and each kwarg the card's ``env_kwargs`` sets (where the dataset records no
    value for it, the value its env id registers; unknown where neither says). Empty where they agree, or where
    the dataset records no env."""
    from diffusion_world.data.pixel_env import PIXEL_ENV_ID, bare_env_id, recorded_env_id, registered_spec

    if not env_spec:
        return []
    recorded = recorded_env_id(env_spec)
    if bare_env_id(recorded) != bare_env_id(env["id"]):
        return [f"env {env['id']!r} in the card vs {recorded!r} in the dataset"]
    pixel = env_spec.get("id") == PIXEL_ENV_ID
    differences = []
    # a dataset of the env's own observations skips frames only through a recorded wrapper, by its own count
    skipping = any(name in str(w.get("entry_point", "")) for w in env_spec.get("additional_wrappers") or ()
                   for name in ("Skip", "AtariPreprocessing"))
    skip = env_spec.get("frame_skip", 1) if pixel else None if skipping else 1
    if skip is not None and skip != env.get("frame_skip", 1):
        differences.append(f"frame_skip {env.get('frame_skip', 1)} in the card vs {skip} in the dataset")
    kwargs = dict(env_spec.get("env_kwargs") or {}) if pixel else {
        k: v for k, v in env_spec.items() if k not in _SPEC_KEYS}
    try:
        registered = dict(registered_spec(env["id"]).kwargs)
    except Exception:  # an env not installed or not registered here: only what the dataset records counts
        registered = {}
    unset = object()
    for key, value in sorted((env.get("env_kwargs") or {}).items()):
        other = kwargs.get(key, registered.get(key, unset))
        if other is not unset and other != value:
            differences.append(f"env_kwargs {key}={value!r} in the card vs {other!r} in the dataset")
    return differences
