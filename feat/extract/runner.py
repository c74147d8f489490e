"""`feat extract`: table -> encoders -> cache, resumable and incremental.

For each encoder: compute the fingerprint (no model load) and a content hash per row, reuse every committed
row whose id and hash match, encode the rest in batches (texts sorted by length, images decoded in
DataLoader workers), commit finished batches durably as they come, then merge into one aligned file.

Three steps, and only the middle one depends on the backend: plan (fingerprints, reuse: `_plan`,
`_rows_to_encode`), encode batches (`Backend.batches`: `LocalBackend` here, `RayBackend` in ray_backend.py),
commit and finalize (`_store`, `_Committer`, `FeatureCache.finalize`). With `--shard i/n` the run covers only
the shard's rows and stops before finalizing: `feat merge` (or the next plain extract) does that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from rich.markup import escape

from feat.cache import FeatureCache, FeatureRows
from feat.cache.repair import Repair, repair
from feat.cache.shard import Shard
from feat.cache.store import ShardManifest, table_digest
from feat.console import console, progress_bar
from feat.data import OUTSIDE_ROOT, Columns, Table, load_table
from feat.errors import FeatError, InputError
from feat.extract.base import (Encoder, EncoderOptions, FittedEncoder, ImageEncoder, JointEncoder, Runtime,
                               TextEncoder, feature_name)
from feat.extract.registry import create_encoder, encoder_class

BAD_IMAGE_POLICIES = ("fail", "skip", "zero")
STORE_DTYPES = ("float32", "float16")
BACKENDS = ("local", "ray")


@dataclass
class ExtractConfig:
    data: Path  # a CSV/TSV/Parquet file with a split column, or a folder of per-split files
    cache: Path  # the cache folder (created if absent)
    encoders: list[str]  # registry names, encoded in this order
    columns: Columns = field(default_factory=Columns)
    image_root: Path | None = None  # image paths are relative to this (default: the data file's folder)
    allow_outside_root: bool = False  # accept image paths that resolve outside image_root
    options: EncoderOptions = field(default_factory=EncoderOptions)  # given to each encoder that takes them
    name: str | None = None  # feature-set name in the cache (default: `feature_name`, e.g. tfidf-svd300); one encoder only
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # compute dtype: auto | float32 | bfloat16 | float16
    store_dtype: str = "float32"  # stored vectors: float32 | float16
    batch_size: int = 32
    num_workers: int = 0  # image decoding processes; 0 decodes in the main process
    # torch threads for forward passes (local backend); 0 = torch's default, one per core. Fewer than the cores
    # when several processes share a node (shards, a busy machine): each op of a forward pass waits for all
    # its threads, so one descheduled thread stalls it (MiniLM, 2 threads, load 11: 2.0 s a batch, 1 thread 0.24 s)
    threads: int = 0
    on_bad_image: str = "skip"  # fail | skip (row invalid) | zero (zero vector, row kept valid)
    force: bool = False  # re-encode a feature set whose fingerprint changed instead of refusing
    commit_every: int = 1024  # rows per durable commit (whole batches), bounding the work a crash can lose
    lock_timeout: float = 0  # seconds to wait for another process holding the cache lock
    predict: bool = False  # the table has no split: every row is to predict (`feat predict`)
    # Other caches (never written) whose rows with the same feature name, fingerprint, id and content are copied
    # instead of encoded: `feat predict` reuses the run's training cache.
    reuse_from: list[Path] = field(default_factory=list)
    shard: Shard | None = None  # encode only this shard's rows into its own parts; `feat merge` finalizes
    backend: str = "local"  # where forward passes run: local (this process) | ray (a Ray Data pipeline)
    ray_address: str | None = None  # ray: an existing cluster ("auto", "ray://head:10001"); None starts one here
    ray_actors: int = 0  # ray: encoder actors, one model load each; 0 = one per GPU, else sized from the CPUs


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

    def __init__(self, name: str, rows: list[tuple[str, str]], listed_in_file: bool = True):
        listed = "; ".join(f"{item}: {reason}" for item, reason in rows[:10])
        # A shard does not write bad_rows.csv: the shards running beside it would overwrite each other's.
        where = "listed in bad_rows.csv; " if listed_in_file else ""
        super().__init__(f"{name}: {len(rows)} bad image(s) with --on-bad-image fail ({listed}"
                         f"{'; ...' if len(rows) > 10 else ''}); {where}the other rows are "
                         "committed, a re-run with --on-bad-image skip or zero reuses them")
        self.name, self.rows = name, rows


@dataclass
class _Plan:
    """What one encoder will do, decided before anything is written."""

    encoder: Encoder
    name: str
    fingerprint: dict
    hashes: list[str]  # content hash per row this run covers
    train_texts: list[str]  # what a fitted encoder fits on: the whole table's train split, also in a shard
    stale: str = ""  # the fingerprint difference when --force re-encodes a stale feature set
    repaired: Repair | None = None  # damaged files set aside before planning, and the rows they lost


@dataclass
class _Run:
    """What every encoder of one `extract` call shares."""

    config: ExtractConfig
    cache: FeatureCache  # seen as the shard, with --shard
    table: Table  # the whole table: items.h5, and the train split a fit sees
    work: Table  # the rows this run encodes: the shard's, or the whole table
    runtime: Runtime  # where forward passes run (the backend decides), part of the fingerprint via its dtype
    backend: "Backend"


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
    if prepared and config.backend != "local":
        # Their weights (fine-tuned, or a fit) live in this process; an actor would load the registry's.
        raise InputError("prepared encoders (feat predict) run on the local backend only")
    named = prepared or {config.name or feature_name(e.name, e.options): e for e in _create_encoders(config)}
    encoders = list(named.values())
    needs_image = any("image" in e.modality for e in encoders)
    table = load_table(config.data, config.columns, config.image_root, config.allow_outside_root, config.predict)
    _check_table(table, encoders)
    work = _shard_rows(table, config.shard)
    notes = [*table.notes, *_text_notes(work, encoders)]
    reports = []
    backend = _create_backend(config)
    try:
        run = _Run(config, FeatureCache(config.cache, config.shard), table, work, backend.runtime(), backend)
        with run.cache.lock(config.lock_timeout):
            digests = _image_digests(work) if needs_image else None
            # Every stale feature set is refused before the first write: a refused run leaves the cache as it
            # was (items.h5 included, which must stay aligned with the feature sets it describes).
            plans = [_plan(run, name, encoder, digests) for name, encoder in named.items()]
            # Every shard writes the whole table, identically: items.h5 is the merge's row order.
            run.cache.write_items(table.frame, {"source": str(table.source), "image_root": str(table.image_root),
                                                "columns": vars(config.columns)})
            for plan in plans:
                try:
                    reports.append(_extract_one(run, plan))
                except BadImagesFailed as exc:
                    if not config.shard:
                        run.cache.write_bad_rows({exc.name: exc.rows})
                    raise
                finally:
                    _release(plan.encoder)
                notes += reports[-1].notes
            bad = run.cache.write_bad_rows() if not config.shard else None
    finally:
        backend.close()
    if config.shard:
        notes.append(f"shard {config.shard.label}: {len(work)} of {len(table)} rows, all committed; once every "
                     f"shard is done, `feat merge {config.cache}` joins them (and lists the bad rows)")
        return ExtractReport(Path(config.cache), reports, notes, 0, time.perf_counter() - started)
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
    if config.backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}")
    if config.ray_actors < 0:
        raise InputError("--ray-actors must not be negative (0: sized from the cluster)")
    if config.threads < 0:
        raise InputError("--threads must not be negative (0: torch's default, one per core)")
    if config.backend == "ray" and config.device.strip().lower().startswith("cuda:"):
        # Ray gives each actor its own GPU, which it sees as cuda:0; an index would name another actor's GPU.
        raise InputError(f"--device {config.device} with --backend ray: Ray places actors on GPUs; use --device "
                         "cuda (or auto) and CUDA_VISIBLE_DEVICES to choose which GPUs Ray may use")
    if config.threads and config.backend != "local":
        raise InputError("--threads applies to --backend local; Ray actors take their share of the CPUs "
                         "(see --ray-actors)")


def _release(encoder: Encoder) -> None:
    """All encoders of an extract on one GPU would hold all their weights (and the allocator's cache) at once."""
    import sys

    encoder.release()
    torch = sys.modules.get("torch")  # not imported by a warm run: nothing was loaded, nothing to release
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _create_backend(config: ExtractConfig) -> "Backend":
    if config.backend == "ray":
        from feat.extract.ray_backend import RayBackend

        return RayBackend(config)
    return LocalBackend(config)


def _shard_rows(table: Table, shard: Shard | None) -> Table:
    """The rows this run encodes: the shard's (in table order), or all of them."""
    if shard is None:
        return table
    frame = table.frame[[shard.owns(item) for item in table.ids]].reset_index(drop=True)
    return replace(table, frame=frame, notes=[])


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
    if any("image" in encoder.modality for encoder in encoders):
        _refuse_paths_outside_root(table)


def _refuse_paths_outside_root(table: Table) -> None:
    """A path outside the image root is a setup mistake (a wrong --image-root, a table from another machine),
    not a bad image: it rarely comes alone, and marking each such row invalid would let a run of hours end
    with those rows silently missing from training. Refused before anything is written, naming the rows."""
    frame = table.frame
    outside = frame[frame["image_error"].str.startswith(OUTSIDE_ROOT)]
    if outside.empty:
        return
    examples = "; ".join(f"{item}: {value}" for item, value in zip(outside["id"][:3], outside["image"][:3]))
    raise InputError(f"{len(outside)} of {len(frame)} image path(s) resolve outside the image root "
                     f"{table.image_root} ({examples}{'; ...' if len(outside) > 3 else ''}); nothing was written: "
                     "pass --image-root FOLDER holding the images, or --allow-outside-root to accept them")


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


def _plan(run: _Run, name: str, encoder: Encoder, digests: list[str] | None) -> _Plan:
    """`digests`: image digests of the rows this run covers. A fit sees the whole train split, also in a shard."""
    fitted = isinstance(encoder, FittedEncoder)
    train_texts = _train_texts(run.table) if fitted else []
    if fitted and not encoder.frozen:
        encoder.fit_key(train_texts)
    fingerprint = _fingerprint(encoder, run.runtime, run.config)
    repaired = repair(run.cache, name)  # before anything of the set is read: damage is never read as rows
    stored = run.cache.fingerprint(name)
    stale = ""
    if stored is not None and stored != fingerprint:
        stale = _fingerprint_diff(stored, fingerprint)
        if not run.config.force:
            raise InputError(f"cache {run.cache.root}: feature set '{name}' was made with a different fingerprint "
                             f"({stale}); re-encode it with --force, or store the new features under another "
                             "--name")
    hashes = [encoder.row_hash(t, d) for t, d in zip(_texts(run.work), digests or [None] * len(run.work))]
    return _Plan(encoder, name, fingerprint, hashes, train_texts, stale, repaired or None)


def _texts(table: Table) -> list[str | None]:
    return table.frame["text"].tolist() if table.has_text else [None] * len(table)


def _train_texts(table: Table) -> list[str]:
    return [t for t, s in zip(_texts(table), table.frame["split"]) if s == "train"]


def _extract_one(run: _Run, plan: _Plan) -> EncoderReport:
    started = time.perf_counter()
    cache, work, encoder, name = run.cache, run.work, plan.encoder, plan.name
    report = EncoderReport(name, rows=len(work))
    if plan.stale:
        console.print(f"[yellow]{name}: fingerprint changed ({escape(plan.stale)}); --force: re-encoding every row",
                      soft_wrap=True)
        if not cache.shard:  # a shard leaves the others' parts alone; stale rows are never read (fingerprint)
            cache.delete(name)
    committed = cache.committed(name, plan.fingerprint, matrix=False)
    todo = _rows_to_encode(committed, work.ids, plan.hashes, run.config.on_bad_image)
    if plan.repaired:
        todo = _with_whole_batches(run, plan, todo)
        report.notes += plan.repaired.notes()
    if todo and run.config.reuse_from and not cache.shard:
        todo = _copy_from_other_caches(run, plan, todo)
    report.reused = len(work) - len(todo)
    if cache.shard:
        _write_manifest(run, plan)  # before encoding: a merge tells a shard that died half-way from one never run
    if todo:
        known_dim = committed.dim if committed is not None and len(committed) else None
        _encode(run, EncodeJob.of(run, plan, todo, report, known_dim))
    if cache.shard:
        rows = cache.committed(name, plan.fingerprint, matrix=False, want=dict(zip(work.ids, plan.hashes)))
    elif todo or not cache.is_complete(name, work.ids):
        state = _fitted_state(cache, name, encoder, plan.train_texts) if isinstance(encoder, FittedEncoder) else {}
        rows = cache.finalize(name, work.ids, plan.hashes, plan.fingerprint, state, encoder.name).rows
    else:
        rows = cache.read_flags(name)  # a warm cache: the matrix is not needed (and may be gigabytes)
    if rows is not None:  # None: a shard that owns no row
        report.invalid = int((~rows.valid).sum())
        report.zero_filled = int((rows.valid & (rows.reason != "")).sum())
        report.dim = rows.dim
    report.seconds = time.perf_counter() - started
    return report


def _with_whole_batches(run: _Run, plan: _Plan, todo: list[int]) -> list[int]:
    """`todo` plus every row in a batch of an uninterrupted run over the table that holds a row a repair
    lost. A vector can depend on the other members of its batch (padding, kernel choice by batch size); the
    lost rows re-encoded in their original batches give the vectors an uninterrupted run gives."""
    lost = [i for i, item in enumerate(run.work.ids) if item in plan.repaired.lost]
    encoder = plan.encoder
    if not lost or isinstance(encoder, FittedEncoder):  # a fit transforms each row on its own
        return todo
    everything = list(range(len(run.work)))
    if isinstance(encoder, TextEncoder):
        _ensure_loaded(encoder, run.runtime)
        batches = text_batches(EncodeJob.of(run, plan, everything, EncoderReport(plan.name), None))
    else:
        size = run.config.batch_size
        batches = [everything[start:start + size] for start in range(0, len(everything), size)]
    marked = set(lost)
    return sorted(set(todo).union(*(batch for batch in batches if marked.intersection(batch))))
def _copy_from_other_caches(run: _Run, plan: _Plan, todo: list[int]) -> list[int]:
    """Commit the `todo` rows that another cache holds cleanly encoded under the same fingerprint, id and
    content hash (the vector would be the same); returns the rows left to encode."""
    for other in run.config.reuse_from:
        source = FeatureCache(other)
        if not todo or Path(other).resolve() == run.cache.root.resolve() or not source.root.is_dir():
            continue
        want = {run.work.ids[i]: plan.hashes[i] for i in todo}
        rows = source.committed(plan.name, plan.fingerprint, want=want)
        if rows is None or not len(rows):
            continue
        rows = rows.take(np.flatnonzero(rows.valid & (rows.reason == "")))
        if len(rows):
            run.cache.commit_part(plan.name, rows, plan.fingerprint)
            copied = set(rows.ids.tolist())
            todo = [i for i in todo if run.work.ids[i] not in copied]
    return todo


def _write_manifest(run: _Run, plan: _Plan) -> None:
    encoder = plan.encoder
    state = _fitted_state(run.cache, plan.name, encoder, plan.train_texts) if isinstance(encoder, FittedEncoder) else {}
    run.cache.write_shard_manifest(plan.name, ShardManifest(
        run.cache.shard, np.asarray(run.work.ids, dtype=object), np.asarray(plan.hashes, dtype=object),
        plan.fingerprint, encoder.name, table_digest(run.table.frame), state))


def _fitted_state(cache: FeatureCache, name: str, encoder: FittedEncoder, train_texts: list[str]) -> dict:
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
    encoder.fit(train_texts)
    return encoder.state()


def _fingerprint(encoder: Encoder, runtime: Runtime, config: ExtractConfig) -> dict:
    fingerprint = encoder.fingerprint(runtime, config.store_dtype)
    if fingerprint["weights"].endswith("@unresolved"):
        # A hub model not downloaded yet: its commit is known only once it is loaded (and fetched). With the
        # ray backend, `runtime` is the actors' device: the driver (maybe without a GPU) loads on its CPU.
        encoder.load(runtime if config.backend == "local" else replace(runtime, device="cpu"))
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


@dataclass
class EncodeJob:
    """One encoder's rows to encode in this run: everything a backend needs, and where the results go."""

    encoder: Encoder
    name: str  # feature-set name
    fingerprint: dict  # stored with every committed part
    todo: list[int]  # positions among the covered rows to encode, in table order
    ids: list[str]  # per covered row (all rows, or a shard's)
    texts: list[str | None]  # per covered row; None without a text column
    paths: list[str]  # per covered row: resolved image path ("" without one)
    errors: list[str]  # per covered row: why its image path was refused ("" when it was not)
    hashes: list[str]  # per covered row: the content hash stored beside its vector
    train_texts: list[str]  # the whole table's train split, for a fitted encoder's fit
    config: ExtractConfig
    runtime: Runtime
    report: EncoderReport  # counts and notes, filled in as batches are stored
    known_dim: int | None  # width of the rows committed before: a batch of only bad images needs it

    @staticmethod
    def of(run: _Run, plan: _Plan, todo: list[int], report: EncoderReport, known_dim: int | None) -> "EncodeJob":
        frame = run.work.frame
        images = run.work.has_image
        return EncodeJob(plan.encoder, plan.name, plan.fingerprint, todo, run.work.ids, _texts(run.work),
                         frame["image_path"].tolist() if images else [""] * len(frame),
                         frame["image_error"].tolist() if images else [""] * len(frame), plan.hashes,
                         plan.train_texts, run.config, run.runtime, report, known_dim)


@dataclass
class EncodedBatch:
    """What a backend hands back: some todo rows, each with its vector or the reason it has none."""

    rows: list[int]  # positions among the covered rows, in any order
    matrix: object  # (len(rows), dim) float array or CSR; zeros where `reasons` says why there is no vector
    reasons: list[str]  # "" for an encoded row, else why its input could not be encoded
    forwards: int  # forward passes spent on it (0 when every row was bad)


class Backend(Protocol):
    """Where forward passes run. Planning and writing the cache are the runner's, whatever the backend."""

    def runtime(self) -> Runtime:
        """The device and compute dtype the encoders will run with (its dtype is in every fingerprint)."""

    def batches(self, job: EncodeJob) -> Iterator[EncodedBatch]:
        """Every row of `job.todo` exactly once, in batches, as they finish."""

    def close(self) -> None: ...


class LocalBackend:
    """Forward passes in this process: texts sorted by length, images decoded in DataLoader workers."""

    def __init__(self, config: ExtractConfig):
        self.config = config

    def runtime(self) -> Runtime:
        from feat.extract.device import select_device, select_dtype

        device = select_device(self.config.device)
        return Runtime(device=device, dtype=select_dtype(self.config.dtype, device))

    def batches(self, job: EncodeJob) -> Iterator[EncodedBatch]:
        if isinstance(job.encoder, FittedEncoder):
            yield from self._batches(job)  # no network: torch settings do not apply (nor torch's import time)
            return
        from feat.extract.device import torch_settings

        # The caller's process (e.g. `feat study`, which trains next) gets its own settings back.
        with torch_settings(self.config.threads, job.runtime.dtype):
            yield from self._batches(job)

    def _batches(self, job: EncodeJob) -> Iterator[EncodedBatch]:
        encoder = job.encoder
        if isinstance(encoder, FittedEncoder):
            yield from fitted_batches(job)
        elif isinstance(encoder, TextEncoder):
            _ensure_loaded(encoder, job.runtime)
            backoff = Backoff(job)
            for rows in text_batches(job):
                texts = [job.texts[r] for r in rows]
                vectors = backoff(len(texts), lambda start, stop: encoder.encode_texts(texts[start:stop]))
                yield EncodedBatch(rows, vectors, [""] * len(rows), forwards=1)
        elif isinstance(encoder, (ImageEncoder, JointEncoder)):
            yield from _image_batches(job, Backoff(job))
        else:
            raise FeatError(f"encoder '{encoder.name}' is of no known kind")

    def close(self) -> None:
        pass


def _encode(run: _Run, job: EncodeJob) -> None:
    committer = _Committer(run.cache, job.name, job.fingerprint, run.config.commit_every, run.config.store_dtype)
    bad = []
    with progress_bar(job.name, len(job.todo), unit="rows", stage=_first_stage(job)) as advance:
        for batch in run.backend.batches(job):
            bad += _store(job, batch, committer)
            advance(len(batch.rows))
    committer.flush()
    if bad:
        raise BadImagesFailed(job.name, bad, listed_in_file=run.cache.shard is None)


def _first_stage(job: EncodeJob) -> str:
    """What precedes the first finished batch, said so that a bar at 0 for seconds does not look stuck."""
    if isinstance(job.encoder, FittedEncoder):
        return "fitting" if not job.encoder.frozen and not job.encoder.state() else "transforming"
    if job.config.backend != "local":
        return "starting the encoder actors"
    return "loading model" if getattr(job.encoder, "model", None) is None else "first batch"


def _store(job: EncodeJob, batch: EncodedBatch, committer: _Committer) -> list[tuple[str, str]]:
    """Commit a batch under the --on-bad-image policy; returns the bad rows `fail` keeps out of the cache."""
    policy = job.config.on_bad_image
    reasons = batch.reasons
    keep = [j for j, reason in enumerate(reasons) if not reason or policy != "fail"]
    matrix = batch.matrix if len(keep) == len(reasons) else batch.matrix[keep]
    committer.add([job.ids[batch.rows[j]] for j in keep], [job.hashes[batch.rows[j]] for j in keep], matrix,
                  [not reasons[j] or policy == "zero" for j in keep], [reasons[j] for j in keep])
    job.report.batches += batch.forwards
    job.report.encoded += sum(not reason for reason in reasons)
    return [(job.ids[batch.rows[j]], reason) for j, reason in enumerate(reasons) if reason and policy == "fail"]


def fitted_batches(job: EncodeJob) -> Iterator[EncodedBatch]:
    """A fitted encoder (TF-IDF) transforms every row at once, in this process under every backend: there is
    no network to spread, and its fit is part of the fingerprint's meaning."""
    encoder = job.encoder
    encoder.load(job.runtime)
    if not encoder.frozen and not encoder.state():  # a shard fitted already, for its manifest
        encoder.fit(job.train_texts)
    matrix = encoder.transform_texts([job.texts[i] for i in job.todo])
    yield EncodedBatch(list(job.todo), matrix, [""] * len(job.todo), forwards=1)


def text_batches(job: EncodeJob) -> list[list[int]]:
    """The todo rows as text batches (needs `token_lengths`), the same whichever backend encodes them.

    Longest first: the largest batch runs (and would run out of memory) at once, not after an hour.
    Deterministic (ties by position) and cut in whole batches from the start: commits are whole batches,
    so after a crash the rows left form exactly the batches the uninterrupted run would have formed,
    and the resumed cache is bit-identical to it."""
    encoder = job.encoder
    lengths = encoder.token_lengths([job.texts[i] for i in job.todo])
    order = sorted(range(len(job.todo)), key=lambda i: (-lengths[i], i))
    limit = encoder.max_length
    truncated = [job.ids[job.todo[i]] for i in order if limit and lengths[i] >= limit]
    if truncated:
        job.report.notes.append(f"{job.name}: {len(truncated)} text(s) reached --max-length {limit} tokens and "
                                f"were truncated (e.g. {', '.join(truncated[:3])})")
    size = job.config.batch_size
    return [[job.todo[i] for i in order[start:start + size]] for start in range(0, len(order), size)]


def _ensure_loaded(encoder: Encoder, runtime: Runtime) -> None:
    if encoder.runtime != runtime or getattr(encoder, "model", None) is None:
        encoder.load(runtime)


class Backoff:
    """Forward passes that survive a GPU running out of memory: the batch is halved and retried (down to one
    row), and the size that fitted is kept for the batches after and reported. Rows of a halved batch are
    padded with fewer neighbours: their vectors differ from a full batch's by float rounding only."""

    def __init__(self, job: EncodeJob):
        self.job, self.size = job, job.config.batch_size

    def __call__(self, count: int, encode) -> np.ndarray:
        """encode(start, stop) -> vectors of rows start..stop-1 of a batch of `count` rows."""
        import torch

        parts, start = [], 0
        while start < count:
            size = min(self.size, count - start)
            try:
                parts.append(encode(start, start + size))
                start += size
                continue
            except torch.cuda.OutOfMemoryError:
                pass  # handled outside the except block, whose traceback still holds the batch's tensors
            if size == 1:
                raise FeatError(f"{self.job.name}: out of GPU memory with a batch of one row; free the GPU or "
                                "use a smaller model, --dtype bfloat16/float16, or --device cpu")
            self.size = size // 2
            torch.cuda.empty_cache()
            note = (f"{self.job.name}: out of GPU memory with batches of {size} rows; continued with "
                    f"{self.size} (use --batch-size {self.size})")
            self.job.report.notes = [n for n in self.job.report.notes if "out of GPU memory" not in n] + [note]
            console.print(f"[yellow]{escape(note)}", soft_wrap=True)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _image_batches(job: EncodeJob, backoff: Backoff) -> Iterator[EncodedBatch]:
    import torch

    from feat.extract.image_loader import image_batches

    encoder, runtime, dim = job.encoder, job.runtime, job.known_dim
    loader = image_batches([job.paths[i] for i in job.todo], [job.errors[i] for i in job.todo],
                           encoder.transform(), job.config.batch_size, job.config.num_workers,
                           pin_memory=runtime.device.startswith("cuda"))
    for positions, pixels, reasons in loader:
        rows = [job.todo[p] for p in positions]
        good = [j for j, reason in enumerate(reasons) if not reason]
        if good:
            # Loaded on the first good image: a run that only re-checks bad images loads no model.
            _ensure_loaded(encoder, runtime)
            texts = [job.texts[rows[j]] for j in good]
            vectors = backoff(len(good), lambda start, stop: encode_images(encoder, texts[start:stop],
                                                                            pixels[start:stop]))
            dim = vectors.shape[1]
        if dim is None:
            _ensure_loaded(encoder, runtime)
            dim = probe_dim(encoder)
        matrix = np.zeros((len(rows), dim), dtype=np.float32)
        if good:
            matrix[good] = vectors
        del pixels
        yield EncodedBatch(rows, matrix, list(reasons), forwards=1 if good else 0)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def encode_images(encoder: ImageEncoder | JointEncoder, texts: list[str | None], pixels) -> np.ndarray:
    """One forward pass over the good images of a batch. A joint encoder reads each row's text beside its
    image; a row without a usable image is not encoded at all (its text alone is not what the joint vector
    means)."""
    if isinstance(encoder, JointEncoder):
        return encoder.encode_pairs(texts, pixels)
    return encoder.encode_pixels(pixels)


def probe_dim(encoder: ImageEncoder | JointEncoder) -> int:
    """The output size, from one forward pass on a blank image (needed when a batch has no good image)."""
    from PIL import Image

    pixels = encoder.transform()(Image.new("RGB", (64, 64)))[None]
    if isinstance(encoder, JointEncoder):
        return encoder.encode_pairs([""], pixels).shape[1]
    return encoder.encode_pixels(pixels).shape[1]
