"""A tiny random feature cache (no encoder, no images) for tests and quick experiments.

Two dense inputs `a` (text-like) and `b` (image-like) and a sparse `s` (TF-IDF-like CSR). The label is the
sign of a linear score that needs both `a` and `b`, so fusion heads can separate it and each input alone
cannot fully.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feat.cache import FeatureCache, FeatureRows


MODALITY = {"a": "text", "b": "image", "s": "text"}  # what each toy input stands for in the answer


def toy_features(n: int = 160, seed: int = 0, dims=(8, 6), sparse_dim: int = 30):
    """(frame of id/split/label, {name: matrix}) with the label carried jointly by `a` and `b`."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dims[0])).astype(np.float32)
    b = rng.normal(size=(n, dims[1])).astype(np.float32)
    score = a[:, 0] + a[:, 1] + b[:, 0] - b[:, 1]
    label = np.where(score > 0, "yes", "no")
    s = sp.random(n, sparse_dim, density=0.15, format="csr", random_state=seed, dtype=np.float32)
    s = sp.csr_matrix(s + sp.csr_matrix((np.abs(a[:, :1]) * (score > 0)[:, None]).astype(np.float32)) @ sp.csr_matrix(
        np.eye(1, sparse_dim, dtype=np.float32)))
    split = np.array(["train", "train", "train", "dev", "test"] * (n // 5 + 1))[:n]
    frame = pd.DataFrame({"id": [f"i{i:04d}" for i in range(n)], "split": split,
                          "text": [f"text {i}" for i in range(n)], "label": label})
    return frame, {"a": a, "b": b, "s": s}


def write_toy_cache(root: str | Path, n: int = 160, seed: int = 0, invalid: dict[str, list[int]] | None = None,
                    labels: list[str] | None = None) -> Path:
    """Write a cache with feature sets a, b, s; `invalid` marks rows invalid per feature; `labels` overrides."""
    frame, matrices = toy_features(n, seed)
    if labels is not None:
        frame["label"] = labels
    cache = FeatureCache(root)
    cache.write_items(frame, {"source": "toy"})
    ids = frame["id"].tolist()
    for name, matrix in matrices.items():
        valid = np.ones(n, dtype=bool)
        valid[(invalid or {}).get(name, [])] = False
        reason = np.where(valid, "", "unreadable").astype(object)
        rows = FeatureRows(np.array(ids, dtype=object), np.array(ids, dtype=object), valid, reason, matrix)
        fingerprint = {"encoder": f"toy-{name}", "modality": MODALITY[name], "model": "toy", "weights": f"seed{seed}", "preprocessing": {},
                       "compute_dtype": "float32", "store_dtype": "float32", "feat_version": "test"}
        cache.commit_part(name, rows, fingerprint)
        cache.finalize(name, ids, ids, fingerprint, {}, f"toy-{name}")
    return Path(root)
