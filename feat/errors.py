"""Errors that the CLI turns into one clear line and an exit code."""

import errno
import os
import re


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
    def of(cls, path, exc: BaseException, elsewhere: str = "another folder") -> "StorageError | None":
        """The error for a failed write of `path`, or None when `exc` is no refusal by the disk."""
        code = None if isinstance(exc, FeatError) else os_errno(exc)
        if code not in DISK_REFUSALS:
            return None
        if code in (errno.ENOSPC, errno.EDQUOT):
            hint = "free some space and run again: what was committed is kept"
        else:
            hint = f"a read-only folder? use {elsewhere}"
        # HDF5's own text spans lines and names the temporary file: the errno says it in a few words.
        return cls(f"could not write {path}: {os.strerror(code)} ({hint})")


DISK_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def os_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one a library quotes in its text: h5py raises a failed flush as
    RuntimeError ("errno = 28"), safetensors as SafetensorError ("os error 28")."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = re.search(r"(?:errno =|os error) (\d+)", str(exc))
    return int(found[1]) if found else None
