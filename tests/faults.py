"""Real faults for the tests: a small tmpfs filled to a chosen level, a read-only mount, a process without the
capabilities that let root ignore permissions. Each skips the test, saying why, where the machine refuses
the mount or the capability drop (CI runs as root on a machine that permits both)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, TESTS_DIR

PAGE = 4096
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH let root write and search any folder, CAP_FOWNER chmod it back.
WITHOUT_ROOT_OVERRIDES = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def _root_command(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"{what} needs root with CAP_SYS_ADMIN; this machine refused `{' '.join(args)}`: "
                    f"{done.stderr.strip() or done.returncode}")


class Mounts:
    """Mounts made by a test, undone at its end (lazily: a failed assertion may leave a file open)."""

    def __init__(self):
        self.mounted: list[Path] = []

    def tmpfs(self, folder: Path, size: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        _root_command(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], "a real full disk")
        self.mounted.append(folder)
        return folder

    def grow(self, folder: Path, size: int) -> None:
        """Enlarge a tmpfs in place (what a user does by freeing space)."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)
        (folder / "filler").unlink(missing_ok=True)

    def read_only(self, folder: Path) -> Path:
        """`folder` itself, read-only from now on (a bind mount onto itself, remounted ro)."""
        _root_command(["mount", "--bind", str(folder), str(folder)], "a read-only mount")
        self.mounted.append(folder)
        _root_command(["mount", "-o", "remount,bind,ro", str(folder)], "a read-only mount")
        return folder

    def undo(self) -> None:
        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def leave_free(mount: Path, free: int) -> int:
    """Fill the tmpfs at `mount` until about `free` bytes (whole pages) are left; returns what is left."""
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    stat = os.statvfs(mount)
    available = stat.f_bavail * stat.f_frsize
    take = available - (free // PAGE) * PAGE
    assert take >= 0, f"the tmpfs has {available} bytes, fewer than the {free} to leave free"
    if take:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, take)  # real pages: a sparse file would take no space
        finally:
            os.close(fd)
    stat = os.statvfs(mount)
    return stat.f_bavail * stat.f_frsize


def pages(path: Path) -> int:
    """Bytes a file takes on a tmpfs."""
    return -(-path.stat().st_size // PAGE) * PAGE


def feat_process(args: list, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    """`feat ARGS` in a child process with the test encoders (a crash must not take pytest with it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO), os.environ.get("PYTHONPATH", "")]))
    for key in ("FEAT_TEST_KILL_IN", "FEAT_TEST_BATCH_GATE", "FEAT_TEST_ENCODE_LOG", "FEAT_TEST_BATCH_DELAY"):
        env.pop(key, None)
    return subprocess.run([*prefix, sys.executable, "-c", "import helpers; helpers.main()", *map(str, args)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


PROGRESS = re.compile(r"^\S+: \d+/\d+ \w+ \(\d+%\)")  # "minilm: 32/742 rows (4%), 3.2 rows/s, ..."


def assert_clean_refusal(done: subprocess.CompletedProcess, reason: str, progress_only: bool = True) -> str:
    """Exit 2 and the error in one line naming `reason`, last; no traceback, no crash; returns the line.
    Before it, only progress lines (printed every 10 s off a terminal, so their number depends on the
    machine's speed), unless `progress_only` is False (commands that report their plan first)."""
    output = (done.stdout + done.stderr).strip()
    lines = output.splitlines()
    assert done.returncode == 2, f"exit {done.returncode} (139 or -11: a segfault)\n{output}"
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], output
    assert not progress_only or all(PROGRESS.match(line) for line in lines[:-1]), output
    assert reason in lines[-1], output
    return lines[-1]
