"""The HDF5 feature cache: the only code in feat that reads or writes HDF5.

Layout of a cache folder (schema 1, readable with plain h5py):

    items.h5                 the table, once: /id, /split, /columns/<name> (strings), attrs source, columns
    features/<name>.h5       one feature set, rows aligned with items.h5:
        /ids                 (n,) str    item ids, same order as items.h5
        /content_hash        (n,) str    hash of the row's input (text, image bytes, fitted state)
        /valid               (n,) bool   False where the input could not be encoded
        /reason              (n,) str    why a row is invalid or was zero-filled; "" otherwise
        /X                   (n, dim) float32 (float16 on request), or for sparse rows a group
                             /X/data, /X/indices, /X/indptr (CSR) with attr shape
        /state/<key>         arrays an encoder needs to encode new rows alike (TF-IDF vocabulary, idf, ...)
        attrs: schema, name, encoder, fingerprint (JSON), fingerprint_id, dim, format, created, feat_version,
               ids_sha256 (`ids_digest` of /ids: a reader that already holds the ids need not decode them),
               checksums (every file: strings fixed-length, and every dataset's block digests: integrity.py)
    features/<name>.parts/   committed batches of an unfinished extraction (same datasets, a subset of rows):
        part-<k>.h5          by a plain extract; part-<k>-s<i>of<n>.h5 by shard i of n (`--shard i/n`)
        shard-s<i>of<n>.h5   shard i's manifest: its ids, content hashes, fingerprint, table digest, fit
    bad_rows.csv             every invalid or zero-filled row of every feature set, with its reason
    .lock                    held exclusively by a plain extract or a merge; shared by running shards
    .lock-s<i>of<n>          held by shard i of n (one process per shard)

Integrity: every read is verified against the checksums written with the data (integrity.py); a damaged
file raises `DamagedFile` (exit 2), and the next extract repairs it (repair.py).

Crash safety: every file is written under a temporary name, fsynced and renamed into place, so a reader or
a resumed run sees either the old or the new file, never half of one. An extraction commits batches as part
files as it goes and merges them into `<name>.h5` at the end; a killed run leaves committed parts that the
next run reuses.

Sharded extraction: n processes each encode the rows `Shard.owns` into their own part files and manifest, under
a shared hold of `.lock` (so they run together, and no plain extract or merge runs beside them) and their own
shard lock; none of them finalizes. The merge (or the next plain extract) holds `.lock` exclusively and
finalizes as usual: the content-addressed parts of every shard are the same kind of rows a plain run commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from filelock import FileLock, Timeout

from feat import __version__
from feat.cache.integrity import DamagedFile, Reader, create, opened, reserve, seal, set_attrs
from feat.cache.shard import Shard
from feat.errors import FeatError, InputError, StorageError

SCHEMA = 1
ITEMS_FILE = "items.h5"
FEATURES_DIR = "features"
BAD_ROWS_FILE = "bad_rows.csv"
LOCK_FILE = ".lock"
MANIFEST_PREFIX = "shard-"
STR = h5py.string_dtype()


def fingerprint_id(fingerprint: dict) -> str:
    """A short stable digest of a fingerprint dict (key order does not matter)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FeatureRows:
    """Rows of one feature set: a full aligned matrix or a committed subset."""

    ids: np.ndarray  # (n,) object array of str
    content_hash: np.ndarray  # (n,) object array of str
    valid: np.ndarray  # (n,) bool
    reason: np.ndarray  # (n,) object array of str
    matrix: np.ndarray | sp.csr_matrix | None  # (n, dim); None when only the bookkeeping was read
    width: int | None = None  # dim when `matrix` is None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1] if self.matrix is not None else int(self.width or 0)

    def take(self, index: np.ndarray) -> "FeatureRows":
        matrix = self.matrix[index] if self.matrix is not None else None
        return FeatureRows(self.ids[index], self.content_hash[index], self.valid[index], self.reason[index],
                           matrix, self.width)

    @staticmethod
    def concat(blocks: list["FeatureRows"]) -> "FeatureRows":
        if any(b.matrix is None for b in blocks):
            matrix, width = None, max(b.dim for b in blocks)
        else:
            sparse = any(sp.issparse(b.matrix) for b in blocks)
            matrix = (sp.vstack if sparse else np.concatenate)([b.matrix for b in blocks])
            matrix, width = (sp.csr_matrix(matrix) if sparse else matrix), None
        return FeatureRows(
            np.concatenate([b.ids for b in blocks]), np.concatenate([b.content_hash for b in blocks]),
            np.concatenate([b.valid for b in blocks]), np.concatenate([b.reason for b in blocks]),
            matrix, width,
        )


@dataclass
class ShardManifest:
    """What one shard of a sharded extraction covers; written by the shard before it encodes, read by the merge."""

    shard: Shard
    ids: np.ndarray  # (k,) object array: the shard's rows, in table order
    content_hash: np.ndarray  # (k,) object array: each row's content hash when the shard ran
    fingerprint: dict
    encoder: str  # registry name of the encoder
    table_digest: str  # the table the shard saw; items.h5 must hold the same one when the parts are merged
    state: dict[str, np.ndarray] = field(default_factory=dict)  # a fitted encoder's fit (TF-IDF), else empty

    @property
    def job(self) -> tuple:
        """Shards of one sharded extraction agree on this; a manifest that differs is of an older job."""
        return self.shard.count, fingerprint_id(self.fingerprint), self.table_digest


@dataclass
class FeatureSet:
    """A complete feature set as stored in features/<name>.h5."""

    name: str
    rows: FeatureRows
    fingerprint: dict
    attrs: dict
    state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Source:
    """One file (the complete one or a part) holding committed rows, and which of them are chosen."""

    path: Path
    meta: FeatureRows  # its ids, hashes and flags, without the matrix
    sparse: bool
    dtype: np.dtype
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # chosen rows, increasing

    def read(self) -> np.ndarray | sp.csr_matrix:
        """The chosen rows' vectors (whole file read: fine for a part or a sparse matrix)."""
        with opened(self.path) as r:
            return _read_matrix(r, r.node("X"))[self.index]


class FeatureCache:
    """A cache folder. Writers hold `lock()`; readers need no lock because files are replaced atomically.
    With `shard`, this object locks, names parts and cleans up as that shard of a sharded extraction."""

    def __init__(self, root: str | os.PathLike, shard: Shard | None = None):
        self.root = Path(root)
        self.shard = shard

    # ----- locking -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float = 0) -> Iterator[None]:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--cache {self.root} is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(self.root, exc) from None
        with (self._shard_lock(timeout) if self.shard else self._exclusive_lock(timeout)):
            self._remove_stale_temporaries()
            yield

    @contextlib.contextmanager
    def _exclusive_lock(self, timeout: float) -> Iterator[None]:
        lock = FileLock(str(self.root / LOCK_FILE))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if not timeout:
                    raise
                from feat.console import console

                # Otherwise a waiting run looks hung
                console.print(f"cache {self.root} is in use by another feat process: waiting for it (up to "
                              f"{timeout:g} s)", soft_wrap=True, markup=False)
                lock.acquire(timeout=timeout)
        except Timeout:
            running = self.running_shards()
            if running:
                raise FeatError(f"cache {self.root} is in use by shard(s) {', '.join(s.label for s in running)} "
                                f"of a sharded extract{_waited(timeout)}; wait for them to finish, then `feat "
                                "merge`") from None
            raise FeatError(f"cache {self.root} is in use by another feat process{_waited(timeout)}; "
                            "wait for it to finish or use another --cache") from None
        except OSError as exc:
            raise _unwritable(self.root, exc) from None
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _shard_lock(self, timeout: float) -> Iterator[None]:
        """`.lock` shared (every shard of the job at once, no plain extract or merge meanwhile), then the
        shard's own lock (one process per shard)."""
        with _shared_file_lock(self.root / LOCK_FILE, timeout, self.root):
            own = FileLock(str(self.root / f"{LOCK_FILE}-{self.shard.tag}"))
            try:
                own.acquire(timeout=timeout)
            except Timeout:
                raise FeatError(f"shard {self.shard.label} of cache {self.root} is already running in another "
                                f"process{_waited(timeout)}") from None
            except OSError as exc:
                raise _unwritable(self.root, exc) from None
            try:
                yield
            finally:
                own.release()

    def running_shards(self) -> list[Shard]:
        """Shards whose lock another process holds now."""
        running = []
        for path in sorted(self.root.glob(f"{LOCK_FILE}-s*of*")):
            probe = FileLock(str(path))
            try:
                probe.acquire(timeout=0)
            except Timeout:
                index, count = path.name.split("-s", 1)[1].split("of")
                running.append(Shard(int(index), int(count)))
            except OSError:
                continue
            else:
                probe.release()
        return running

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of writers killed mid-write. Every writer holds the lock, so while we hold it no
        temporary file belongs to a live process; none was ever visible under a real name. A shard holds
        only its own lock: it removes only its own files' temporaries (the others' may be being written)."""
        pattern = f".*-{self.shard.tag}.h5.tmp*" if self.shard else ".*.tmp*"
        for folder in [self.root, self.root / FEATURES_DIR, *(self.root / FEATURES_DIR).glob("*.parts")]:
            if folder.is_dir():
                for tmp in folder.glob(pattern):
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    # ----- items -------------------------------------------------------------------------------------
    @property
    def items_path(self) -> Path:
        return self.root / ITEMS_FILE

    def write_items(self, frame: pd.DataFrame, attrs: dict) -> bool:
        """Store the table; returns False (and writes nothing) when the stored table is identical."""
        digest = _frame_digest(frame)
        if self.items_path.exists():
            with contextlib.suppress(DamagedFile):  # a damaged table is rebuilt from the data file
                with opened(self.items_path) as r:
                    if r.attrs().get("table_digest") == digest:
                        r.verify_all()
                        return False
        with _atomic_h5(self.items_path) as f:
            set_attrs(f, {"schema": SCHEMA, "table_digest": digest, "created": _now(), "feat_version": __version__,
                          "column_order": json.dumps(list(frame.columns)),
                          **{key: value if isinstance(value, (str, int, float)) else json.dumps(value)
                             for key, value in attrs.items()}})
            _write_str(f, "id", frame["id"])
            _write_str(f, "split", frame["split"])
            group = f.create_group("columns")
            for name in frame.columns:
                if name not in ("id", "split"):
                    _write_str(group, name, frame[name])
        return True

    def read_items(self) -> pd.DataFrame:
        if not self.items_path.exists():
            raise InputError(f"{self.root} is not a feat cache (no {ITEMS_FILE}); run `feat extract` first")
        with opened(self.items_path) as r:
            order = json.loads(r.attrs()["column_order"])
            data = {"id": r.strings("id"), "split": r.strings("split")}
            for name in order:
                if name not in data:
                    data[name] = r.strings(f"columns/{name}")
            if len({len(column) for column in data.values()}) > 1:
                raise r.damaged("its columns have different lengths")
        return pd.DataFrame(data)[order]

    def items_attrs(self) -> dict:
        with opened(self.items_path) as r:
            return r.attrs()

    # ----- complete feature sets ---------------------------------------------------------------------
    def feature_path(self, name: str) -> Path:
        return self.root / FEATURES_DIR / f"{name}.h5"

    def parts_dir(self, name: str) -> Path:
        return self.root / FEATURES_DIR / f"{name}.parts"

    def feature_names(self) -> list[str]:
        folder = self.root / FEATURES_DIR
        return sorted(p.stem for p in folder.glob("*.h5")) if folder.exists() else []

    def unfinished_names(self) -> list[str]:
        """Feature sets with committed parts waiting to be merged (a run was killed or failed)."""
        folder = self.root / FEATURES_DIR
        return sorted(p.name[: -len(".parts")] for p in folder.glob("*.parts")
                      if any(p.glob("part-*.h5"))) if folder.exists() else []

    def fingerprint(self, name: str) -> dict | None:
        """The stored fingerprint of a feature set (complete file first, else any committed part)."""
        for path in [self.feature_path(name), *self._part_files(name)]:
            if path.exists():
                with opened(path) as r:
                    return json.loads(r.attrs()["fingerprint"])
        return None

    def _existing_feature_path(self, name: str) -> Path:
        path = self.feature_path(name)
        if not path.exists():
            known = ", ".join(self.feature_names()) or "none"
            raise InputError(f"feature set '{name}' is not in cache {self.root} (it has: {known})")
        return path

    def read(self, name: str, rows: bool = True) -> FeatureSet:
        with opened(self._existing_feature_path(name)) as r:
            attrs = r.attrs()
            state = {k: r.any(v) for k, v in r.f["state"].items()} if "state" in r.f else {}
            block = _read_rows(r) if rows else None
            fingerprint = json.loads(attrs["fingerprint"])
        return FeatureSet(name, block, fingerprint, attrs, state)

    def read_matrix(self, name: str, expected_ids: np.ndarray | None = None) -> FeatureSet:
        """What training needs (ids, matrix, valid flags, fingerprint) in one open, without the per-row hash
        and reason strings, the fitted state or the other attrs, whose decoding would cost more than a small
        matrix. When the file's id digest equals that of `expected_ids` (the items' ids, which training holds
        anyway), those are returned instead of decoding the same strings again; otherwise the stored ids are."""
        path = self._existing_feature_path(name)
        with opened(path) as r:
            fingerprint = json.loads(r.attr("fingerprint"))
            same = expected_ids is not None and r.attr("ids_sha256") == ids_digest(expected_ids)
            ids = np.asarray(expected_ids, dtype=object) if same else r.strings("ids")
            valid, matrix = r.array("valid").astype(bool), _read_matrix(r, r.node("X"))
            if len(valid) != len(ids) or matrix.shape[0] != len(ids):
                raise r.damaged("its ids, flags and vectors differ in length")
        blank = np.full(len(ids), "", dtype=object)
        return FeatureSet(name, FeatureRows(ids, blank, valid, blank, matrix), fingerprint,
                          {"fingerprint": json.dumps(fingerprint, sort_keys=True)})

    def read_flags(self, name: str) -> FeatureRows:
        """The stored rows of a complete feature set without the matrix (cheap on a large cache)."""
        with opened(self.feature_path(name)) as r:
            return _read_rows(r, matrix=False)

    def is_complete(self, name: str, ids: list[str]) -> bool:
        """True when features/<name>.h5 holds exactly `ids` in this order and no parts wait to be merged."""
        path = self.feature_path(name)
        if not path.exists() or self._part_files(name):
            return False
        with opened(path) as r:
            stored = r.strings("ids")
        return len(stored) == len(ids) and bool(np.all(stored == np.asarray(ids, dtype=object)))

    def delete(self, name: str) -> None:
        for part in [*self._part_files(name), *self._manifest_files(name)]:
            part.unlink()
        self.feature_path(name).unlink(missing_ok=True)

    def size_on_disk(self, name: str) -> int:
        path = self.feature_path(name)
        return path.stat().st_size if path.exists() else 0

    # ----- incremental writes ------------------------------------------------------------------------
    def _part_files(self, name: str) -> list[Path]:
        folder = self.parts_dir(name)
        # By number, not by name: commit order decides which row is newest, and names outgrow their padding.
        # Shards running at once may number a part alike; their rows are disjoint, so that order is moot.
        return sorted(folder.glob("part-*.h5"), key=lambda p: (_part_number(p), p.name)) if folder.exists() else []

    def commit_part(self, name: str, rows: FeatureRows, fingerprint: dict) -> Path:
        """Durably store a batch of finished rows; a later run (or `finalize`) picks them up."""
        folder = self.parts_dir(name)
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)  # exist_ok: shards create it at once
            _fsync_dir(folder.parent)  # the folder's own entry must survive a power cut with the parts in it
        existing = self._part_files(name)
        # Numbered after every part this process can see, other shards' included: newer than all of them.
        index = _part_number(existing[-1]) + 1 if existing else 0
        path = folder / (f"part-{index:06d}-{self.shard.tag}.h5" if self.shard else f"part-{index:06d}.h5")
        with _atomic_h5(path) as f:
            set_attrs(f, {"fingerprint": json.dumps(fingerprint, sort_keys=True)})  # first: see `reserve`
            _write_rows(f, rows)
        return path

    def committed(self, name: str, fingerprint: dict, matrix: bool = True,
                  want: dict[str, str] | None = None) -> FeatureRows | None:
        """The rows stored for `name` under `fingerprint`, one per id: the complete file, then the parts over
        it (a later commit is newer). `want` (id -> content hash) keeps only the rows of those ids made from
        that content; `matrix=False` reads only ids, hashes and flags (what deciding the work to do needs)."""
        chosen = self._chosen_rows(name, fingerprint, want)
        if chosen is None:
            return None
        live = _live(chosen)
        if matrix:
            _require_one_width(name, live)
        blocks = []
        for source in live:
            block = source.meta.take(source.index)
            if matrix:
                block.matrix, block.width = source.read(), None
            blocks.append(block)
        return FeatureRows.concat(blocks)

    def _chosen_rows(self, name: str, fingerprint: dict, want: dict[str, str] | None) -> list[_Source] | None:
        """Which row of which file holds each id's newest commit under `fingerprint` (and, with `want`, made
        from that content): decided on the bookkeeping alone, so rows that lost are never read. They may not
        even stack: a TF-IDF row from an older fit has another width (checked only where vectors are read)."""
        sources = []
        for path in [self.feature_path(name), *self._part_files(name)]:
            if path.exists():
                with opened(path) as r:
                    if json.loads(r.attrs()["fingerprint"]) == fingerprint:
                        node = r.node("X")
                        sparse = isinstance(node, h5py.Group)
                        sources.append(_Source(path, _read_rows(r, matrix=False), sparse,
                                               node["data"].dtype if sparse else node.dtype))
        if not sources:
            return None
        latest: dict[str, tuple[int, int]] = {}
        for s, source in enumerate(sources):
            latest.update(zip(source.meta.ids.tolist(), ((s, r) for r in range(len(source.meta)))))
        if want is not None:
            latest = {item: (s, r) for item, (s, r) in latest.items()
                      if want.get(item, None) == sources[s].meta.content_hash[r]}
        rows: list[list[int]] = [[] for _ in sources]
        for s, r in latest.values():
            rows[s].append(r)
        for source, index in zip(sources, rows):
            source.index = np.array(sorted(index), dtype=np.int64)
        return sources

    def finalize(self, name: str, ids: list[str], hashes: list[str], fingerprint: dict,
                 state: dict[str, np.ndarray], encoder: str) -> FeatureSet:
        """Merge the committed rows of exactly this content (`ids` with their `hashes`) into
        features/<name>.h5 in the order of `ids`, then drop the parts and shard manifests. A dense matrix is
        copied file by file in blocks, never held whole, so the merge needs one block of memory beyond the
        ids and flags (it held 2-3 copies of the matrix before); the returned rows carry no matrix."""
        if self.shard:
            raise FeatError(f"shard {self.shard.label} must not finalize '{name}': other shards may still commit; "
                            "`feat merge` joins the parts")
        sources = self._chosen_rows(name, fingerprint, want=dict(zip(ids, hashes)))
        if sources is None:
            raise FeatError(f"nothing committed for feature set '{name}'")
        live = _live(sources)
        _require_one_width(name, live)
        for source in live:  # the copy below reads raw rows: every file it copies from is verified first
            with opened(source.path) as r:
                r.verify_all()
        found = FeatureRows.concat([source.meta.take(source.index) for source in live])
        position = {item: i for i, item in enumerate(found.ids)}
        missing = [item for item in ids if item not in position]
        if missing:
            raise FeatError(f"feature set '{name}': {len(missing)} row(s) were never encoded, e.g. {missing[:3]}")
        target = np.empty(len(found), dtype=np.int64)  # found row (live sources in order) -> its output row
        target[np.array([position[item] for item in ids], dtype=np.int64)] = np.arange(len(ids))
        order = np.argsort(target)
        aligned = found.take(order)
        sparse = any(source.sparse for source in live)
        if sparse:  # TF-IDF: CSR cannot be written row by row in place, and it is small
            aligned.matrix = sp.csr_matrix(sp.vstack([source.read() for source in live]))[order]
        dtype = aligned.matrix.dtype if sparse else live[0].dtype
        attrs = {"schema": SCHEMA, "name": name, "encoder": encoder,
                 "fingerprint": json.dumps(fingerprint, sort_keys=True),
                 "fingerprint_id": fingerprint_id(fingerprint), "dim": aligned.dim,
                 "format": "csr" if sparse else "dense", "dtype": str(dtype), "n_rows": len(aligned),
                 "n_valid": int(aligned.valid.sum()), "created": _now(), "feat_version": __version__,
                 "ids_sha256": ids_digest(aligned.ids)}
        with _atomic_h5(self.feature_path(name)) as f:
            set_attrs(f, attrs)  # first, near the start of the file, as every dataset's digests (`reserve`)
            _write_rows(f, aligned)
            if not sparse:
                out = reserve(f.create_dataset("X", shape=(len(aligned), aligned.dim), dtype=dtype,
                                               track_times=False))
                _copy_rows(live, target, out)
            if state:
                group = f.create_group("state")
                for key, value in state.items():
                    _write_any(group, key, value)
        # Manifests last: a merge killed before they go finds every row in the complete file and redoes it.
        for part in [*self._part_files(name), *self._manifest_files(name)]:
            part.unlink()
        with contextlib.suppress(OSError):
            self.parts_dir(name).rmdir()
        aligned.width, aligned.matrix = aligned.dim, None
        return FeatureSet(name, aligned, fingerprint, attrs, state)

    # ----- shard manifests ---------------------------------------------------------------------------
    def _manifest_files(self, name: str) -> list[Path]:
        folder = self.parts_dir(name)
        return sorted(folder.glob(f"{MANIFEST_PREFIX}s*of*.h5")) if folder.exists() else []

    def sharded_names(self) -> list[str]:
        """Feature sets with shard manifests: a sharded extraction waiting for its merge."""
        folder = self.root / FEATURES_DIR
        return sorted(p.name[: -len(".parts")] for p in folder.glob("*.parts")
                      if any(p.glob(f"{MANIFEST_PREFIX}s*of*.h5"))) if folder.exists() else []

    def write_shard_manifest(self, name: str, manifest: ShardManifest) -> None:
        """Record what this shard covers, and drop manifests of another job (other n, fingerprint or table):
        they describe work nobody will merge. Their committed parts stay, reusable by content."""
        if manifest.shard != self.shard:
            raise FeatError(f"a manifest of shard {manifest.shard.label} written as shard {self.shard}")
        for old in self.shard_manifests(name, skip_damaged=True):
            if old.job != manifest.job:
                self._manifest_path(name, old.shard).unlink(missing_ok=True)
        path = self._manifest_path(name, manifest.shard)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(path.parent.parent)
        with _atomic_h5(path) as f:
            _write_str(f, "ids", manifest.ids)
            _write_str(f, "content_hash", manifest.content_hash)
            if manifest.state:
                group = f.create_group("state")
                for key, value in manifest.state.items():
                    _write_any(group, key, value)
            set_attrs(f, {"schema": SCHEMA, "shard": manifest.shard.index, "shards": manifest.shard.count,
                          "fingerprint": json.dumps(manifest.fingerprint, sort_keys=True),
                          "encoder": manifest.encoder, "table_digest": manifest.table_digest,
                          "created": _now(), "feat_version": __version__})

    def shard_manifests(self, name: str, skip_damaged: bool = False) -> list[ShardManifest]:
        """`skip_damaged`: leave damaged manifests out (a shard rewrites its own; the merge names the others)."""
        manifests = []
        for path in self._manifest_files(name):
            if skip_damaged:
                try:
                    with opened(path) as r:
                        r.verify_all()
                except DamagedFile:
                    continue
            with opened(path) as r:
                state = {k: r.any(v) for k, v in r.f["state"].items()} if "state" in r.f else {}
                a = r.attrs()
                manifests.append(ShardManifest(
                    Shard(int(a["shard"]), int(a["shards"])), r.strings("ids"), r.strings("content_hash"),
                    json.loads(a["fingerprint"]), str(a["encoder"]), str(a["table_digest"]), state))
        return manifests

    def _manifest_path(self, name: str, shard: Shard) -> Path:
        return self.parts_dir(name) / f"{MANIFEST_PREFIX}{shard.tag}.h5"

    # ----- bad rows ----------------------------------------------------------------------------------
    def write_bad_rows(self, failed: dict[str, list[tuple[str, str]]] | None = None) -> pd.DataFrame:
        """Rewrite bad_rows.csv from the stored reasons of every feature set, plus `failed`: rows of a run
        stopped by `--on-bad-image fail` (feature set -> [(id, reason)]), which are stored nowhere else."""
        frames = []
        failed = failed or {}
        for name in self.feature_names():
            try:
                rows = self.read_flags(name)
            except DamagedFile:  # listed again once an extract with its encoder has repaired it
                continue
            flagged = rows.reason != ""
            if name in failed:  # the failed run's view of these rows is newer than the stored one
                flagged &= ~np.isin(rows.ids, [item for item, _ in failed[name]])
            frames.append(pd.DataFrame({"feature": name, "id": rows.ids[flagged], "valid": rows.valid[flagged],
                                        "reason": rows.reason[flagged]}))
        for name, rows in failed.items():
            frames.append(pd.DataFrame({"feature": name, "id": [item for item, _ in rows], "valid": False,
                                        "reason": [f"{reason} (--on-bad-image fail: not stored)"
                                                   for _, reason in rows]}))
        columns = ["feature", "id", "valid", "reason"]
        table = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
        tmp = self.root / f".{BAD_ROWS_FILE}.tmp-{_writer_id()}"
        try:
            table.to_csv(tmp, index=False)
            os.replace(tmp, self.root / BAD_ROWS_FILE)
        except OSError as exc:
            _discard(tmp)
            error = StorageError.of(self.root / BAD_ROWS_FILE, exc, "another --cache")
            if error is None:
                raise
            raise error from exc
        return table


def table_digest(frame: pd.DataFrame) -> str:
    """The digest items.h5 stores for a table (`write_items` skips an identical table by it)."""
    return _frame_digest(frame)


# ----- helpers (private to the cache module) ---------------------------------------------------------
def _writer_id() -> str:
    """Unique among live writers, also across the machines of a cluster sharing the cache folder."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _part_number(path: Path) -> int:
    return int(path.stem.split("-")[1])  # part-000012.h5 and part-000012-s1of4.h5 alike


def _waited(timeout: float) -> str:
    return f" (waited {timeout:g} s)" if timeout else " (use --wait SECONDS to wait for it)"


def _unwritable(root: Path, exc: OSError) -> FeatError:
    return StorageError.of(root, exc, "another --cache") or FeatError(f"cannot write to cache {root}: {exc}")


@contextlib.contextmanager
def _shared_file_lock(path: Path, timeout: float, root: Path) -> Iterator[None]:
    """flock(LOCK_SH) on the file FileLock locks exclusively (filelock uses flock on Unix, and leaves the
    file in place): any number of shared holders, or one exclusive holder."""
    try:
        import fcntl
    except ImportError:
        raise FeatError("--shard needs POSIX file locks (Linux, macOS)") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unwritable(root, exc) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FeatError(f"cache {root} is in use by a feat process that is not a shard (a plain extract "
                                    f"or a merge){_waited(timeout)}; wait for it to finish") from None
                time.sleep(0.05)
            except OSError as exc:  # a file system without flock (some network mounts)
                raise FeatError(f"cache {root}: cannot lock {path.name} shared ({exc.strerror or exc}); "
                                "--shard needs a file system with flock") from None
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _atomic_h5(path: Path) -> Iterator[h5py.File]:
    tmp = path.with_name(f".{path.name}.tmp-{_writer_id()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = create(tmp)
        try:
            yield f
            seal(f)
            f.flush()  # a full disk fails here, while every object is still open, rather than in a close
        except BaseException:
            _abandon(f, tmp)
            raise
        f.close()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        _discard(tmp)
        error = StorageError.of(path, exc, "another --cache")
        if error is None:
            raise
        raise error from exc


def _abandon(f: h5py.File, tmp: Path) -> None:
    """Close a file whose writing failed. Its dirty metadata cannot reach a full disk, and HDF5 retries that
    flush in every close, so the temporary (deleted next anyway) is first emptied to free its blocks."""
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    with contextlib.suppress(Exception):
        f.close()


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # on a read-only folder even a missing file's unlink can fail
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_str(group: h5py.Group, key: str, values) -> None:
    reserve(group.create_dataset(key, data=np.asarray(list(values), dtype=object), dtype=STR, track_times=False))


def _write_any(group: h5py.Group, key: str, value: np.ndarray) -> None:
    value = np.asarray(value)
    if value.dtype.kind in "OU":
        _write_str(group, key, value)
    else:
        reserve(group.create_dataset(key, data=value, track_times=False))


def _write_rows(f: h5py.File, rows: FeatureRows) -> None:
    _write_str(f, "ids", rows.ids)
    _write_str(f, "content_hash", rows.content_hash)
    reserve(f.create_dataset("valid", data=np.asarray(rows.valid, dtype=bool), track_times=False))
    _write_str(f, "reason", rows.reason)
    if rows.matrix is None:
        return  # the caller writes X (finalize copies a dense matrix block by block)
    if sp.issparse(rows.matrix):
        csr = sp.csr_matrix(rows.matrix)
        group = f.create_group("X")
        group.attrs["shape"] = csr.shape
        for key in ("data", "indices", "indptr"):
            reserve(group.create_dataset(key, data=getattr(csr, key), track_times=False))
    else:
        # Contiguous, not chunked: training reads the whole matrix, which is then one plain read.
        reserve(f.create_dataset("X", data=np.ascontiguousarray(rows.matrix), track_times=False))


COPY_BLOCK_BYTES = 32 * 2**20  # vectors a merge holds at once, per source file


def _live(sources: list[_Source]) -> list[_Source]:
    """The sources with a chosen row (or the first one, so that an empty selection still has a width)."""
    return [source for source in sources if len(source.index)] or sources[:1]


def _require_one_width(name: str, sources: list[_Source]) -> None:
    widths = {source.meta.dim for source in sources if len(source.index)}
    if len(widths) > 1:
        raise FeatError(f"feature set '{name}': committed rows of different widths under one fingerprint "
                        f"({sorted(widths)}); re-encode it with --force")


def _copy_rows(sources: list[_Source], target: np.ndarray, out: h5py.Dataset) -> None:
    """Write each source's chosen rows (in source order, each in increasing row order, as `target` maps them)
    to their output rows, a block of rows at a time."""
    done = 0
    for source in sources:
        index, goes_to = source.index, target[done:done + len(source.index)]
        done += len(index)
        if not len(index):  # the first source of an empty selection
            continue
        with opened(source.path) as r:
            x = r.node("X")
            step = max(1, COPY_BLOCK_BYTES // max(1, x.shape[1] * x.dtype.itemsize))
            for start in range(0, len(index), step):
                rows, dest = index[start:start + step], goes_to[start:start + step]
                first, last = int(rows[0]), int(rows[-1]) + 1
                # One slice read when the chosen rows are dense in it (a part, the complete file in order),
                # else a point selection (h5py wants increasing indices, which `rows` are)
                block = x[first:last][rows - first] if last - first <= 2 * len(rows) else x[rows]
                arrange = np.argsort(dest)
                dest, block = dest[arrange], block[arrange]
                if int(dest[-1]) - int(dest[0]) + 1 == len(dest):
                    out[int(dest[0]):int(dest[-1]) + 1] = block
                else:
                    out[dest] = block


def _read_rows(r: Reader, matrix: bool = True) -> FeatureRows:
    node = r.node("X")
    sparse = isinstance(node, h5py.Group)
    width = int(node.attrs["shape"][1] if sparse else node.shape[1])
    values = _read_matrix(r, node) if matrix else None
    rows = FeatureRows(r.strings("ids"), r.strings("content_hash"), r.array("valid").astype(bool),
                       r.strings("reason"), values, None if matrix else width)
    n = sp.csr_matrix(values).shape[0] if sparse and matrix else (node.attrs["shape"][0] if sparse else node.shape[0])
    if {len(rows.content_hash), len(rows.valid), len(rows.reason), int(n)} != {len(rows.ids)}:
        raise r.damaged("its ids, hashes, flags and vectors differ in length")
    return rows


def _read_matrix(r: Reader, node: h5py.Dataset | h5py.Group) -> np.ndarray | sp.csr_matrix:
    if isinstance(node, h5py.Group):
        parts = [r.array(node[key]) if key in node else None for key in ("data", "indices", "indptr")]
        if any(part is None for part in parts):
            raise r.damaged("its sparse matrix is incomplete")
        try:
            return sp.csr_matrix(tuple(parts), shape=tuple(int(v) for v in node.attrs["shape"]))
        except (ValueError, TypeError, IndexError) as exc:
            raise r.damaged(f"its sparse matrix is malformed ({exc})") from None
    # One plain read into the result (about 20% faster than node[()] on 7 MB), hashed block by block
    return r.matrix(node)


def ids_digest(ids) -> str:
    """sha256 of the ids in order (a separator no id contains between them)."""
    return hashlib.sha256("\x1e".join(ids).encode("utf-8", "surrogatepass")).hexdigest()


def _frame_digest(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(json.dumps(list(frame.columns)).encode())
    for name in frame.columns:
        digest.update("\x1e".join(frame[name].astype(str)).encode("utf-8", "surrogatepass"))
        digest.update(b"\x1d")
    return digest.hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
