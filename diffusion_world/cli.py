"""The ``diffusion-world`` command line.

Each subcommand is an ``_add_<name>`` function that builds its parser and returns the handler that calls the
library. User errors (:class:`UserError`) print one line and exit with status 2; anything else is a bug and
shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from diffusion_world.errors import UserError

Handler = Callable[[argparse.Namespace], int | None]


def _add_collect(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("collect", help="collect pixel trajectories of a Gymnasium env into a Minari dataset")
    p.add_argument("--card", help="env card (TOML) whose [env]/[collect] settings are defaults for the flags")
    p.add_argument("--env", dest="env_id", help="Gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--dataset-id", help="Minari dataset id NAMESPACE/NAME-vN")
    p.add_argument("--steps", type=int, help="number of env steps to collect")
    p.add_argument("--size", type=int, help="frame size in pixels (square), default 64")
    p.add_argument("--frame-skip", type=int, help="repeat each action K times, default 1")
    p.add_argument("--policy", help="'random' or a path to an SB3 model (.zip)")
    p.add_argument("--epsilon", type=float, help="probability of a random action instead of the policy's")
    p.add_argument("--seed", type=int, help="base seed; episode i resets with seed+i")
    p.add_argument("--jpeg", action="store_true", help="let Minari JPEG-encode frames (lossy; default: lossless gzip)")
    p.add_argument("--chunk-steps", type=int, help="steps held in memory before writing them, default 5000")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")

    def run(args: argparse.Namespace) -> int:
        from diffusion_world.data.collect import collect_from_args

        collect_from_args(args)
        return 0

    return run


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], Handler]] = [_add_collect]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(prog="diffusion-world", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}
    for add in SUBCOMMANDS:
        before = set(sub.choices)
        handler = add(sub)
        (name,) = set(sub.choices) - before
        handlers[name] = handler
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(handlers[args.command](args) or 0)
    except UserError as e:
        print(f"diffusion-world {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffusion-world {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
