"""`feat extract`: table -> encoders -> cache, resumable and incremental.

For each encoder: compute the fingerprint (no model load) and a content hash per row, reuse every committed
row whose id and hash match, encode the rest in batches (texts sorted by length, images decoded in
DataLoader workers), commit finished batches durably as they come, then merge into one aligned file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from feat.cache import FeatureCache, FeatureRows
from feat.console import console, progress_bar
from feat.data import Columns, Table, load_table
from feat.errors import FeatError, InputError
from feat.extract.base import Encoder, EncoderOptions, FittedEncoder, ImageEncoder, Runtime, TextEncoder
from feat.extract.registry import create_encoder, encoder_class

BAD_IMAGE_POLICIES = ("fail", "skip", "zero")
STORE_DTYPES = ("float32", "float16")


@dataclass
class ExtractConfig:
    data: Path  # a CSV/TSV/Parquet file with a split column, or a folder of per-split files
    cache: Path  # the cache folder (created if absent)
    encoders: list[str]  # registry names, encoded in this order
    columns: Columns = field(default_factory=Columns)
    image_root: Path | None = None  # image paths are relative to this (default: the data file's folder)
    allow_outside_root: bool = False  # accept image paths that resolve outside image_root
    options: EncoderOptions = field(default_factory=EncoderOptions)  # given to each encoder that takes them
    name: str | None = None  # feature-set name in the cache (default: the encoder name); one encoder only
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # compute dtype: auto | float32 | bfloat16 | float16
    store_dtype: str = "float32"  # stored vectors: float32 | float16
    batch_size: int = 32
    num_workers: int = 0  # image decoding processes; 0 decodes in the main process
    on_bad_image: str = "skip"  # fail | skip (row invalid) | zero (zero vector, row kept valid)
    force: bool = False  # re-encode a feature set whose fingerprint changed instead of refusing
    commit_every: int = 1024  # rows per durable commit (whole batches), bounding the work a crash can lose
    lock_timeout: float = 0  # seconds to wait for another process holding the cache lock


@dataclass
class EncoderReport:
    name: str
    rows: int = 0
    encoded: int = 0
    reused: int = 0
    invalid: int = 0
    zero_filled: int = 0
    batches: int = 0  # forward passes run
    seconds: float = 0.0
    dim: int = 0

    def line(self) -> str:
        what = "no forward pass, all rows reused from cache" if not self.encoded else \
            f"{self.encoded} encoded in {self.batches} batches"
        extra = f", {self.zero_filled} zero-filled" if self.zero_filled else ""
        return (f"{self.name}: {self.rows} rows ({what}; {self.reused} reused, {self.invalid} invalid{extra}), "
                f"dim {self.dim}, {self.seconds:.1f} s")


@dataclass
class ExtractReport:
    cache: Path
    encoders: list[EncoderReport]
    notes: list[str]
    bad_rows: int = 0
    seconds: float = 0.0


def extract(config: ExtractConfig) -> ExtractReport:
    """Encode `config.data` with every encoder of `config.encoders` into `config.cache`."""
    started = time.perf_counter()
    _check_config(config)
    encoders = _create_encoders(config)
    needs_image = any(e.modality == "image" for e in encoders)
    table = load_table(config.data, config.columns, config.image_root, config.allow_outside_root)
    _check_table(table, encoders)
    from feat.extract.device import select_device, select_dtype

    device = select_device(config.device)
    runtime = Runtime(device=device, dtype=select_dtype(config.dtype, device))
    cache = FeatureCache(config.cache)
    reports = []
    with cache.lock(config.lock_timeout):
        cache.write_items(table.frame, {"source": str(table.source), "image_root": str(table.image_root),
                                        "columns": vars(config.columns)})
        digests = _image_digests(table) if needs_image else None
        for encoder in encoders:
            name = config.name or encoder.name
            reports.append(_extract_one(cache, table, encoder, name, config, runtime, digests))
        bad = cache.write_bad_rows()
    return ExtractReport(Path(config.cache), reports, table.notes, len(bad), time.perf_counter() - started)


def _check_config(config: ExtractConfig) -> None:
    if not config.encoders:
        raise InputError("no encoder given (use --encoder NAME, e.g. --encoder minilm)")
    if len(set(config.encoders)) != len(config.encoders):
        raise InputError("an encoder is listed twice")
    if config.on_bad_image not in BAD_IMAGE_POLICIES:
        raise InputError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}")
    if config.store_dtype not in STORE_DTYPES:
        raise InputError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)}")
    if config.batch_size < 1 or config.num_workers < 0 or config.commit_every < 1:
        raise InputError("--batch-size and --commit-every must be positive, --num-workers not negative")
    if len(config.encoders) > 1 and (config.options.model or config.name):
        raise InputError("--model and --name apply to one encoder: run one `feat extract` per overridden encoder")


def _create_encoders(config: ExtractConfig) -> list[Encoder]:
    """Give each encoder the options it takes; an option no chosen encoder takes is an error, not ignored."""
    classes = [encoder_class(name) for name in config.encoders]
    given = [f.name for f in fields(config.options) if getattr(config.options, f.name) is not None and f.name != "model"]
    for option in given:
        if not any(option in cls.accepts for cls in classes):
            raise InputError(f"--{option.replace('_', '-')} is not taken by {', '.join(config.encoders)}")
    encoders = []
    for name, cls in zip(config.encoders, classes):
        dropped = {f: None for f in given if f not in cls.accepts}
        encoders.append(create_encoder(name, replace(config.options, **dropped)))
    return encoders


def _check_table(table: Table, encoders: list[Encoder]) -> None:
    for encoder in encoders:
        if encoder.modality == "text" and not table.has_text:
            raise InputError(f"encoder '{encoder.name}' needs a text column '{table.columns.text}' "
                             "(use --text-col)")
        if encoder.modality == "image" and not table.has_image:
            raise InputError(f"encoder '{encoder.name}' needs an image column '{table.columns.image}' "
                             "(use --image-col)")


def _image_digests(table: Table) -> list[str]:
    from feat.extract.images import image_digest

    return [error and f"refused:{error}" or image_digest(path)
            for path, error in zip(table.frame["image_path"], table.frame["image_error"])]


def _extract_one(cache: FeatureCache, table: Table, encoder: Encoder, name: str, config: ExtractConfig,
                 runtime: Runtime, digests: list[str] | None) -> EncoderReport:
    started = time.perf_counter()
    report = EncoderReport(name, rows=len(table))
    texts = table.frame["text"].tolist() if table.has_text else [None] * len(table)
    if isinstance(encoder, FittedEncoder):
        encoder.fit_key([t for t, s in zip(texts, table.frame["split"]) if s == "train"])
    fingerprint = _fingerprint(encoder, runtime, config)
    stored = cache.fingerprint(name)
    if stored is not None and stored != fingerprint:
        if not config.force:
            raise InputError(f"cache {cache.root}: feature set '{name}' was made with a different fingerprint "
                             f"({_fingerprint_diff(stored, fingerprint)}); re-encode it with --force, or store the "
                             "new features under another --name")
        console.print(f"[yellow]{name}: fingerprint changed ({_fingerprint_diff(stored, fingerprint)}); "
                      "--force: re-encoding every row")
        cache.delete(name)
    hashes = [encoder.row_hash(t, d) for t, d in zip(texts, digests or [None] * len(table))]
    todo = _rows_to_encode(cache.committed(name, fingerprint), table.ids, hashes, config.on_bad_image)
    report.reused = len(table) - len(todo)
    if todo:
        report = _encode(cache, table, encoder, name, config, runtime, fingerprint, todo, hashes, texts, report)
    if todo or not cache.is_complete(name, table.ids):
        state = encoder.state() if isinstance(encoder, FittedEncoder) else {}
        if not state and cache.feature_path(name).exists():
            state = cache.read(name, rows=False).state  # a warm fitted encoder: keep the stored fit
        final = cache.finalize(name, table.ids, fingerprint, state, encoder.name)
    else:
        final = cache.read(name)
    rows = final.rows
    report.invalid = int((~rows.valid).sum())
    report.zero_filled = int((rows.valid & (rows.reason != "")).sum())
    report.dim = rows.dim
    report.seconds = time.perf_counter() - started
    return report


def _fingerprint(encoder: Encoder, runtime: Runtime, config: ExtractConfig) -> dict:
    fingerprint = encoder.fingerprint(runtime, config.store_dtype)
    if fingerprint["weights"].endswith("@unresolved"):
        # A hub model not downloaded yet: its commit is known only once it is loaded (and fetched).
        encoder.load(runtime)
        fingerprint = encoder.fingerprint(runtime, config.store_dtype)
    return fingerprint


def _fingerprint_diff(old: dict, new: dict) -> str:
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(changed)[:400]


def _rows_to_encode(committed: FeatureRows | None, ids: list[str], hashes: list[str], policy: str) -> list[int]:
    """Positions of rows with no committed vector for the same content, or a bad row stored under
    another --on-bad-image policy."""
    if committed is None:
        return list(range(len(ids)))
    known = {item: i for i, item in enumerate(committed.ids)}
    todo = []
    for position, (item, digest) in enumerate(zip(ids, hashes)):
        i = known.get(item)
        if i is None or committed.content_hash[i] != digest:
            todo.append(position)
        elif committed.reason[i] and (policy == "fail" or bool(committed.valid[i]) != (policy == "zero")):
            todo.append(position)
    return todo


class _Committer:
    """Buffers finished rows and writes them as durable parts every `every` rows."""

    def __init__(self, cache: FeatureCache, name: str, fingerprint: dict, every: int, store_dtype: str):
        self.cache, self.name, self.fingerprint, self.every = cache, name, fingerprint, every
        self.dtype = np.float16 if store_dtype == "float16" else np.float32
        self.blocks: list[FeatureRows] = []
        self.pending = 0

    def add(self, ids, hashes, matrix, valid, reasons) -> None:
        import scipy.sparse as sp

        matrix = matrix.astype(self.dtype) if sp.issparse(matrix) else np.asarray(matrix, dtype=self.dtype)
        if not sp.issparse(matrix) and not np.isfinite(matrix).all():
            raise FeatError(f"{self.name}: the encoder produced non-finite values (overflow in a low-precision "
                            "--dtype?); nothing from this batch was stored")
        self.blocks.append(FeatureRows(np.asarray(ids, dtype=object), np.asarray(hashes, dtype=object),
                                       np.asarray(valid, dtype=bool), np.asarray(reasons, dtype=object), matrix))
        self.pending += len(ids)
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.blocks:
            self.cache.commit_part(self.name, FeatureRows.concat(self.blocks), self.fingerprint)
        self.blocks, self.pending = [], 0


def _encode(cache, table, encoder, name, config, runtime, fingerprint, todo, hashes, texts, report):
    if encoder.runtime != runtime or not _loaded(encoder):
        encoder.load(runtime)
    committer = _Committer(cache, name, fingerprint, config.commit_every, config.store_dtype)
    ids = table.ids
    with progress_bar(name, len(todo)) as advance:
        if isinstance(encoder, FittedEncoder):
            encoder.fit([t for t, s in zip(texts, table.frame["split"]) if s == "train"])
            matrix = encoder.transform_texts([texts[i] for i in todo])
            committer.add([ids[i] for i in todo], [hashes[i] for i in todo], matrix, [True] * len(todo),
                          [""] * len(todo))
            report.batches += 1
            advance(len(todo))
            bad = []
        elif isinstance(encoder, TextEncoder):
            bad = _encode_texts(encoder, [texts[i] for i in todo], todo, ids, hashes, config, committer, report,
                                advance)
        elif isinstance(encoder, ImageEncoder):
            bad = _encode_images(encoder, table, todo, ids, hashes, config, committer, report, advance)
        else:
            raise FeatError(f"encoder '{encoder.name}' is of no known kind")
    committer.flush()
    report.encoded = len(todo) - len(bad)
    if bad:
        listed = "; ".join(f"{item}: {reason}" for item, reason in bad[:10])
        raise InputError(f"{name}: {len(bad)} bad image(s) with --on-bad-image fail ({listed}"
                         f"{'; ...' if len(bad) > 10 else ''}); the other rows are committed")
    return report


def _loaded(encoder: Encoder) -> bool:
    return getattr(encoder, "model", None) is not None or isinstance(encoder, FittedEncoder)


def _encode_texts(encoder, texts, todo, ids, hashes, config, committer, report, advance) -> list:
    lengths = encoder.token_lengths(texts)
    # Longest first: the largest batch runs (and would run out of memory) at once, not after an hour.
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), config.batch_size):
        chunk = order[start:start + config.batch_size]
        vectors = encoder.encode_texts([texts[i] for i in chunk])
        report.batches += 1
        rows = [todo[i] for i in chunk]
        committer.add([ids[r] for r in rows], [hashes[r] for r in rows], vectors, [True] * len(rows),
                      [""] * len(rows))
        advance(len(chunk))
    return []


def _encode_images(encoder, table, todo, ids, hashes, config, committer, report, advance) -> list:
    import torch

    from feat.extract.image_loader import image_batches

    dim = None
    bad = []
    paths = table.frame["image_path"].tolist()
    errors = table.frame["image_error"].tolist()
    for positions, pixels, reasons in image_batches([paths[i] for i in todo], [errors[i] for i in todo],
                                                    encoder.transform(), config.batch_size, config.num_workers,
                                                    pin_memory=encoder.runtime.device.startswith("cuda")):
        rows = [todo[p] for p in positions]
        good = [j for j, reason in enumerate(reasons) if not reason]
        vectors = encoder.encode_pixels(pixels) if good else None
        if vectors is not None:
            report.batches += 1
            dim = vectors.shape[1]
        dim = dim or _probe_dim(encoder)
        matrix = np.zeros((len(rows), dim), dtype=np.float32)
        if good:
            matrix[good] = vectors
        keep = [j for j, reason in enumerate(reasons) if not reason or config.on_bad_image != "fail"]
        bad += [(ids[rows[j]], reasons[j]) for j, reason in enumerate(reasons) if reason and
                config.on_bad_image == "fail"]
        valid = [not reasons[j] or config.on_bad_image == "zero" for j in keep]
        committer.add([ids[rows[j]] for j in keep], [hashes[rows[j]] for j in keep], matrix[keep], valid,
                      [reasons[j] for j in keep])
        advance(len(rows))
        del pixels
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return bad


def _probe_dim(encoder: ImageEncoder) -> int:
    """The output size, from one forward pass on a blank image (needed when a batch has no good image)."""
    from PIL import Image

    return encoder.encode_pixels(encoder.transform()(Image.new("RGB", (64, 64)))[None]).shape[1]
