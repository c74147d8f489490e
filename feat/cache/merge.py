"""`feat merge C`: join the parts of a sharded extraction into the usual features/<name>.h5.

Each shard recorded what it covers in a manifest (its ids, their content hashes, the fingerprint, the table
it saw, a fitted encoder's fit). The merge needs no data file: items.h5 gives the row order, the manifests
the content each row must have been encoded from. It refuses, writing nothing, while any shard is running
(the cache lock), never ran, or left rows uncommitted; a plain `feat extract` on the same data instead
encodes whatever is missing itself and finalizes the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from feat.cache.shard import shard_of
from feat.cache.store import FeatureCache, ShardManifest
from feat.errors import FeatError, InputError


@dataclass
class MergedSet:
    name: str
    shards: int  # n of the sharded run
    rows: int
    invalid: int


@dataclass
class MergeReport:
    cache: Path
    merged: list[MergedSet]
    bad_rows: int  # rows listed in bad_rows.csv after the merge
    seconds: float


@dataclass
class _Job:
    """One feature set's sharded run as its manifests describe it."""

    name: str
    manifests: list[ShardManifest]
    hashes: dict[str, str] = field(default_factory=dict)  # id -> content hash, every shard's rows
    problems: list[str] = field(default_factory=list)  # why it cannot be merged yet


def merge(root: str | Path, lock_timeout: float = 0) -> MergeReport:
    started = time.perf_counter()
    cache = FeatureCache(root)
    if not cache.items_path.exists():
        raise InputError(f"{root} is not a feat cache (no items.h5); run `feat extract ... --shard I/N` first")
    with cache.lock(lock_timeout):
        names = cache.sharded_names()
        if not names:
            unfinished = cache.unfinished_names()
            hint = (f"; {', '.join(unfinished)} has parts of an interrupted plain extract: re-run that extract to "
                    "finish it" if unfinished else "")
            raise InputError(f"cache {root}: no sharded extraction to merge{hint}")
        ids = cache.read_items()["id"].tolist()
        digest = cache.items_attrs()["table_digest"]
        jobs = [_check(cache, name, ids, digest) for name in names]
        problems = [p for job in jobs for p in job.problems]
        if problems:
            raise FeatError("cannot merge yet, nothing was written: " + "; ".join(problems))
        merged = [_finalize(cache, job, ids) for job in jobs]
        bad = cache.write_bad_rows()
    return MergeReport(Path(root), merged, len(bad), time.perf_counter() - started)


def _check(cache: FeatureCache, name: str, ids: list[str], digest: str) -> _Job:
    job = _Job(name, cache.shard_manifests(name))
    if len({m.job for m in job.manifests}) > 1:
        # Each shard drops other jobs' manifests when it starts, so this takes two runs overlapping in time.
        job.problems.append(f"{name}: manifests of different sharded runs (shard counts "
                            f"{sorted({m.shard.count for m in job.manifests})}, fingerprints or tables differ); "
                            "re-run every shard of one of them")
        return job
    first = job.manifests[0]
    if first.table_digest != digest:
        job.problems.append(f"{name}: the shards ran on another table than items.h5 holds (the data changed, or a "
                            "plain extract of other data ran since); re-run every shard")
        return job
    for manifest in job.manifests:
        job.hashes.update(zip(manifest.ids.tolist(), manifest.content_hash.tolist()))
    committed = cache.committed(name, first.fingerprint, matrix=False, want=job.hashes)
    present = set(committed.ids.tolist()) if committed is not None else set()
    recorded = {m.shard.index: m for m in job.manifests}
    for index in range(first.shard.count):
        label = f"shard {index}/{first.shard.count}"
        manifest = recorded.get(index)
        if manifest is None:
            owned = sum(shard_of(item, first.shard.count) == index for item in ids)
            job.problems.append(f"{name}: {label} never ran ({owned} rows missing)")
            continue
        missing = sum(item not in present for item in manifest.ids.tolist())
        if missing:
            job.problems.append(f"{name}: {label}: {missing} of its {len(manifest.ids)} rows missing (killed or "
                                "failed: re-run it, it resumes)")
    return job


def _finalize(cache: FeatureCache, job: _Job, ids: list[str]) -> MergedSet:
    first = job.manifests[0]
    # Every shard fitted on the whole train split (deterministic), so any shard's fit is the fit.
    state = next((m.state for m in job.manifests if m.state), {})
    merged = cache.finalize(job.name, ids, [job.hashes[item] for item in ids], first.fingerprint, state,
                            first.encoder)
    return MergedSet(job.name, first.shard.count, len(merged.rows), int((~merged.rows.valid).sum()))
