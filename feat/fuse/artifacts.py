"""Files of a run folder. metrics.json is written last and atomically: its presence marks a complete run.

Weights carry a digest of their tensors in their metadata (`xxh3`), and a run's model.safetensors also the
digest of the config.json written just before it beside it (`config_xxh3`): a truncated or edited weights
file, or a config.json edited or taken from another run, is refused on loading with one line (exit 2)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from feat.errors import InputError

CONFIG, MODEL, METRICS, HISTORY = "config.json", "model.safetensors", "metrics.json", "history.csv"
CHECKS = "feat"  # the weights' metadata key: JSON of the caller's metadata and the digests
CURVE = "learning_curve.png"
BEST, RESULTS = "best", "results.csv"  # in an ablation folder: its winning run, and one row per run


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` then rename: readers never see half a file."""
    from feat.errors import StorageError

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as exc:  # safetensors reports a full disk as its own error type
        error = StorageError.of(path, exc)
        if error is None:
            raise
        raise error from exc
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses even this
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
    if path.name == BEST and (path.is_file() or path.is_symlink()):  # named by the run it stands for
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
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is damaged (not valid JSON: {exc}); {_rerun_hint(Path(path))}") from None


def _rerun_hint(path: Path) -> str:
    return (f"re-run the command that wrote {path.parent} (`feat fuse`, `feat finetune`, `feat ablate` resumes), "
            f"or restore it from a copy; `feat verify CACHE --runs {path.parent}` checks a run folder")


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

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    checks = {**metadata, "xxh3": tensors_digest(tensors)}
    config = path.with_name(CONFIG)
    if path.name == MODEL and config.exists():
        checks["config_xxh3"] = _file_digest(config)
    # One metadata key: safetensors writes several in a random order, and same-seed runs must be byte-identical
    atomic_write(path, lambda p: save_file(tensors, str(p), {CHECKS: json.dumps(checks, sort_keys=True)}))


def load_model(path: Path) -> dict:
    """The tensors of a weights file, verified against their digest (and a run's config.json against its)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise InputError(f"{path} is missing; {_rerun_hint(path)}") from None
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError/ValueError, on a bad file
        raise InputError(f"{path} is damaged ({' '.join(str(exc).split())[:160]}); {_rerun_hint(path)}") from None
    try:
        metadata = json.loads(metadata.get(CHECKS, "{}"))
    except ValueError:
        raise InputError(f"{path} is damaged (its metadata is not valid JSON); {_rerun_hint(path)}") from None
    if "xxh3" in metadata and metadata["xxh3"] != tensors_digest(tensors):
        raise InputError(f"{path} is damaged (its tensors do not match their checksum); {_rerun_hint(path)}")
    config = path.with_name(CONFIG)
    if "config_xxh3" in metadata and config.exists() and metadata["config_xxh3"] != _file_digest(config):
        raise InputError(f"{config} does not match the weights in {path} (edited, damaged or from another run); "
                         f"{_rerun_hint(path)}")
    return tensors


def tensors_digest(tensors: dict) -> str:
    """xxh3-128 of names, dtypes, shapes and bytes, in name order."""
    import torch
    import xxhash

    digest = xxhash.xxh3_128()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}\x1f{tensor.dtype}\x1f{tuple(tensor.shape)}\x1e".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(path.read_bytes())


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


def predictions_frame(ids, y, prob, classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids, "true": [classes[i] for i in y],
                          "pred": [classes[i] for i in prob.argmax(axis=1)]})
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = prob[:, k]
    return frame


def metric_label(metric: str, classes: list[str] | None = None) -> str:
    """A metric as a reader needs it named: binary F1, precision and recall name their class (the run's
    second class, the positive one), AUROC says when it is a macro one-vs-rest mean."""
    names = {"f1": "F1", "f1_tuned": "F1 at the tuned threshold", "macro_f1": "macro-F1",
             "weighted_f1": "weighted F1", "accuracy": "accuracy", "auroc": "AUROC", "precision": "precision",
             "recall": "recall", "loss": "log-loss"}
    label = names.get(metric, metric)
    if metric in ("f1", "f1_tuned", "precision", "recall") and classes and len(classes) == 2:
        label += f" of class '{classes[1]}'"
    if metric == "auroc" and classes and len(classes) > 2:
        label = "macro one-vs-rest AUROC"
    return label


def chance_level(metric: str, y: np.ndarray, n_classes: int) -> float | None:
    """The metric of guessing uniformly at random on labels `y` (class indices; binary F1, precision and
    recall of class 1), from the expected confusion counts. None for the loss."""
    share = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes) / max(len(y), 1)
    guess = 1 / n_classes
    f1 = 2 * share * guess / np.maximum(share + guess, 1e-12)  # per class: precision = share, recall = guess
    return {"accuracy": guess, "auroc": 0.5, "f1": f1[-1] if n_classes == 2 else None,
            "precision": share[-1] if n_classes == 2 else None, "recall": guess if n_classes == 2 else None,
            "macro_f1": f1.mean(), "weighted_f1": float((share * f1).sum())}.get(metric)


def learning_curve(path: Path, history: pd.DataFrame, metric: str, best_epoch: int, title: str,
                   classes: list[str] | None = None, chance: float | None = None) -> None:
    """Loss (train, dev) and the dev metric per epoch, side by side. `classes` names the metric's class;
    `chance`: the metric of random guessing, drawn when known (AUROC: 0.5)."""
    fig = curve_figure(history, metric, best_epoch, title, classes, chance)
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)


def curve_figure(history: pd.DataFrame, metric: str, best_epoch: int, title: str,
                 classes: list[str] | None = None, chance: float | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    label = metric_label(metric, classes)
    fig, (loss, score) = plt.subplots(1, 2, figsize=(9, 4), dpi=100)
    # Fixed margins (tight_layout costs 0.1 s a run); the legends sit below the axes, never over a curve.
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.3, top=0.88, wspace=0.25)
    epochs = history["epoch"]
    loss.plot(epochs, history["train_loss"], "o-", label="train loss")
    loss.plot(epochs, history["dev_loss"], "s-", label="dev loss")
    loss.set_ylabel("cross-entropy loss")
    top = np.nanmax(history[["train_loss", "dev_loss"]].to_numpy(dtype=float), initial=0.0)
    loss.set_ylim(0, 1.1 * top if np.isfinite(top) and top > 0 else 1)
    score.plot(epochs, history[f"dev_{metric}"], "^-", color="tab:green", label=f"dev {label}")
    score.set_ylabel(f"dev {label}")
    if metric != "loss":
        score.set_ylim(0, 1.02)  # the whole range of the metric: a small gain does not look like a large one
    if chance is None and metric == "auroc":
        chance = 0.5
    if chance is not None:
        score.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")
    # Half an epoch either side: one fit (logreg) is one point on a unit-wide axis, not a 0.96-1.04 zoom on it.
    first, last = int(epochs.min()), int(epochs.max())
    for ax in (loss, score):
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlim(first - 0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig
