"""Files of a run folder. metrics.json is written last and atomically: its presence marks a complete run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

CONFIG, MODEL, METRICS, HISTORY = "config.json", "model.safetensors", "metrics.json", "history.csv"
CURVE = "learning_curve.png"
BEST, RESULTS = "best", "results.csv"  # in an ablation folder: its winning run, and one row per run


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_best(folder: Path, run: str) -> None:
    """FOLDER/best: a relative symlink to the winning run (`run`, relative to FOLDER), so that it is a run
    folder to every tool; a text file naming it where the file system has no symlinks (`resolve_run` reads
    both)."""
    link, tmp = folder / BEST, folder / f".{BEST}.tmp-{os.getpid()}"
    try:
        os.symlink(run, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        atomic_write(link, lambda p: p.write_text(f"{run}\n"))
        return
    os.replace(tmp, link)


def best_run(folder: Path) -> str:
    """The winning run of an ablation folder, relative to it, as `write_best` recorded it."""
    link = Path(folder) / BEST
    return os.readlink(link) if link.is_symlink() else link.read_text().strip()


def resolve_run(path: Path, ablation: bool = True) -> Path:
    """The run folder PATH stands for: itself; the run an ablation's `best` file names; with `ablation`, an
    ablation folder's best run. Anything else is returned as is, for the command to refuse."""
    path = Path(path)
    if path.is_file() and path.name == BEST:
        return path.parent / best_run(path.parent)
    if ablation and path.is_dir() and not (path / CONFIG).exists() and (path / RESULTS).exists():
        if not (path / BEST).exists():
            from feat.errors import InputError

            raise InputError(f"ablation folder {path} has no '{BEST}' yet: run `feat ablate` to the end first")
        return path / best_run(path)
    return path


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(jsonable(obj), indent=2) + "\n"))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def jsonable(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def save_model(path: Path, tensors: dict, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p), metadata))


def load_model(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


def predictions_frame(ids, y, prob, classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids, "true": [classes[i] for i in y],
                          "pred": [classes[i] for i in prob.argmax(axis=1)]})
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = prob[:, k]
    return frame


def learning_curve(path: Path, history: pd.DataFrame, metric: str, best_epoch: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(5, 3.2), dpi=80)
    fig.subplots_adjust(left=0.12, right=0.86, bottom=0.15, top=0.9)  # fixed margins: tight_layout costs 0.1 s
    left.plot(history["epoch"], history["train_loss"], "o-", label="train loss")
    left.plot(history["epoch"], history["dev_loss"], "s-", label="dev loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    right = left.twinx()
    right.plot(history["epoch"], history[f"dev_{metric}"], "^-", color="tab:green", label=f"dev {metric}")
    right.set_ylabel(f"dev {metric}")
    left.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles=handles, fontsize=7, loc="best")
    left.set_title(title, fontsize=9)
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
