"""The rows `feat finetune` trains on and their batches.

The rows are the run's own (same ids, splits and labels, read from its cache exactly as `feat fuse` did), with
each row's raw text and image path from --data. Before any model is loaded, every live input is checked
against the content hashes its cached features were made from: a text or image that changed since
extraction is named here, not discovered later as a parity failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from feat.errors import FeatError, InputError


@dataclass
class RowSet:
    ids: np.ndarray  # (n,) item ids, in the cache's order
    split: np.ndarray  # (n,) train | dev | test
    y: np.ndarray  # (n,) int64 index into `classes`
    classes: list[str]
    texts: list[str] | None  # from --data; None when the table has no text column
    image_paths: list[str] | None  # resolved paths ("" when refused)
    image_errors: list[str] | None  # why a path was refused ("" otherwise)
    valid: dict[str, np.ndarray]  # per feature, the cache's valid flags (the run zeroed or dropped the others)
    cached: dict  # per feature, the raw cached rows (float32 or CSR): fixed inputs and the parity diagnosis
    report: dict  # as a fuse run's config.json "data"

    def positions(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_rows(saved, cache: Path, data: Path, live: dict, image_root: Path | None = None,
              allow_outside_root: bool = False) -> RowSet:
    """The run's rows with their raw inputs; `live` (feature -> unloaded encoder) are checked against the cache."""
    from feat.cache import FeatureCache, fingerprint_id
    from feat.data import Columns, load_table
    from feat.fuse.config import CVConfig, from_dict
    from feat.fuse.data import load_data

    store = FeatureCache(cache)
    for feature in saved.features:
        stored = store.fingerprint(feature) if store.root.is_dir() else None
        if stored is None:
            raise InputError(f"feature set '{feature}' of run {saved.path} is not in cache {cache} (use --cache)")
        if fingerprint_id(stored) != fingerprint_id(saved.base_fingerprint(feature)):
            raise InputError(f"feature set '{feature}' in cache {cache} was re-extracted with other settings since "
                             f"run {saved.path} was trained (fingerprint differs)")
    train = saved.train_config()
    valid_from = saved.config["valid_from"]
    cv = from_dict(CVConfig, saved.config.get("cv", {}))
    fusion = load_data(cache, valid_from, saved.config["label"], train.missing, valid_from, classes=saved.classes,
                       group_col=cv.group_col)
    fusion = fusion.with_partition(cv, saved.config.get("partition", 0))  # a CV run: its own train/validation folds
    if fusion.items_digest() != saved.config["items_digest"]:
        raise InputError(f"the items of cache {cache} (ids, splits or labels) differ from the ones run {saved.path} "
                         "was trained on")
    fusion = fusion.select(saved.features)

    attrs = store.items_attrs()
    columns = Columns(**_json(attrs.get("columns"), {}))
    root = image_root or (Path(attrs["image_root"]) if attrs.get("image_root") else None)
    table = load_table(data, columns, root, allow_outside_root)
    position = {item: i for i, item in enumerate(table.ids)}
    missing = [item for item in fusion.ids if item not in position]
    if missing:
        raise InputError(f"{data}: {len(missing)} of the run's rows are not in this table (ids "
                         f"{', '.join(missing[:5])}); --data must be the table the run's cache was extracted from")
    frame = table.frame.iloc[[position[item] for item in fusion.ids]].reset_index(drop=True)
    texts = frame["text"].tolist() if table.has_text else None
    paths = frame["image_path"].tolist() if table.has_image else None
    errors = frame["image_error"].tolist() if table.has_image else None
    _check_content(store, fusion.ids, live, texts, paths, errors, data)
    return RowSet(fusion.ids, fusion.split, fusion.y, fusion.classes, texts, paths, errors, fusion.valid,
                  fusion.matrices, fusion.report)


def _json(value, default):
    import json

    return json.loads(value) if isinstance(value, str) else (value or default)


def _check_content(store, ids: np.ndarray, live: dict, texts, paths, errors, data: Path) -> None:
    """Each live input's row hashes (text, image bytes) must be the ones its cached features were made from."""
    from feat.extract.images import image_digest

    digests = None
    for feature, encoder in live.items():
        needs_image = "image" in encoder.modality
        if "text" in encoder.modality and texts is None:
            raise InputError(f"{data}: feature '{feature}' needs the text column, and the table has none")
        if needs_image and paths is None:
            raise InputError(f"{data}: feature '{feature}' needs the image column, and the table has none")
        if needs_image and digests is None:
            # As the extraction hashed them: a refused path is hashed as its reason.
            digests = [error and f"refused:{error}" or image_digest(path) for path, error in zip(paths, errors)]
        flags = store.read_flags(feature)
        stored = dict(zip(flags.ids.tolist(), flags.content_hash.tolist()))
        now = [encoder.row_hash(texts[i] if texts is not None else None, digests[i] if digests else None)
               for i in range(len(ids))]
        changed = [item for item, digest in zip(ids, now) if stored.get(item) != digest]
        if changed:
            what = {"text": "texts", "image": "images", "text+image": "texts or images"}[encoder.modality]
            raise InputError(f"input '{feature}': the {what} of {len(changed)} row(s) in {data} differ from the ones "
                             f"its cached features were made from (ids {', '.join(changed[:5])}); fine-tuning must "
                             "start from the same inputs as the run")


@dataclass
class Batch:
    positions: np.ndarray  # rows of the RowSet
    texts: list[str] | None
    pixels: dict  # feature -> (good rows, C, H, W) tensor of its encoder's transform, or None
    decoded: dict  # feature -> (rows,) bool array: the image decoded and transformed
    reasons: list[str]  # why a row's image did not decode ("" when it did)


class _Examples:
    """Row position -> (position, {feature: pixels or None}, reason); each image is decoded once for all the
    image encoders (each applies its own transform). Runs in DataLoader workers."""

    def __init__(self, paths: list[str] | None, errors: list[str] | None, transforms: dict[str, Callable]):
        self.paths, self.errors, self.transforms = paths, errors, transforms

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else 0

    def __getitem__(self, position: int):
        from feat.extract.images import decode_image

        if not self.transforms:
            return position, {}, ""
        reason = self.errors[position]
        image = None
        if not reason:
            image, reason = decode_image(self.paths[position])
        if image is None:
            return position, {f: None for f in self.transforms}, reason
        try:
            return position, {f: transform(image) for f, transform in self.transforms.items()}, ""
        except Exception as exc:  # noqa: BLE001 - reported per row, as in extraction
            return position, {f: None for f in self.transforms}, f"image preprocessing failed: {str(exc)[:120]}"


def _collate(samples):
    import torch

    positions = [s[0] for s in samples]
    pixels, decoded = {}, {}
    for feature in samples[0][1]:
        good = [s[1][feature] for s in samples if s[1][feature] is not None]
        pixels[feature] = torch.stack(good) if good else None
        decoded[feature] = np.array([s[1][feature] is not None for s in samples])  # host-side bookkeeping
    return positions, pixels, decoded, [s[2] for s in samples]


class _Positions:
    """Indexable stand-in dataset when no input needs images (positions only)."""

    def __getitem__(self, position: int):
        return position, {}, ""


def batches(rows: RowSet, chunks: list[np.ndarray], transforms: dict[str, Callable], num_workers: int = 0,
            pin_memory: bool = False) -> Iterator[Batch]:
    """The batches `chunks` (lists of row positions), images decoded in `num_workers` processes."""
    import torch
    from torch.utils.data import DataLoader

    if not chunks:
        return
    dataset = _Examples(rows.image_paths, rows.image_errors, transforms) if transforms else _Positions()
    workers = num_workers if transforms else 0  # nothing to decode: workers would only cost start-up time
    # Its own generator: a loader draws a seed from the global RNG when it starts iterating, which would shift
    # the dropout masks of a resumed run (its loader starts mid-epoch, after the RNG state was restored).
    loader = DataLoader(dataset, batch_sampler=[c.tolist() for c in chunks], collate_fn=_collate,
                        num_workers=workers, pin_memory=pin_memory and bool(transforms),
                        prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(0))
    for positions, pixels, decoded, reasons in loader:
        positions = np.asarray(positions, dtype=np.int64)
        texts = [rows.texts[p] for p in positions] if rows.texts is not None else None
        yield Batch(positions, texts, pixels, decoded, reasons)


def epoch_chunks(positions: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled batches of one epoch: a function of (seed, epoch) only, so a resumed run rebuilds the
    batches of the epoch it stopped in and skips the ones done."""
    rng = np.random.default_rng([seed, epoch])
    order = positions[rng.permutation(len(positions))]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def ordered_chunks(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]


def require_decoded(feature: str, rows: RowSet, batch: Batch) -> None:
    """A row whose cached features are valid must decode now too (the content check makes this rare)."""
    decoded = batch.decoded[feature]
    bad = [i for i, p in enumerate(batch.positions) if rows.valid[feature][p] and not decoded[i]]
    if bad:
        listed = "; ".join(f"{rows.ids[batch.positions[i]]}: {batch.reasons[i]}" for i in bad[:5])
        raise FeatError(f"input '{feature}': {len(bad)} image(s) valid in the cache cannot be decoded now ({listed})")
