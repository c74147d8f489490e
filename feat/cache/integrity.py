"""Checksums of everything the cache stores, checked on every read: damage is named, never used.

Two layers, chosen by measurement (benchmarks/README.md, "Cache checksums"):
- HDF5's own metadata checksums: every file is written in the 1.10 format (`create`), whose superblock,
  object headers (with the attributes in them), B-trees and heaps carry a checksum the library verifies
  when it loads them. Attributes and structure (which datasets exist, their shapes and where their bytes
  are) are covered by it, at no cost to us.
- Our digests of the stored values, which HDF5 does not cover (raw data, and the variable-length strings
  of the global heap): every dataset carries `xxh3`, the xxh3-128 digests of its blocks of `xxh3_rows` rows
  (about 1 MiB each). A reader verifies the blocks it reads; a damaged block names its rows, so a repair
  keeps the rows of the blocks that verify.
  HDF5's fletcher32 filter was measured instead: it needs chunked datasets, reads a 7 MiB matrix 14x
  slower than the contiguous one (xxh3 adds ~15%), and does not cover variable-length strings (ids).

Files without the `checksums` mark predate checksums: they are read as before (unverified) and
`feat verify` says so. Everything a reader meets that is not a well-formed, verified file raises
`DamagedFile` (exit code 2) naming the file and what repairs it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from feat.errors import InputError, os_errno

MARK, SCHEME = "checksums", "xxh3-128/1"  # root attribute of a checksummed file
DIGESTS = "xxh3"  # dataset attribute: the digests of its blocks, in order (16 bytes each)
# Rows per block follow from the dataset's shape and dtype (`_blocks`): part of the scheme, not stored.
BLOCK_BYTES = 1 << 18  # 256 KiB: a damaged block loses ~170 MiniLM rows; hashing it is as fast as 1 MiB
READ_BYTES = 1 << 18  # bytes per read of a contiguous matrix: one block, hashed while it is in the CPU cache
DIGEST_SIZE = 16
# What h5py (and the decoding of what it returns) raises on a file that is not what it claims to be.
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError,
               UnicodeDecodeError, OverflowError, MemoryError)


class DamagedFile(InputError):
    """A cache file that cannot be read, or whose content does not match its checksums."""

    def __init__(self, path: Path, detail: str):
        self.path, self.detail = Path(path), detail
        super().__init__(f"{path} is damaged ({detail}); {repair_hint(Path(path))}")


def repair_hint(path: Path) -> str:
    cache = _cache_root(path)
    verify = f"`feat verify {cache}` lists every damaged file" if cache else "`feat verify` lists every damaged file"
    if path.name == "items.h5":
        return f"re-run `feat extract` on the data file: it rebuilds it; {verify}"
    if path.name.startswith("shard-"):
        return f"re-run that shard (`feat extract ... --shard I/N`): it rewrites its manifest; {verify}"
    if path.name.startswith("part-"):
        return f"re-run the `feat extract` that made it: it sets the part aside and re-encodes its rows; {verify}"
    return (f"re-run the `feat extract` that made it: it moves the file aside ({path.name}.damaged-<time>) and "
            f"re-encodes only the rows that were lost; {verify}")


def _cache_root(path: Path) -> Path | None:
    for parent in [path.parent, *path.parents]:
        if (parent / "items.h5").exists() or parent.name == "features":
            return parent.parent if parent.name == "features" else parent
    return None


def describe(exc: BaseException) -> str:
    """One line for an h5py error: its innermost reason ("truncated file: eof = ...") without the noise."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "(" in text and text.endswith(")"):
        text = text[text.index("(") + 1:-1]
    return f"unreadable: {text[:200]}"


@contextlib.contextmanager
def opened(path: Path) -> Iterator["Reader"]:
    """`path` opened for verified reads; any failure to read it as a well-formed file is `DamagedFile`."""
    try:
        with h5py.File(path, "r") as f:
            yield Reader(f, Path(path))
    except DamagedFile:
        raise
    except FileNotFoundError:
        if Path(path).exists():
            raise DamagedFile(path, "cannot be opened") from None
        raise
    except READ_ERRORS as exc:
        if os_errno(exc) in WRITE_REFUSALS:  # a write in the caller's block hit a full or read-only disk:
            raise  # no read of this file fails so, and the writer turns it into a StorageError
        raise DamagedFile(path, describe(exc)) from None


WRITE_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class Reader:
    """An open cache file whose every read is checked against its checksums (when it has them)."""

    def __init__(self, f: h5py.File, path: Path):
        self.f, self.path = f, path
        self.sealed = _plain(f.attrs.get(MARK)) == SCHEME

    def damaged(self, detail: str) -> DamagedFile:
        return DamagedFile(self.path, detail)

    def node(self, key: str):
        try:
            return self.f[key]
        except KeyError:
            raise self.damaged(f"'{key}' is missing") from None

    def attrs(self) -> dict:
        return {k: _plain(v) for k, v in self.f.attrs.items()}

    def attr(self, key: str, default=None):
        """One attribute (str for a string); `default` when absent."""
        try:
            return _plain(self.f.attrs[key])
        except KeyError:
            return default

    def array(self, node: h5py.Dataset | str) -> np.ndarray:
        """A numeric dataset, whole, verified."""
        node = self.node(node) if isinstance(node, str) else node
        values = node[()]
        if self.sealed:
            rows, digests = self._digests(node)
            if _block_digests(np.asarray(values), rows) != digests:
                raise self.damaged(f"'{node.name}' does not match its checksum")
        return values

    def strings(self, node: h5py.Dataset | str) -> np.ndarray:
        """A string dataset as an object array of str, verified before it is decoded."""
        node = self.node(node) if isinstance(node, str) else node
        raw = node[()] if node.shape != (0,) else np.array([], dtype=object)
        if self.sealed and _digest_strings(raw) != self._digests(node)[1]:
            raise self.damaged(f"'{node.name}' does not match its checksum")
        return np.array([v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for v in raw],
                        dtype=object)

    def any(self, node: h5py.Dataset) -> np.ndarray:
        return self.strings(node) if h5py.check_string_dtype(node.dtype) else self.array(node)

    def matrix(self, node: h5py.Dataset) -> np.ndarray:
        """A 2-d numeric dataset read into one array. A contiguous one is read straight from the file, a few
        MiB per read, each block hashed right after (~15% over the bare read, against 3-14x for fletcher32
        chunks); h5py calls are few, as each costs ~0.1 ms on a busy machine."""
        shape, dtype = node.shape, node.dtype
        if len(shape) != 2 or 0 in shape:
            return self.array(node)
        out = np.empty(shape, dtype=dtype)
        offset = node.id.get_offset()  # None unless contiguous and allocated (chunked, compact: h5py reads)
        if offset is None or not self.sealed or not dtype.isnative:
            node.read_direct(out)
            if self.sealed:
                rows, digests = self._digests(node)
                if _block_digests(out, rows) != digests:
                    raise self.damaged(f"'{node.name}' does not match its checksum")
            return out
        rows, digests = self._digests(node)
        flat = memoryview(out).cast("B")
        block_bytes = rows * out[0].nbytes
        read_bytes = block_bytes * max(1, READ_BYTES // block_bytes)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start in range(0, len(flat), read_bytes):
                view = flat[start:start + read_bytes]
                if os.preadv(fd, [view], offset + start) != len(view):
                    raise self.damaged(f"'{node.name}' ends early (truncated file)")
                for first in range(0, len(view), block_bytes):
                    block = (start + first) // block_bytes
                    if _digest(view[first:first + block_bytes]) != digests[block * DIGEST_SIZE:(block + 1) * DIGEST_SIZE]:
                        raise self.damaged(f"'{node.name}' rows {block * rows}-{min(shape[0], (block + 1) * rows) - 1}"
                                           " do not match their checksum")
        finally:
            os.close(fd)
        return out

    def good_rows(self, node: h5py.Dataset) -> np.ndarray:
        """(n,) bool: rows of a numeric dataset in blocks that read and verify (what a repair can keep)."""
        n = node.shape[0]
        good = np.zeros(n, dtype=bool)
        if not self.sealed:
            return good
        rows, digests = self._digests(node)
        for block, start in enumerate(range(0, n, rows)):
            try:
                values = node[start:start + rows]
            except READ_ERRORS:
                continue
            good[start:start + rows] = _digest(values) == digests[block * DIGEST_SIZE:(block + 1) * DIGEST_SIZE]
        return good

    def verify_all(self) -> None:
        """Read and verify every dataset of the file (what `feat verify` and a repair check)."""
        datasets = []
        self.f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        for node in datasets:
            if h5py.check_string_dtype(node.dtype):
                self.strings(node)
            elif node.ndim == 2:
                self.matrix(node)
            else:
                self.array(node)
        self.attrs()

    def _digests(self, node: h5py.Dataset) -> tuple[int, bytes]:
        """(rows per block, the block digests) of a dataset of a sealed file; missing or malformed: damaged."""
        try:
            digests = bytes(node.attrs[DIGESTS])
        except KeyError:
            raise self.damaged(f"'{node.name}' has lost its checksum") from None
        rows, blocks = _blocks(node)
        if len(digests) != blocks * DIGEST_SIZE:
            raise self.damaged(f"'{node.name}' has a malformed checksum")
        return rows, digests


def create(path: Path) -> h5py.File:
    """A new file in the checksummed format, its root attributes kept in the root's object header (up to
    64 of them) instead of moving past 8 to a heap that HDF5 writes at the end of the file: a truncated
    file keeps them, and with them what a repair needs to keep its surviving rows."""
    order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED  # as h5py's track_order=True
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_link_creation_order(order)
    fcpl.set_attr_creation_order(order)
    fcpl.set_attr_phase_change(64, 48)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    # Every close must be safe on a full disk. HDF5 2.0 frees a dataset whose close fails to flush (ENOSPC)
    # yet leaves its id registered: h5py's File.close then closes it again and segfaults (`feat extract` on a
    # 1.6 MB tmpfs died with exit 139). A dataset close flushes only the sieve buffer, HDF5's write-behind
    # cache of small raw writes; without it each write reaches the disk in the call that makes it, where
    # ENOSPC is an exception like any other.
    fapl.set_sieve_buf_size(0)
    f = h5py.File(h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl))
    set_attrs(f, {MARK: SCHEME})
    return f


def set_attrs(obj: h5py.Group, values: dict) -> None:
    """Strings as fixed-length UTF-8, stored in the object header and so under HDF5's checksum (h5py's
    default, variable-length, puts them in the global heap, which no checksum covers)."""
    for key, value in values.items():
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogateescape")
            obj.attrs.create(key, np.array(data, dtype=f"S{max(1, len(data))}"),
                             dtype=h5py.string_dtype("utf-8", max(1, len(data))))
        else:
            obj.attrs[key] = value


def _plain(value):
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value.item() if isinstance(value, np.generic) else value


def reserve(node: h5py.Dataset) -> h5py.Dataset:
    """Room for a new dataset's digests in its object header, now: `seal` fills it in place at the end. Added
    at the end instead, they would go to the end of the file, and a truncated file would lose the digests
    of data it still holds (which a repair could otherwise keep)."""
    node.attrs[DIGESTS] = np.zeros(_blocks(node)[1] * DIGEST_SIZE, np.uint8)
    return node


def seal(f: h5py.File) -> None:
    """Store the digests of every dataset of a file being written (read back from it: what the file holds)."""
    datasets = []
    f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
    for node in datasets:
        rows, _ = _blocks(node)
        if h5py.check_string_dtype(node.dtype):
            digests = _digest_strings(node[()] if node.shape != (0,) else [])
        elif node.ndim and node.shape[0]:
            digests = b"".join(_digest(node[start:start + rows]) for start in range(0, node.shape[0], rows))
        else:
            digests = _digest(node[()])
        value = np.frombuffer(digests, np.uint8)
        if DIGESTS in node.attrs and node.attrs[DIGESTS].shape == value.shape:
            node.attrs.modify(DIGESTS, value)  # in place, where `reserve` put it
        else:
            node.attrs[DIGESTS] = value
    if _plain(f.attrs.get(MARK)) != SCHEME:
        set_attrs(f, {MARK: SCHEME})


def _blocks(node: h5py.Dataset) -> tuple[int, int]:
    """(rows per block, blocks) of a dataset: one block for strings, scalars and empty ones."""
    if h5py.check_string_dtype(node.dtype):
        return max(1, node.shape[0] if node.ndim else 1), 1
    if not node.ndim or not node.shape[0]:
        return max(1, BLOCK_BYTES // node.dtype.itemsize), 1
    row_bytes = node.dtype.itemsize * int(np.prod(node.shape[1:], dtype=np.int64))
    rows = max(1, BLOCK_BYTES // max(1, row_bytes))
    return rows, -(-node.shape[0] // rows)


def _digest(values) -> bytes:
    import xxhash

    if not isinstance(values, memoryview):
        values = np.ascontiguousarray(values)
        values = memoryview(values.reshape(-1).view(np.uint8)) if values.size else b""
    return xxhash.xxh3_128_digest(values)


def _block_digests(values: np.ndarray, rows: int) -> bytes:
    if values.ndim == 0 or not len(values):
        return _digest(values)
    return b"".join(_digest(values[start:start + rows]) for start in range(0, len(values), rows))


def _digest_strings(raw) -> bytes:
    """Lengths then bytes: no separator an id could contain is needed."""
    import xxhash

    encoded = [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape") for v in raw]
    digest = xxhash.xxh3_128()
    digest.update(np.array([len(v) for v in encoded], dtype=np.int64).tobytes())
    digest.update(b"".join(encoded))
    return digest.digest()
