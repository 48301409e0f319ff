"""Exceptions. ``UserError`` is bad input a user can fix: the CLI prints it on one line, without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class DiffusionWorldError(Exception):
    """Base class of every exception raised on purpose by diffusion_world."""


class UserError(DiffusionWorldError, ValueError):
    """Bad input (unknown env id, invalid dataset id, out-of-range setting, ...)."""


def report_user_errors(prog: str, run: Callable[[], int | None]) -> int:
    """The exit status of ``run()`` (None: 0); a :class:`UserError` prints ``<prog>: error: <message>`` on stderr,
    one line without a traceback, and gives 2 (argparse's status for bad arguments). How the CLI and the example
    scripts end.

    Example:
        >>> if __name__ == "__main__":  # doctest: +SKIP
        ...     sys.exit(report_user_errors("my_script.py", main))
    """
    try:
        return int(run() or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
