"""Exceptions. ``UserError`` is bad input a user can fix: the CLI prints it on one line, without a traceback."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class DiffusionWorldError(Exception):
    """Base class of every exception raised on purpose by diffusion_world."""


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, or SIGTERM from a scheduler) that stops a run as Ctrl-C does; ``signum`` says which, so
    that the command exits 128 + signum as the signal's default action would (130, or 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


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


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the directory ``path`` (and its parents) and check that files can be written in it, before a long
    run whose results would otherwise be lost at the end; a :class:`UserError` naming ``what`` and the reason."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except FileExistsError as e:
        raise UserError(f"{what} {str(path)!r} is a file, not a directory") from e
    except OSError as e:
        raise UserError(f"cannot write {what} {str(path)!r}: {e.strerror or e}") from e
    return path
