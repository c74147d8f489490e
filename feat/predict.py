"""`feat predict`: label new rows with a trained run (`feat fuse` or `feat finetune`).

The rows are encoded by the run's own encoders through the extraction machinery, into a cache of their own
(default RUN/predict-cache): the same preprocessing, batching, bad-image policies and reports as `feat
extract`, and a second call on the same rows encodes nothing. Every encoder must make exactly the features
the run was trained on: its fingerprint is compared with the one in the run's config.json and a difference
is refused. Rows the run's training cache (or a dataset cache named by --cache) already holds under the same
fingerprint, id and content are copied, not encoded again. TF-IDF transforms with the fit stored in the run's cache, never refitted on the new rows; a
fine-tuned run's encoders carry its fine-tuned weights. Then the run's standardisation, missing-value rule
and head.

Output: id, pred, one probability column p_<class> per class, and `reason` (why a row has no prediction, or
which of its inputs was zero-filled; empty otherwise). One line per input row, in the input order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from feat.data import PREDICT
from feat.errors import InputError

PREDICT_CACHE = "predict-cache"


@dataclass
class PredictSpec:
    run: Path  # a `feat fuse` or `feat finetune` run folder
    data: Path  # the rows to label (CSV/TSV/Parquet); split and label columns are not needed
    out: Path  # the predictions CSV to write
    # the new rows' feature cache (default: RUN/predict-cache); a cache holding a dataset (train/dev/test rows) is
    # only read from: its rows are reused and the new rows' features go to RUN/predict-cache
    cache: Path | None = None
    columns: dict = field(default_factory=dict)  # id/text/image column names that differ from the run's cache
    image_root: Path | None = None  # image paths are relative to this (default: the data file's folder)
    allow_outside_root: bool = False  # accept image paths that resolve outside image_root
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 32  # items per forward pass
    num_workers: int = 0  # image decoding processes
    on_bad_image: str = "skip"  # as `feat extract`: fail | skip (no prediction) | zero (zero vector)


@dataclass
class PredictReport:
    out: Path
    cache: Path
    rows: int
    predicted: int
    unpredicted: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    extract: list = field(default_factory=list)  # the ExtractReports of the encoding


def predict(spec: PredictSpec) -> PredictReport:
    from feat.cache import FeatureCache
    from feat.extract.runner import ExtractConfig, extract
    from feat.finetune.saved import check_fingerprint, load_run

    saved = load_run(spec.run)
    encoders = saved.encoders()
    for feature, encoder in encoders.items():
        check_fingerprint(feature, encoder, saved.fingerprint(feature), f"run {spec.run}")
    cache, reuse = _caches(spec, saved)
    columns = replace(_run_columns(saved, encoders.values()), **{k: v for k, v in spec.columns.items() if v})
    # One extraction per (compute dtype, stored dtype): the runner takes one of each per call.
    groups: dict[tuple[str, str], list[str]] = {}
    for feature in saved.features:
        fingerprint = saved.fingerprint(feature)
        groups.setdefault((fingerprint["compute_dtype"], fingerprint["store_dtype"]), []).append(feature)
    reports = []
    for (compute, store), names in groups.items():
        config = ExtractConfig(data=Path(spec.data), cache=cache, encoders=names, columns=columns,
                               image_root=spec.image_root, allow_outside_root=spec.allow_outside_root,
                               device=spec.device, dtype=compute, store_dtype=store, batch_size=spec.batch_size,
                               num_workers=spec.num_workers, on_bad_image=spec.on_bad_image,
                               # RUN/predict-cache holds only this run's features: a stale set there is
                               # re-encoded; a cache the user names is never overwritten silently.
                               force=cache == Path(spec.run) / PREDICT_CACHE, predict=True, reuse_from=reuse)
        reports.append(extract(config, {name: encoders[name] for name in names}))

    store = FeatureCache(cache)
    ids = store.read_items()["id"].to_numpy(dtype=object)
    matrices, valid, reasons = {}, {}, {}
    for feature in saved.features:
        rows = store.read(feature).rows
        if len(rows.ids) != len(ids) or not np.array_equal(rows.ids, ids):
            raise InputError(f"cache {cache}: feature set '{feature}' is not aligned with the rows just encoded")
        matrices[feature] = rows.matrix.astype(np.float32) if rows.matrix.dtype != np.float32 else rows.matrix
        valid[feature], reasons[feature] = rows.valid.astype(bool), rows.reason
    frame, unpredicted = _predict_frame(saved, ids, matrices, valid, reasons)
    from feat.fuse import artifacts as art

    out = Path(spec.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    art.write_csv(out, frame)
    return PredictReport(out, cache, len(ids), len(ids) - len(unpredicted), unpredicted, reports)


def _caches(spec: PredictSpec, saved) -> tuple[Path, list[Path]]:
    """Where the new rows' features go, and the caches their already-encoded rows are copied from. Encoding new
    rows into a cache replaces its table, so a cache with train/dev/test rows is only read from."""
    default = Path(spec.run) / PREDICT_CACHE
    reuse = [saved.cache]
    if spec.cache is None:
        return default, reuse
    if _holds_dataset(Path(spec.cache)):
        return default, [Path(spec.cache), *reuse]
    return Path(spec.cache), reuse


def _holds_dataset(cache: Path) -> bool:
    from feat.cache import FeatureCache

    store = FeatureCache(cache)
    return store.items_path.exists() and bool(set(store.read_items()["split"]) - {PREDICT})


def _run_columns(saved, encoders):
    """The column names the run's cache was extracted with (the new table is most likely laid out alike), for
    the inputs the run's encoders read: a text column an image-only run never used is not required."""
    import json

    from feat.cache import FeatureCache
    from feat.data import Columns

    store = FeatureCache(saved.cache)
    if not store.items_path.exists():
        return Columns()
    value = store.items_attrs().get("columns")
    columns = Columns(**(json.loads(value) if isinstance(value, str) else value or {}))
    read = {m for encoder in encoders for m in ("text", "image") if m in encoder.modality}
    return replace(columns, **{slot: getattr(Columns(), slot) for slot in ("text", "image") if slot not in read})


def _predict_frame(saved, ids: np.ndarray, matrices: dict, valid: dict, reasons: dict):
    from feat.fuse.data import FusionData, prepare
    import torch

    from feat.fuse.train import Inputs, deterministic, predict as head_logits

    features, classes = saved.features, saved.classes
    train = saved.train_config()
    data = FusionData(features, ids, np.full(len(ids), PREDICT, dtype=object), np.zeros(len(ids), np.int64),
                      classes, matrices, valid, {}, {})
    inputs = Inputs(prepare(data, saved.stats(), train.missing))
    usable = np.logical_and.reduce([valid[f] for f in features]) if train.missing == "drop" else np.ones(len(ids), bool)
    rows = np.flatnonzero(usable)
    head = saved.head()
    with deterministic(train.seed, train.precision):  # as `feat fuse` evaluated it: the same floats
        logits = head_logits(head, inputs, rows)
    prob = np.full((len(ids), len(classes)), np.nan)
    if len(rows):
        prob[rows] = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    why = ["; ".join(f"{f}: {reasons[f][i]}" for f in features if reasons[f][i]) for i in range(len(ids))]
    frame = pd.DataFrame({"id": ids, "pred": [classes[k] if ok else "" for k, ok in
                                              zip(np.nan_to_num(prob, nan=-1).argmax(axis=1), usable)]})
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = prob[:, k]
    frame["reason"] = [w if ok or w else "invalid input" for w, ok in zip(why, usable)]
    unpredicted = [(str(ids[i]), frame["reason"][i]) for i in np.flatnonzero(~usable)]
    return frame, unpredicted
