"""Labels and feature matrices of a cache, loaded into memory once, and the train-only standardisation.

Rows follow the cache's item order. Rows are removed here, never later, so that every run on the same
`FusionData` (an ablation) sees exactly the same dev and test items:
- rows whose label is empty (reported per split);
- with `missing="drop"`, rows invalid in any of `valid_from` (the features of the whole ablation).
With `missing="zero"` invalid rows stay; `prepare` zeroes them after standardisation and appends a
0/1 missing-indicator column to each input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from feat.cache import FeatureCache, fingerprint_id
from feat.errors import FeatError, InputError
from feat.fuse.config import CVConfig
from feat.fuse.folds import assign_folds, relabel

SPLITS = ("train", "dev", "test")


@dataclass
class FusionData:
    features: list[str]
    ids: np.ndarray  # (n,) item ids
    split: np.ndarray  # (n,) train | dev | test
    y: np.ndarray  # (n,) int64 index into `classes`
    classes: list[str]  # sorted train labels; for 2 classes the second is the positive class (--positive-label)
    matrices: dict[str, np.ndarray | sp.csr_matrix]  # raw cached rows, float32
    valid: dict[str, np.ndarray]  # (n,) bool per feature
    fingerprints: dict[str, dict]  # {"id": ..., "fingerprint": {...}} per feature
    report: dict = field(default_factory=dict)  # rows dropped and why, rows per split
    memo: dict = field(default_factory=dict)  # per-feature standardisation, shared by `select` views
    groups: np.ndarray | None = None  # (n,) --group-col values: a group never straddles two CV folds
    partition: str = "split"  # which train/dev partition `split` is: the data's own, or a CV fold (memo key)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def select(self, features: list[str]) -> "FusionData":
        """The same rows restricted to some of the loaded features (ablation runs share one load)."""
        return replace(self, features=list(features), matrices={f: self.matrices[f] for f in features},
                       valid={f: self.valid[f] for f in features},
                       fingerprints={f: self.fingerprints[f] for f in features})

    def subset(self, rows: np.ndarray) -> "FusionData":
        """The same features restricted to some rows (their statistics must come from elsewhere)."""
        return replace(self, ids=self.ids[rows], split=self.split[rows], y=self.y[rows],
                       matrices={f: m[rows] for f, m in self.matrices.items()},
                       valid={f: v[rows] for f, v in self.valid.items()},
                       groups=None if self.groups is None else self.groups[rows], memo={})

    def with_partition(self, cv: CVConfig, index: int) -> "FusionData":
        """The view whose train/dev are CV partition `index` (repeat index // K, fold index % K) of train+dev;
        `cv.folds == 0` is the data's own split. Every configuration gets the same folds."""
        if not cv.folds:
            return self
        key = ("folds", cv)
        if key not in self.memo:
            self.memo[key] = assign_folds(self.ids, self.split, self.y, self.groups, cv)
        repeat, fold = divmod(index, cv.folds)
        return replace(self, split=relabel(self.split, self.memo[key], repeat, fold),
                       partition=f"cv{cv.folds}x{cv.repeats}s{cv.seed}g{cv.group_col}/{repeat}.{fold}")

    def items_digest(self) -> str:
        """Which items, in which split, with which label: part of a run's identity."""
        digest = hashlib.sha256()
        for item, split, label in zip(self.ids, self.split, self.y):
            digest.update(f"{item}\x1f{split}\x1f{self.classes[label]}\x1e".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()[:16]


# More classes than this is almost surely a numeric or free-text column picked as --label by mistake.
MAX_CLASSES = 1000


def load_data(cache_dir, features: list[str], label: str, missing: str = "drop",
              valid_from: list[str] | None = None, classes: list[str] | None = None,
              positive: str | None = None, group_col: str | None = None) -> FusionData:
    """Read items and feature sets once. `classes` (from a saved run) pins the label order; `positive` names
    the positive class of a binary task (it becomes the second class); `group_col` is read for CV folds."""
    if not features:
        raise InputError("no features given (e.g. --features minilm,effnet)")
    if len(set(features)) != len(features):
        raise InputError(f"a feature set is listed twice: {', '.join(features)}")
    cache = FeatureCache(cache_dir)
    items = cache.read_items()
    if label not in items.columns:
        extra = [c for c in items.columns if c not in ("id", "split", "text", "image", "image_path", "image_error")]
        raise InputError(f"label column '{label}' is not in the cache's items (columns: {', '.join(extra) or 'none'})")
    if group_col is not None and group_col not in items.columns:
        raise InputError(f"--group-col '{group_col}' is not in the cache's items (columns: "
                         f"{', '.join(c for c in items.columns if c not in ('image_path', 'image_error'))})")
    matrices, valid, prints = {}, {}, {}
    item_ids = items["id"].to_numpy(dtype=object)
    for name in dict.fromkeys([*features, *(valid_from or [])]):
        fs = cache.read_matrix(name, expected_ids=item_ids)
        if len(fs.rows.ids) != len(items) or not np.array_equal(fs.rows.ids, item_ids):
            raise FeatError(f"feature set '{name}' is not aligned with the cache's items; re-run `feat extract`")
        matrix = fs.rows.matrix
        matrices[name] = matrix.astype(np.float32) if matrix.dtype != np.float32 else matrix
        valid[name] = fs.rows.valid.astype(bool)
        prints[name] = {"id": fingerprint_id(fs.fingerprint), "fingerprint": fs.fingerprint}

    labels = items[label].fillna("").astype(str).str.strip().to_numpy(dtype=object)
    split = items["split"].to_numpy(dtype=object)
    keep = labels != ""
    report = {"unlabelled_dropped": {s: int(((~keep) & (split == s)).sum()) for s in SPLITS}}
    if missing == "drop":
        ok = np.logical_and.reduce([valid[f] for f in dict.fromkeys([*features, *(valid_from or [])])])
        report["invalid_dropped"] = {s: int((keep & ~ok & (split == s)).sum()) for s in SPLITS}
        keep &= ok
    elif missing == "zero":
        report["invalid_zeroed"] = {f: {s: int((keep & ~valid[f] & (split == s)).sum()) for s in SPLITS}
                                    for f in features}
    else:
        raise InputError(f"--missing must be drop or zero, not '{missing}'")

    classes = classes or _ordered_classes(sorted(set(labels[keep & (split == "train")])), positive, label)
    if len(classes) < 2:
        raise InputError(f"label '{label}' has {len(classes)} distinct value(s) in the train split; need at least 2")
    n_train = int((keep & (split == "train")).sum())
    if len(classes) > MAX_CLASSES or (len(classes) > 20 and len(classes) > n_train / 2):
        raise InputError(f"label '{label}' has {len(classes)} distinct values in {n_train} train rows (e.g. "
                         f"{', '.join(classes[:3])}): it looks continuous or like an identifier, and feat "
                         "classifies categorical labels; bin it into classes first")
    known = set(classes)
    unseen = sorted(set(labels[keep]) - known)
    if unseen:
        where = sorted(set(split[keep & np.isin(labels, unseen)]))
        raise InputError(f"label '{label}': value(s) {unseen[:5]} in {'/'.join(where)} never occur in train "
                         f"(train classes: {', '.join(classes)})")
    index = np.flatnonzero(keep)
    position = {c: i for i, c in enumerate(classes)}
    data = FusionData(list(features), items["id"].to_numpy(dtype=object)[index], split[index],
                      np.array([position[c] for c in labels[index]], dtype=np.int64), list(classes),
                      {f: m[index] for f, m in matrices.items()}, {f: v[index] for f, v in valid.items()},
                      prints, report,
                      groups=items[group_col].fillna("").astype(str).to_numpy(dtype=object)[index] if group_col else None)
    report["rows"] = {s: int((data.split == s).sum()) for s in SPLITS}
    for s in SPLITS:
        if report["rows"][s] == 0:
            raise InputError(f"no labelled, usable rows in the {s} split (label '{label}'); "
                             "fusion needs train, dev (early stopping) and test")
    return data


def _ordered_classes(classes: list[str], positive: str | None, label: str) -> list[str]:
    """Sorted labels; for a binary task the positive class goes second (binary F1, AUROC and thresholds are
    of the second class)."""
    if positive is None:
        return classes
    if positive not in classes:
        raise InputError(f"--positive-label '{positive}' is not a value of '{label}' in the train split "
                         f"(values: {', '.join(classes[:10])})")
    if len(classes) != 2:
        raise InputError(f"--positive-label needs a binary label; '{label}' has {len(classes)} classes")
    return [c for c in classes if c != positive] + [positive]


def describe_report(report: dict) -> str:
    """One line: usable rows per split and what was dropped or zero-filled, and why."""
    rows = ", ".join(f"{s} {n}" for s, n in report["rows"].items())
    parts = [f"rows: {rows}"]
    unlabelled = sum(report["unlabelled_dropped"].values())
    if unlabelled:
        parts.append(f"dropped {unlabelled} without a label ({_per_split(report['unlabelled_dropped'])})")
    if sum(report.get("invalid_dropped", {}).values()):
        parts.append(f"dropped {sum(report['invalid_dropped'].values())} invalid in the cache "
                     f"({_per_split(report['invalid_dropped'])})")
    for feature, counts in report.get("invalid_zeroed", {}).items():
        if sum(counts.values()):
            parts.append(f"zero-filled {sum(counts.values())} invalid {feature} rows ({_per_split(counts)})")
    return "; ".join(parts)


def _per_split(counts: dict) -> str:
    return ", ".join(f"{s} {n}" for s, n in counts.items() if n)


def fit_stats(data: FusionData) -> dict[str, dict[str, np.ndarray]]:
    """Per-input mean and scale from the valid TRAIN rows only (float32, what `prepare` applies).

    Sparse inputs are only scaled (mean 0): centring would densify them, as in sklearn's with_mean=False.
    Memoised per feature: the runs of an ablation share them.
    """
    for f in data.features:
        if ("stats", f, data.partition) not in data.memo:
            data.memo[("stats", f, data.partition)] = _feature_stats(data, f)
    return {f: data.memo[("stats", f, data.partition)] for f in data.features}


def _feature_stats(data: FusionData, f: str) -> dict[str, np.ndarray]:
    train = data.rows("train")
    matrix = data.matrices[f][train[data.valid[f][train]]]
    if sp.issparse(matrix):
        mean = np.zeros(matrix.shape[1])
        var = (np.asarray(matrix.multiply(matrix).mean(axis=0), dtype=np.float64).ravel()
               - np.asarray(matrix.mean(axis=0), dtype=np.float64).ravel() ** 2)
    else:
        mean = matrix.astype(np.float64).mean(axis=0)
        var = matrix.astype(np.float64).var(axis=0)
    scale = np.sqrt(np.maximum(var, 0))
    scale[constant_columns(scale)] = 1.0  # constant columns are left as they are
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}


def constant_columns(scale: np.ndarray) -> np.ndarray:
    """Columns whose spread is float rounding noise, not signal: a std below 1e-5 of the median column's.
    MiniLM has one (values ~1e-8, std 8e-9 against a typical 0.05): divided by its std it became noise of unit
    size for the head to learn, and under fine-tuning a change of 1e-5 in it became an input of 1,000."""
    typical = np.median(scale[scale > 0]) if (scale > 0).any() else 0.0
    return scale < max(1e-12, 1e-5 * typical)


def prepare(data: FusionData, stats: dict | None, missing: str) -> list[np.ndarray | sp.csr_matrix]:
    """The matrices a head sees: standardised with `stats`, invalid rows zeroed + indicator (missing=zero)."""
    out = []
    for f in data.features:
        matrix = data.matrices[f]
        if stats is not None:
            mean, scale = stats[f]["mean"], stats[f]["scale"]
            if sp.issparse(matrix):
                matrix = sp.csr_matrix(matrix.multiply((1 / scale)[None, :]), dtype=np.float32)
            else:
                matrix = (matrix - mean) / scale
        if missing == "zero":
            invalid = ~data.valid[f]
            flag = invalid.astype(np.float32)[:, None]
            if sp.issparse(matrix):
                matrix = sp.diags((~invalid).astype(np.float32)) @ matrix
                matrix = sp.hstack([matrix, sp.csr_matrix(flag)], format="csr", dtype=np.float32)
            else:
                matrix = np.where(invalid[:, None], np.float32(0), matrix)
                matrix = np.hstack([matrix, flag]).astype(np.float32)
        out.append(matrix if sp.issparse(matrix) else np.ascontiguousarray(matrix, dtype=np.float32))
    return out
