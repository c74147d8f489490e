"""The data contract: read a table (or a folder of per-split tables) into one validated frame.

Every command reads its input through `load_table`, so the column options, split names, id rules and
image-path rules are the same everywhere. Input errors raise `InputError` (exit code 2) before anything is
written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from feat.errors import InputError

SPLITS = ("train", "dev", "test")
PREDICT = "predict"  # the split of every row of a table read with `predict=True`: rows to label, no split
# Names seen in the wild for the three splits; anything else is refused rather than guessed.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev",
    "test": "test", "testing": "test",
}
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class Columns:
    """Which input columns hold what (the `--*-col` options)."""

    id: str = "id"
    text: str = "text"
    image: str = "image"
    split: str = "split"


@dataclass
class Table:
    """A validated dataset: one row per item, ids unique, splits canonical.

    `frame` has the columns `id`, `split`, `text` (if the input has text), `image` (the raw path as written),
    `image_path` (resolved absolute path, "" when refused or empty), `image_error` (why a path was refused),
    and every other input column unchanged (labels and metadata, as strings).
    """

    frame: pd.DataFrame
    source: Path
    image_root: Path
    columns: Columns
    notes: list[str] = field(default_factory=list)

    @property
    def has_text(self) -> bool:
        return "text" in self.frame

    @property
    def has_image(self) -> bool:
        return "image" in self.frame

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].tolist()

    def __len__(self) -> int:
        return len(self.frame)

    def extra_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in CANONICAL]


def load_table(
    path: str | os.PathLike,
    columns: Columns = Columns(),
    image_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    predict: bool = False,
) -> Table:
    """Read `path` (a CSV/TSV/Parquet file with a split column, or a folder of per-split files). `predict`:
    the table has no split, every row is to predict (split "predict"); a split column, if any, is ignored."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"data not found: {path}")
    notes: list[str] = []
    if path.is_dir():
        raw = _read_split_folder(path, columns, notes)
        base = path
    else:
        raw = _read_one(path, notes)
        base = path.parent
    if raw.empty:
        raise InputError(f"{path}: the table has no rows")
    frame = _canonical_frame(raw, columns, path, notes, predict)
    root = Path(image_root) if image_root is not None else base
    if "image" in frame:
        _resolve_images(frame, root, allow_outside_root)
    _replace_nul(frame, notes)
    return Table(frame=frame, source=path.resolve(), image_root=root.resolve(), columns=columns, notes=notes)


def _read_one(path: Path, notes: list[str]) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError as exc:  # pyarrow is an extra
            raise InputError(f"{path}: reading Parquet needs pyarrow (pip install 'feat[parquet]')") from exc
        return frame.astype(str).where(frame.notna(), "")
    sep = "\t" if suffix == ".tsv" else ","
    # dtype=str and no NA parsing: ids stay strings and a text "NA" stays a text. index_col=False: by default
    # pandas turns the surplus leading fields of rows longer than the header into an index, silently
    # shifting every column of those rows.
    read = dict(sep=sep, dtype=str, keep_default_na=False, na_values=[], index_col=False)
    try:
        try:
            return _read_csv_strict(path, encoding="utf-8-sig", **read)
        except UnicodeDecodeError:
            notes.append(f"{path.name} is not valid UTF-8; read as cp1252 (Windows Latin-1)")
            return _read_csv_strict(path, encoding="cp1252", encoding_errors="replace", **read)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: the file is empty") from exc
    except pd.errors.ParserWarning as exc:
        raise InputError(f"{path}: some rows have more fields than the header; check the quoting of texts "
                         "with commas") from exc
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: not a readable table ({str(exc).splitlines()[0]})") from exc


def _read_csv_strict(path: Path, **read) -> pd.DataFrame:
    import warnings

    with warnings.catch_warnings():
        # With index_col=False pandas only warns that it drops the surplus fields; that is data loss.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return pd.read_csv(path, **read)


def _read_split_folder(folder: Path, columns: Columns, notes: list[str]) -> pd.DataFrame:
    """A folder with train*.csv, dev*.csv (or val*.csv) and test*.csv, as in the reference notebook."""
    parts = []
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in TABLE_SUFFIXES:
            continue
        prefix = next((a for a in sorted(SPLIT_ALIASES, key=len, reverse=True) if file.stem.lower().startswith(a)), None)
        if prefix is None:
            continue
        part = _read_one(file, notes)
        part[columns.split] = SPLIT_ALIASES[prefix]
        parts.append(part)
        notes.append(f"{file.name} -> split {SPLIT_ALIASES[prefix]} ({len(part)} rows)")
    if not parts:
        raise InputError(f"{folder}: no train*/dev*/val*/test* table (.csv, .tsv, .parquet) in this folder")
    return pd.concat(parts, ignore_index=True).fillna("")


def _canonical_frame(raw: pd.DataFrame, columns: Columns, path: Path, notes: list[str],
                     predict: bool = False) -> pd.DataFrame:
    raw.columns = [str(c).strip() for c in raw.columns]
    if columns.split not in raw and not predict:
        raise InputError(f"{path}: missing split column '{columns.split}' (columns: {', '.join(raw.columns)}; "
                         "use --split-col)")
    _check_named_columns(raw, columns, path, predict)
    if columns.text not in raw and columns.image not in raw:
        raise InputError(f"{path}: neither a text column '{columns.text}' nor an image column '{columns.image}' "
                         f"(columns: {', '.join(raw.columns)}; use --text-col / --image-col)")
    frame = pd.DataFrame(index=raw.index)
    if columns.id in raw:
        frame["id"] = raw[columns.id].astype(str).str.strip()
    else:
        frame["id"] = _derive_ids(raw, columns)
        notes.append(f"no id column '{columns.id}': ids derived as sha1(text, image)[:16], "
                     "'#k' appended to the k-th repeat of an identical row")
    if (frame["id"] == "").any():
        rows = (frame.index[frame["id"] == ""] + 2).tolist()[:5]
        raise InputError(f"{path}: empty id in column '{columns.id}' (file lines {rows})")
    dup = frame["id"][frame["id"].duplicated()].unique()
    if len(dup):
        raise InputError(f"{path}: {len(dup)} duplicate id(s) in column '{columns.id}': {', '.join(map(str, dup[:5]))}")
    if predict:
        frame["split"] = PREDICT
    else:
        split = raw[columns.split].astype(str).str.strip().str.lower()
        unknown = sorted(set(split) - set(SPLIT_ALIASES))
        if unknown:
            raise InputError(f"{path}: unknown split value(s) {unknown} in column '{columns.split}' "
                             f"(expected one of {', '.join(SPLITS)}, or val/validation)")
        frame["split"] = split.map(SPLIT_ALIASES)
    if columns.text in raw:
        frame["text"] = raw[columns.text].astype(str)
    if columns.image in raw:
        frame["image"] = raw[columns.image].astype(str).str.strip()
    used = {columns.id, columns.split, columns.text, columns.image}
    for name in raw.columns:
        if name in used:
            continue
        if name in CANONICAL:
            # A raw column named like a slot another column fills (e.g. `text` beside --text-col caption) must
            # not slip into that slot: the user chose the other column.
            why = (f"--{name}-col is '{getattr(columns, name)}'" if name in ("id", "split", "text", "image")
                   else "feat derives it from the image column")
            notes.append(f"column '{name}' ignored: {why}")
            continue
        frame[name] = raw[name].astype(str)
    return frame.reset_index(drop=True)


CANONICAL = ("id", "split", "text", "image", "image_path", "image_error")


def _check_named_columns(raw: pd.DataFrame, columns: Columns, path: Path, predict: bool) -> None:
    """A column option set to another name than its default must name a column of the table: falling back to
    the default (or deriving ids) would quietly use other data than the user asked for."""
    defaults = Columns()
    for slot in ("id", "text", "image", "split"):
        name = getattr(columns, slot)
        if slot == "split" and predict:
            continue
        if name != getattr(defaults, slot) and name not in raw:
            raise InputError(f"{path}: no column '{name}' (--{slot}-col; columns: {', '.join(raw.columns)})")


def _replace_nul(frame: pd.DataFrame, notes: list[str]) -> None:
    """NUL characters (binary junk in scraped text) cannot be stored in HDF5 strings; they become U+FFFD,
    said in a note, so that the stored table and what the encoders see stay the same text."""
    for name in frame.columns:
        has_nul = frame[name].str.contains("\x00", regex=False)
        if has_nul.any():
            frame[name] = frame[name].str.replace("\x00", "\ufffd", regex=False)
            ids = frame.loc[has_nul, "id"].tolist()
            notes.append(f"{len(ids)} value(s) of column '{name}' contain NUL characters, replaced by U+FFFD "
                         f"(ids {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")


def _derive_ids(raw: pd.DataFrame, columns: Columns) -> list[str]:
    """Content-derived ids survive reordering and appending rows, unlike row numbers."""
    texts = raw[columns.text].astype(str) if columns.text in raw else [""] * len(raw)
    images = raw[columns.image].astype(str) if columns.image in raw else [""] * len(raw)
    seen: dict[str, int] = {}
    ids = []
    for text, image in zip(texts, images):
        key = hashlib.sha1(f"{text}\x1f{image}".encode()).hexdigest()[:16]
        seen[key] = seen.get(key, 0) + 1
        ids.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return ids


def _resolve_images(frame: pd.DataFrame, root: Path, allow_outside_root: bool) -> None:
    real_root = root.resolve()
    paths, errors = [], []
    for value in frame["image"]:
        path, error = resolve_image_path(value, real_root, allow_outside_root)
        paths.append(path)
        errors.append(error)
    frame["image_path"] = paths
    frame["image_error"] = errors


OUTSIDE_ROOT = "path outside image root"  # `feat extract` refuses a table with such a row (an input error)


def resolve_image_path(value: str, real_root: Path, allow_outside_root: bool) -> tuple[str, str]:
    """Return (absolute path, "") or ("", reason). Symlinks are followed before the root check."""
    if not value or value.lower() == "nan":
        return "", "no image path"
    if "\x00" in value:
        return "", "invalid image path (contains a NUL byte)"
    # os.path.realpath on strings: the same answer as Path.resolve at half the cost, which a warm run on
    # millions of rows feels.
    root = str(real_root)
    try:
        resolved = os.path.realpath(os.path.join(root, value), strict=False)
    except (OSError, ValueError) as exc:  # a name too long for the file system
        return "", f"invalid image path ({getattr(exc, 'strerror', None) or exc})"
    inside = resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)
    if not allow_outside_root and not inside:
        return "", f"{OUTSIDE_ROOT} {real_root} (use --allow-outside-root to permit)"
    return resolved, ""
