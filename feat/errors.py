"""Errors that the CLI turns into one clear line and an exit code."""


class FeatError(Exception):
    """A failure feat can explain in one line (exit code 1)."""

    exit_code = 1


class InputError(FeatError):
    """The user's input is wrong: a missing column, a bad path, a stale cache (exit code 2)."""

    exit_code = 2
