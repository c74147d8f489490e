"""Cross-validation folds over train+dev, the same for every configuration of a run (paired comparisons).

Rows are ordered by id before the split, so the folds depend on the items, not on their order in the table.
Test rows never enter a fold: they are scored once, by the models of the folds.
"""

from __future__ import annotations

import numpy as np

from feat.errors import InputError
from feat.fuse.config import CVConfig


def assign_folds(ids: np.ndarray, split: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                 cv: CVConfig) -> np.ndarray:
    """(repeats, n) fold index of every row: 0 .. K-1 for train and dev rows, -1 for test rows.
    Stratified by label; with `groups`, every group stays in one fold (sklearn's StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    pool = np.flatnonzero(split != "test")
    pool = pool[np.argsort(ids[pool].astype(str), kind="stable")]
    _check(y[pool], groups[pool] if groups is not None else None, cv.folds)
    folds = np.full((cv.repeats, len(ids)), -1, dtype=np.int64)
    for r in range(cv.repeats):
        if groups is None:
            splitter = StratifiedKFold(cv.folds, shuffle=True, random_state=cv.seed + r)
            parts = splitter.split(np.zeros(len(pool)), y[pool])
        else:
            splitter = StratifiedGroupKFold(cv.folds, shuffle=True, random_state=cv.seed + r)
            parts = splitter.split(np.zeros(len(pool)), y[pool], groups[pool])
        for f, (_, validation) in enumerate(parts):
            folds[r, pool[validation]] = f
    return folds


def _check(y: np.ndarray, groups: np.ndarray | None, k: int) -> None:
    if k < 2:
        raise InputError(f"--cv takes at least 2 folds, not {k}")
    counts = np.bincount(y)
    if counts[counts > 0].min() < k:
        raise InputError(f"--cv {k}: the rarest class has {counts[counts > 0].min()} rows in train+dev; every "
                         f"fold needs one, so use at most {counts[counts > 0].min()} folds")
    if groups is not None and len(set(groups)) < k:
        raise InputError(f"--cv {k} with --group-col: only {len(set(groups))} groups in train+dev")


def relabel(split: np.ndarray, folds: np.ndarray, repeat: int, fold: int) -> np.ndarray:
    """The split array of one partition: the fold's rows become `dev` (validation), the other train and dev rows
    `train`; test rows stay test."""
    out = np.where(split == "test", "test", "train").astype(object)
    out[folds[repeat] == fold] = "dev"
    return out
