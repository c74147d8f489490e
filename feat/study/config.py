"""What one study run is: the data, the task, the preset and its overrides, and where everything goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from feat.data import Columns
from feat.errors import InputError

AUTO_CV_ROWS = 10_000  # --cv auto: 5-fold CV below this many train+dev rows (its cost: 5x the runs)


@dataclass
class StudyConfig:
    data: Path  # a CSV/TSV/Parquet file with a split column, or a folder of per-split files
    label: str  # label column (the task)
    out: Path  # study folder: report.md, study.png, costs.json, configurations.csv, ablation/, cache/
    preset: str = "reference"  # a name from feat.study.preset.PRESETS
    encoders: list[str] | None = None  # registry names replacing the preset's list (roles kept where known)
    models: dict[str, str] = field(default_factory=dict)  # encoder -> checkpoint id or local folder
    seeds: int | None = None  # seeds per configuration; None = the preset's
    strategies: list[str] | None = None  # fusion strategies for multi-input sets; None = the preset's
    cache: Path | None = None  # feature cache; None = out/cache (a shared cache reuses its valid rows)
    columns: Columns = field(default_factory=Columns)
    image_root: Path | None = None  # image paths are relative to this (default: the data file's folder)
    device: str = "auto"  # extraction device: auto | cpu | cuda | cuda:N
    batch_size: int = 32  # extraction items per forward pass
    num_workers: int = 0  # image decoding processes during extraction
    force: bool = False  # re-encode a feature set whose fingerprint changed instead of stopping
    workers: int = 2  # ablation worker processes
    cv: str = "auto"  # folds over train+dev: auto = 5 below AUTO_CV_ROWS train+dev rows, else the data's split; or K
    cv_repeats: int = 1  # reshuffles of the K folds
    group_col: str | None = None  # rows sharing this column's value stay in one fold
    tune: int = 0  # hyperparameter trials per configuration, chosen on validation data
    positive: str | None = None  # positive class of a binary label

    def folds(self, train_and_dev_rows: int) -> int:
        """K for this data: on a small set a dev-selected winner is mostly noise, so `auto` cross-validates."""
        if self.cv == "auto":
            return 5 if train_and_dev_rows < AUTO_CV_ROWS else 0
        try:
            return int(self.cv)
        except ValueError:
            raise InputError(f"--cv takes auto or a number of folds, not '{self.cv}'") from None

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache is not None else Path(self.out) / "cache"
