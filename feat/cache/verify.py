"""`feat verify C [--runs DIR]`: read every file of a cache (and of run folders) and name each problem.

Damage (exit 1): a file that cannot be read, does not match its checksums, holds datasets of different
lengths, or contradicts itself (fingerprint id, ids digest, row count). Everything else worth knowing is a
note (exit 0): feature sets behind the table, parts and shard manifests that belong to no run, copies of
damaged files set aside, files written before checksums, and the disk usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from feat.cache.integrity import DamagedFile, opened
from feat.cache.repair import DAMAGED
from feat.cache.store import FEATURES_DIR, ITEMS_FILE, MANIFEST_PREFIX, FeatureCache, fingerprint_id, ids_digest
from feat.errors import FeatError, InputError


@dataclass
class Problem:
    path: Path
    what: str
    damaged: bool  # False: a note, not damage

    def line(self) -> str:
        return f"{'damaged' if self.damaged else 'note'}: {self.path}: {self.what}"


@dataclass
class VerifyReport:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    files: int = 0  # files read
    usage: dict[str, int] = field(default_factory=dict)  # bytes per kind of file

    @property
    def damaged(self) -> list[Problem]:
        return [p for p in self.problems if p.damaged]

    def summary(self) -> str:
        usage = ", ".join(f"{kind} {size / 2**20:.1f} MiB" for kind, size in self.usage.items() if size)
        verdict = f"{len(self.damaged)} damaged" if self.damaged else "no damage"
        return f"verified {self.files} file(s) under {self.root}: {verdict}; disk usage: {usage or 'none'}"


def verify(root: Path, runs: Path | None = None) -> VerifyReport:
    root = Path(root)
    if not root.is_dir() or not (root / ITEMS_FILE).exists():
        raise InputError(f"{root} is not a feat cache (no {ITEMS_FILE}); give the folder `feat extract -c` wrote")
    report = VerifyReport(root)
    _verify_cache(FeatureCache(root), report)
    if runs is not None:
        if not Path(runs).is_dir():
            raise InputError(f"--runs {runs} is not a folder")
        for config in sorted(Path(runs).rglob("config.json")):
            if (config.parent / "model.safetensors").exists() or (config.parent / "metrics.json").exists():
                _verify_run(config.parent, report)
        for items in sorted(Path(runs).rglob(ITEMS_FILE)):  # a run's predict-cache
            if items.parent.resolve() != root.resolve():
                _verify_cache(FeatureCache(items.parent), report)
    return report


def _verify_cache(cache: FeatureCache, report: VerifyReport) -> None:
    items_ids = None
    if _check_file(cache.items_path, report):
        try:
            items_ids = cache.read_items()["id"].to_numpy(dtype=object)
        except DamagedFile as exc:
            report.problems.append(Problem(exc.path, exc.detail, True))
    _add_usage(report, "items", cache.items_path)
    features = cache.root / FEATURES_DIR
    for path in sorted(features.glob("*.h5")) if features.is_dir() else []:
        _add_usage(report, "features", path)
        if _check_file(path, report):
            _check_feature_set(cache, path, items_ids, report)
    for folder in sorted(features.glob("*.parts")) if features.is_dir() else []:
        _check_parts(cache, folder, report)
    for path in sorted(cache.root.rglob(f"*{DAMAGED}*")):
        _add_usage(report, "damaged copies", path)
        report.problems.append(Problem(path, "a damaged file set aside by a repair; delete it when no longer "
                                             "needed", False))
    for path in sorted(cache.root.rglob(".*.tmp-*")):
        _add_usage(report, "temporaries", path)
        report.problems.append(Problem(path, "a temporary file of a killed writer; the next extract removes it",
                                       False))


def _check_file(path: Path, report: VerifyReport) -> bool:
    """Read every dataset of an HDF5 file against its checksums; False when damaged."""
    report.files += 1
    try:
        with opened(path) as r:
            r.verify_all()
            if not r.sealed:
                report.problems.append(Problem(path, "written before feat stored checksums: its values cannot be "
                                                     "verified (`feat extract --force` rewrites it)", False))
    except DamagedFile as exc:
        report.problems.append(Problem(path, exc.detail, True))
        return False
    return True


def _check_feature_set(cache: FeatureCache, path: Path, items_ids, report: VerifyReport) -> None:
    name = path.stem
    try:
        fs = cache.read(name, rows=False)
        rows = cache.read_flags(name)
    except DamagedFile as exc:
        report.problems.append(Problem(exc.path, exc.detail, True))
        return
    attrs = fs.attrs
    contradictions = []
    if attrs.get("fingerprint_id") not in (None, fingerprint_id(fs.fingerprint)):
        contradictions.append("its fingerprint id does not match its fingerprint")
    if attrs.get("ids_sha256") not in (None, ids_digest(rows.ids)):
        contradictions.append("its ids digest does not match its ids")
    if attrs.get("n_rows") not in (None, len(rows)):
        contradictions.append(f"it says {attrs.get('n_rows')} rows but holds {len(rows)}")
    if contradictions:
        report.problems.append(Problem(path, "; ".join(contradictions), True))
    if items_ids is not None and (len(rows.ids) != len(items_ids) or not (rows.ids == items_ids).all()):
        report.problems.append(Problem(path, f"not aligned with {ITEMS_FILE} (made from another table); re-run "
                                             f"`feat extract` with encoder {fs.fingerprint.get('encoder')} to "
                                             "align it", False))


def _check_parts(cache: FeatureCache, folder: Path, report: VerifyReport) -> None:
    name = folder.name[: -len(".parts")]
    complete = cache.feature_path(name)
    current = None
    if complete.exists():
        try:
            current = cache.fingerprint(name)
        except DamagedFile:
            pass
    manifests = sorted(folder.glob(f"{MANIFEST_PREFIX}s*of*.h5"))
    parts = sorted(folder.glob("part-*.h5"))
    for path in [*parts, *manifests]:
        _add_usage(report, "parts", path)
        if not _check_file(path, report):
            continue
        with opened(path) as r:
            fingerprint = json.loads(r.attrs()["fingerprint"])
        if current is not None and fingerprint != current:
            report.problems.append(Problem(path, "belongs to no run: made with another fingerprint than "
                                                 f"{complete.name} (`feat extract --force` or deleting it clears "
                                                 "it)", False))
    jobs = set()
    if manifests:
        try:
            jobs = {manifest.job for manifest in cache.shard_manifests(name)}
        except (DamagedFile, FeatError):
            pass  # named above
    if len(jobs) > 1:
        report.problems.append(Problem(folder, f"shard manifests of {len(jobs)} different sharded runs: all but one "
                                               "belong to no run (re-run every shard of one of them)", False))
    if parts and not manifests:
        report.problems.append(Problem(folder, f"{len(parts)} committed part(s) of an unfinished extraction: the "
                                               "next `feat extract` resumes them", False))


def _verify_run(folder: Path, report: VerifyReport) -> None:
    from feat.fuse import artifacts as art

    for name in (art.CONFIG, art.MODEL, art.METRICS):
        path = folder / name
        if not path.exists():
            unfinished = name == art.METRICS  # a run killed before its end (`feat ablate` redoes it)
            report.problems.append(Problem(path, "missing: an unfinished run" if unfinished else
                                           f"missing: {folder} is not a complete run", not unfinished))
            continue
        report.files += 1
        _add_usage(report, "runs", path)
        try:
            art.load_model(path) if name == art.MODEL else art.read_json(path)
        except InputError as exc:
            what = str(exc).split("; ")[0]
            named = Path(what.split(" ", 1)[0])  # a config.json that does not match the weights names itself
            report.problems.append(Problem(named, what.replace(f"{named} ", "", 1), True))


def _add_usage(report: VerifyReport, kind: str, path: Path) -> None:
    try:
        report.usage[kind] = report.usage.get(kind, 0) + path.stat().st_size
    except OSError:
        pass
