"""Errors that the CLI turns into one clear line and an exit code."""


class FeatError(Exception):
    """A failure feat can explain in one line (exit code 1)."""

    exit_code = 1


class InputError(FeatError):
    """The user's input is wrong: a missing column, a bad path, a stale cache (exit code 2)."""

    exit_code = 2


class StorageError(InputError):
    """The disk refused a write: full, read-only, or not writable by this user (exit code 2). The file being
    written is dropped; what was committed before stays, and a run with space resumes from it."""

    @classmethod
    def of(cls, path, exc: OSError, elsewhere: str = "another folder") -> "StorageError":
        import errno
        import os

        # HDF5's own text spans lines and names the temporary file: the errno says it in a few words.
        reason = os.strerror(exc.errno) if exc.errno else (str(exc).splitlines() or ["unknown error"])[0]
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "free some space and run again: what was committed is kept"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            hint = f"a read-only folder? use {elsewhere}"
        else:
            hint = ""
        return cls(f"could not write {path}: {reason}" + (f" ({hint})" if hint else ""))
