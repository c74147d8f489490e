"""Repair of a damaged feature set, by the next `feat extract` (which holds the cache lock).

Each damaged file of the set (the complete features/<name>.h5, a committed part) is moved aside as
`<file>.damaged-<time>`, never deleted. The rows of its blocks that still verify are salvaged into a new
committed part, so that the extraction re-encodes only the rows that were lost and finalizes as usual. A
truncated file is first read from a copy zero-extended to the length its superblock records: the blocks
that lay in the lost tail fail their checksums, the others are kept.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from feat.cache.integrity import READ_ERRORS, DamagedFile, Reader, opened
from feat.cache.store import FeatureCache, FeatureRows

DAMAGED = ".damaged-"


@dataclass
class Repair:
    """What a repair did to one feature set."""

    name: str
    moved: list[tuple[Path, str]] = field(default_factory=list)  # (new path, what was wrong)
    salvaged: int = 0  # rows kept from the damaged files
    lost: set[str] = field(default_factory=set)  # ids of rows that were lost (as far as they could be listed)
    unlisted: int = 0  # damaged files whose rows could not even be listed

    def __bool__(self) -> bool:
        return bool(self.moved)

    def notes(self) -> list[str]:
        lines = [f"{self.name}: damaged file {path.name[:path.name.index(DAMAGED)]} ({why}) moved aside as "
                 f"{path}" for path, why in self.moved]
        if self.unlisted < len(self.moved):
            lines.append(f"{self.name}: repair kept {self.salvaged} verified row(s), {len(self.lost)} row(s) lost "
                         "are re-encoded")
        if self.unlisted:
            lines.append(f"{self.name}: {self.unlisted} damaged file(s) could not be read at all: the rows they "
                         "held are re-encoded")
        return lines


def damaged_files(cache: FeatureCache, name: str, own_only: bool = False) -> list[tuple[Path, DamagedFile]]:
    """The files of a feature set that do not verify. `own_only`: a shard's own parts (it repairs only those)."""
    if own_only:
        paths = [p for p in cache._part_files(name) if p.stem.endswith(f"-{cache.shard.tag}")]
    else:
        paths = [cache.feature_path(name), *cache._part_files(name)]
    found = []
    for path in paths:
        if not path.exists():
            continue
        try:
            with opened(path) as r:
                r.verify_all()
                json.loads(r.attrs()["fingerprint"])
        except DamagedFile as exc:
            found.append((path, exc))
        except (KeyError, ValueError) as exc:
            found.append((path, DamagedFile(path, f"its fingerprint is unreadable ({exc})")))
    return found


def repair(cache: FeatureCache, name: str) -> Repair:
    """Set every damaged file of `name` aside and commit what verifies of it as a new part."""
    report = Repair(name)
    for path, exc in damaged_files(cache, name, own_only=cache.shard is not None):
        kept = salvage(path)
        aside = path.with_name(f"{path.name}{DAMAGED}{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(aside)
        report.moved.append((aside, exc.detail))
        if kept is None:
            report.unlisted += 1
            continue
        rows, good, fingerprint = kept
        report.lost |= set(rows.ids[~good].tolist())
        if good.any():
            cache.commit_part(name, rows.take(np.flatnonzero(good)), fingerprint)
            report.salvaged += int(good.sum())
    return report


def salvage(path: Path) -> tuple[FeatureRows, np.ndarray, dict] | None:
    """(every row the file lists, which of them verify, its fingerprint), or None when not even its ids,
    hashes, flags and fingerprint can be read."""
    try:
        with opened(path) as r:
            return _salvage(r)
    except DamagedFile:
        pass
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        padded = Path(folder) / path.name
        if not _zero_extended_copy(path, padded):
            return None
        return _in_child(_salvage_file, padded, timeout=3 + padded.stat().st_size / 2**24)


def _salvage_file(path: Path) -> tuple[FeatureRows, np.ndarray, dict] | None:
    try:
        with opened(path) as r:
            return _salvage(r)
    except DamagedFile:
        return None


def _in_child(function, path: Path, timeout: float):
    """`function(path)` in a forked process: HDF5 can loop forever on the zeroed tail of a padded copy (seen
    on variable-length strings whose heap lay in it), and a repair must end. None when it does not finish."""
    import multiprocessing
    import pickle

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        try:
            send.send_bytes(pickle.dumps(function(path)))
        except BaseException:
            send.send_bytes(pickle.dumps(None))

    process = context.Process(target=child, daemon=True)
    process.start()
    send.close()
    try:
        return pickle.loads(receive.recv_bytes()) if receive.poll(timeout) else None
    except (EOFError, OSError, pickle.UnpicklingError):
        return None
    finally:
        process.kill()
        process.join()
        receive.close()


def _salvage(r: Reader) -> tuple[FeatureRows, np.ndarray, dict] | None:
    if not r.sealed:
        return None  # no checksums: nothing can be told good
    try:
        node = r.node("X")
        if isinstance(node, h5py.Group):
            return None  # a sparse matrix verifies whole or not at all; TF-IDF rows are cheap to redo
        fingerprint = json.loads(r.attrs()["fingerprint"])
        ids, hashes, reasons = r.strings("ids"), r.strings("content_hash"), r.strings("reason")
        valid = r.array("valid").astype(bool)
    except (DamagedFile, *READ_ERRORS, json.JSONDecodeError):
        return None
    if len({len(ids), len(hashes), len(reasons), len(valid), node.shape[0]}) > 1:
        return None
    good = r.good_rows(node)
    matrix = np.zeros(node.shape, dtype=node.dtype)
    for start, stop in _runs(good):
        matrix[start:stop] = node[start:stop]
    return FeatureRows(ids, hashes, valid, reasons, matrix), good, fingerprint


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _zero_extended_copy(path: Path, out: Path) -> bool:
    """Copy a truncated HDF5 file, zero-extended to the end-of-file its superblock (version 2 or 3, which
    feat writes) records. False when the superblock itself is unreadable or the file is not shorter."""
    with open(path, "rb") as handle:
        head = handle.read(48)
    if len(head) < 48 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return False
    (end,) = struct.unpack_from("<Q", head, 28)
    size = path.stat().st_size
    if not size < end <= 64 * size + 2**30:
        return False
    shutil.copyfile(path, out)
    with open(out, "r+b") as handle:
        handle.truncate(end)
    return True
