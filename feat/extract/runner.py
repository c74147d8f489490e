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

from rich.markup import escape

from feat.cache import FeatureCache, FeatureRows
from feat.console import console, progress_bar
from feat.data import Columns, Table, load_table
from feat.errors import FeatError, InputError
from feat.extract.base import (Encoder, EncoderOptions, FittedEncoder, ImageEncoder, JointEncoder, Runtime,
                               TextEncoder)
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
    predict: bool = False  # the table has no split: every row is to predict (`feat predict`)


@dataclass
class EncoderReport:
    name: str
    rows: int = 0
    encoded: int = 0  # rows that went through a forward pass in this run
    reused: int = 0  # rows taken from the cache (committed by this or an earlier, maybe killed, run)
    invalid: int = 0  # rows stored with valid=False (all of them, reused or new)
    zero_filled: int = 0  # bad images stored as zero vectors under --on-bad-image zero
    batches: int = 0  # forward passes run
    seconds: float = 0.0
    dim: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.batches == 0:
            what = "no forward pass, all rows reused from cache" if self.reused == self.rows else "no forward pass"
        else:
            what = f"{self.encoded} encoded in {self.batches} batches"
        extra = f", {self.zero_filled} zero-filled" if self.zero_filled else ""
        return (f"{self.name}: {self.rows} rows ({what}; {self.reused} reused, {self.invalid} invalid{extra}), "
                f"dim {self.dim}, {self.seconds:.1f} s")


class BadImagesFailed(InputError):
    """`--on-bad-image fail` met bad images; the good rows of the run are committed."""

    def __init__(self, name: str, rows: list[tuple[str, str]]):
        listed = "; ".join(f"{item}: {reason}" for item, reason in rows[:10])
        super().__init__(f"{name}: {len(rows)} bad image(s) with --on-bad-image fail ({listed}"
                         f"{'; ...' if len(rows) > 10 else ''}); listed in bad_rows.csv; the other rows are "
                         "committed, a re-run with --on-bad-image skip or zero reuses them")
        self.name, self.rows = name, rows


@dataclass
class _Plan:
    """What one encoder will do, decided before anything is written."""

    encoder: Encoder
    name: str
    fingerprint: dict
    hashes: list[str]
    stale: str = ""  # the fingerprint difference when --force re-encodes a stale feature set


@dataclass
class ExtractReport:
    cache: Path
    encoders: list[EncoderReport]
    notes: list[str]
    bad_rows: int = 0
    seconds: float = 0.0
    bad_examples: list[tuple[str, str, str]] = field(default_factory=list)  # (feature set, id, reason), first few


def extract(config: ExtractConfig, prepared: dict[str, Encoder] | None = None) -> ExtractReport:
    """Encode `config.data` with every encoder of `config.encoders` into `config.cache`. `prepared` (feature-set
    name -> encoder) replaces `config.encoders` with ready encoders: a run's, with its fitted TF-IDF state or
    fine-tuned weights (`feat predict`)."""
    started = time.perf_counter()
    _check_config(config)
    named = prepared or {config.name or e.name: e for e in _create_encoders(config)}
    encoders = list(named.values())
    needs_image = any("image" in e.modality for e in encoders)
    table = load_table(config.data, config.columns, config.image_root, config.allow_outside_root, config.predict)
    _check_table(table, encoders)
    from feat.extract.device import select_device, select_dtype

    device = select_device(config.device)
    runtime = Runtime(device=device, dtype=select_dtype(config.dtype, device))
    cache = FeatureCache(config.cache)
    notes = [*table.notes, *_text_notes(table, encoders)]
    reports = []
    with cache.lock(config.lock_timeout):
        digests = _image_digests(table) if needs_image else None
        # Every stale feature set is refused before the first write: a refused run leaves the cache as it was
        # (items.h5 included, which must stay aligned with the feature sets it describes).
        plans = [_plan(cache, table, name, encoder, config, runtime, digests) for name, encoder in named.items()]
        cache.write_items(table.frame, {"source": str(table.source), "image_root": str(table.image_root),
                                        "columns": vars(config.columns)})
        for plan in plans:
            try:
                reports.append(_extract_one(cache, table, plan, config, runtime))
            except BadImagesFailed as exc:
                cache.write_bad_rows({exc.name: exc.rows})
                raise
            notes += reports[-1].notes
        bad = cache.write_bad_rows()
    examples = list(bad[["feature", "id", "reason"]].head(5).itertuples(index=False, name=None))
    return ExtractReport(Path(config.cache), reports, notes, len(bad), time.perf_counter() - started, examples)


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
        if "text" in encoder.modality and not table.has_text:
            raise InputError(f"encoder '{encoder.name}' needs a text column '{table.columns.text}' "
                             "(use --text-col)")
        if isinstance(encoder, FittedEncoder) and not encoder.frozen and not (table.frame["split"] == "train").any():
            raise InputError(f"encoder '{encoder.name}' is fitted on the train split, and it has no rows "
                             f"(splits: {', '.join(sorted(set(table.frame['split'])))})")
        if "image" in encoder.modality and not table.has_image:
            raise InputError(f"encoder '{encoder.name}' needs an image column '{table.columns.image}' "
                             "(use --image-col)")


def _text_notes(table: Table, encoders: list[Encoder]) -> list[str]:
    """Empty texts are legitimate (an image-only post) and encoded as such, but never silently."""
    if not table.has_text or not any("text" in e.modality for e in encoders):
        return []
    empty = [item for item, text in zip(table.ids, table.frame["text"]) if not text.strip()]
    if not empty:
        return []
    return [f"{len(empty)} row(s) with empty or whitespace-only text, encoded as empty text "
            f"(ids {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''})"]


def _image_digests(table: Table) -> list[str]:
    from feat.extract.images import image_digest

    return [error and f"refused:{error}" or image_digest(path)
            for path, error in zip(table.frame["image_path"], table.frame["image_error"])]


def _plan(cache: FeatureCache, table: Table, name: str, encoder: Encoder, config: ExtractConfig, runtime: Runtime,
          digests: list[str] | None) -> _Plan:
    texts = _texts(table)
    if isinstance(encoder, FittedEncoder) and not encoder.frozen:
        encoder.fit_key(_train_texts(table))
    fingerprint = _fingerprint(encoder, runtime, config)
    stored = cache.fingerprint(name)
    stale = ""
    if stored is not None and stored != fingerprint:
        stale = _fingerprint_diff(stored, fingerprint)
        if not config.force:
            raise InputError(f"cache {cache.root}: feature set '{name}' was made with a different fingerprint "
                             f"({stale}); re-encode it with --force, or store the new features under another "
                             "--name")
    hashes = [encoder.row_hash(t, d) for t, d in zip(texts, digests or [None] * len(table))]
    return _Plan(encoder, name, fingerprint, hashes, stale)


def _texts(table: Table) -> list[str | None]:
    return table.frame["text"].tolist() if table.has_text else [None] * len(table)


def _train_texts(table: Table) -> list[str]:
    return [t for t, s in zip(_texts(table), table.frame["split"]) if s == "train"]


def _extract_one(cache: FeatureCache, table: Table, plan: _Plan, config: ExtractConfig,
                 runtime: Runtime) -> EncoderReport:
    started = time.perf_counter()
    encoder, name, fingerprint = plan.encoder, plan.name, plan.fingerprint
    report = EncoderReport(name, rows=len(table))
    if plan.stale:
        console.print(f"[yellow]{name}: fingerprint changed ({escape(plan.stale)}); --force: re-encoding every row",
                      soft_wrap=True)
        cache.delete(name)
    committed = cache.committed(name, fingerprint, matrix=False)
    todo = _rows_to_encode(committed, table.ids, plan.hashes, config.on_bad_image)
    report.reused = len(table) - len(todo)
    if todo:
        known_dim = committed.dim if committed is not None and len(committed) else None
        _encode(cache, table, encoder, name, config, runtime, fingerprint, todo, plan.hashes, report, known_dim)
    if todo or not cache.is_complete(name, table.ids):
        state = _fitted_state(cache, name, encoder, table) if isinstance(encoder, FittedEncoder) else {}
        rows = cache.finalize(name, table.ids, plan.hashes, fingerprint, state, encoder.name).rows
    else:
        rows = cache.read_flags(name)  # a warm cache: the matrix is not needed (and may be gigabytes)
    report.invalid = int((~rows.valid).sum())
    report.zero_filled = int((rows.valid & (rows.reason != "")).sum())
    report.dim = rows.dim
    report.seconds = time.perf_counter() - started
    return report


def _fitted_state(cache: FeatureCache, name: str, encoder: FittedEncoder, table: Table) -> dict:
    """The fit that made the rows being finalized. Every row hash includes the fit digest, so all rows come
    from the current train split; after a run killed between its commits and the merge, the stored state may
    still be an older fit, and is then refitted (deterministic) rather than mislabelled."""
    state = encoder.state()
    if state:
        return state
    if cache.feature_path(name).exists():
        stored = cache.read(name, rows=False).state
        if "fit_digest" in stored and str(stored["fit_digest"][0]) == encoder.fit_digest:
            return stored
    encoder.fit(_train_texts(table))
    return encoder.state()


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
                            "--dtype, or beyond float16 with --store-dtype float16?); nothing from this batch "
                            "was stored")
        self.blocks.append(FeatureRows(np.asarray(ids, dtype=object), np.asarray(hashes, dtype=object),
                                       np.asarray(valid, dtype=bool), np.asarray(reasons, dtype=object), matrix))
        self.pending += len(ids)
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.blocks:
            self.cache.commit_part(self.name, FeatureRows.concat(self.blocks), self.fingerprint)
        self.blocks, self.pending = [], 0


def _encode(cache, table, encoder, name, config, runtime, fingerprint, todo, hashes, report, known_dim) -> None:
    committer = _Committer(cache, name, fingerprint, config.commit_every, config.store_dtype)
    ids, texts = table.ids, _texts(table)
    with progress_bar(name, len(todo)) as advance:
        if isinstance(encoder, FittedEncoder):
            encoder.load(runtime)
            if not encoder.frozen:
                encoder.fit(_train_texts(table))
            matrix = encoder.transform_texts([texts[i] for i in todo])
            committer.add([ids[i] for i in todo], [hashes[i] for i in todo], matrix, [True] * len(todo),
                          [""] * len(todo))
            report.batches += 1
            report.encoded += len(todo)
            advance(len(todo))
            bad = []
        elif isinstance(encoder, TextEncoder):
            _ensure_loaded(encoder, runtime)
            bad = _encode_texts(encoder, [texts[i] for i in todo], todo, ids, hashes, config, committer, report,
                                advance)
        elif isinstance(encoder, (ImageEncoder, JointEncoder)):
            bad = _encode_images(encoder, table, todo, ids, hashes, config, runtime, committer, report, advance,
                                 known_dim)
        else:
            raise FeatError(f"encoder '{encoder.name}' is of no known kind")
    committer.flush()
    if bad:
        raise BadImagesFailed(name, bad)


def _ensure_loaded(encoder: Encoder, runtime: Runtime) -> None:
    if encoder.runtime != runtime or getattr(encoder, "model", None) is None:
        encoder.load(runtime)


def _encode_texts(encoder, texts, todo, ids, hashes, config, committer, report, advance) -> list:
    lengths = encoder.token_lengths(texts)
    # Longest first: the largest batch runs (and would run out of memory) at once, not after an hour.
    # Deterministic (ties by position) and cut in whole batches from the start: commits are whole batches,
    # so after a crash the rows left form exactly the batches the uninterrupted run would have formed,
    # and the resumed cache is bit-identical to it.
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    limit = encoder.max_length
    truncated = [ids[todo[i]] for i in order if limit and lengths[i] >= limit]
    if truncated:
        report.notes.append(f"{report.name}: {len(truncated)} text(s) reached --max-length {limit} tokens and were "
                            f"truncated (e.g. {', '.join(truncated[:3])})")
    for start in range(0, len(order), config.batch_size):
        chunk = order[start:start + config.batch_size]
        vectors = encoder.encode_texts([texts[i] for i in chunk])
        report.batches += 1
        report.encoded += len(chunk)
        rows = [todo[i] for i in chunk]
        committer.add([ids[r] for r in rows], [hashes[r] for r in rows], vectors, [True] * len(rows),
                      [""] * len(rows))
        advance(len(chunk))
    return []


def _encode_images(encoder, table, todo, ids, hashes, config, runtime, committer, report, advance,
                   known_dim) -> list:
    import torch

    from feat.extract.image_loader import image_batches

    dim = known_dim
    bad = []
    paths = table.frame["image_path"].tolist()
    errors = table.frame["image_error"].tolist()
    texts = _texts(table)

    def forward(rows: list[int], pixels) -> np.ndarray:
        # A joint encoder reads each row's text beside its image; a row without a usable image is not encoded
        # at all (its text alone is not what the joint vector means).
        if isinstance(encoder, JointEncoder):
            return encoder.encode_pairs([texts[r] for r in rows], pixels)
        return encoder.encode_pixels(pixels)

    for positions, pixels, reasons in image_batches([paths[i] for i in todo], [errors[i] for i in todo],
                                                    encoder.transform(), config.batch_size, config.num_workers,
                                                    pin_memory=runtime.device.startswith("cuda")):
        rows = [todo[p] for p in positions]
        good = [j for j, reason in enumerate(reasons) if not reason]
        if good:
            # Loaded on the first good image: a run that only re-checks bad images loads no model.
            _ensure_loaded(encoder, runtime)
            vectors = forward([rows[j] for j in good], pixels)
            report.batches += 1
            report.encoded += len(good)
            dim = vectors.shape[1]
        if dim is None:
            _ensure_loaded(encoder, runtime)
            dim = _probe_dim(encoder)
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


def _probe_dim(encoder: ImageEncoder | JointEncoder) -> int:
    """The output size, from one forward pass on a blank image (needed when a batch has no good image)."""
    from PIL import Image

    pixels = encoder.transform()(Image.new("RGB", (64, 64)))[None]
    if isinstance(encoder, JointEncoder):
        return encoder.encode_pairs([""], pixels).shape[1]
    return encoder.encode_pixels(pixels).shape[1]
