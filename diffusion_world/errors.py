"""Exceptions. ``UserError`` is bad input a user can fix: the CLI prints it on one line, without a traceback."""


class DiffusionWorldError(Exception):
    """Base class of every exception raised on purpose by diffusion_world."""


class UserError(DiffusionWorldError, ValueError):
    """Bad input (unknown env id, invalid dataset id, out-of-range setting, ...)."""
