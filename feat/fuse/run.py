"""One fusion run (`feat fuse`) and its re-evaluation (`feat evaluate`).

A run folder holds everything needed to rebuild the head and check it against the cache:
config.json (head + training config, classes, input widths, feature fingerprints, items digest),
model.safetensors (head weights + the train-only standardisation statistics), history.csv,
predictions_dev.csv, predictions_test.csv, learning_curve.png, and metrics.json, written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from feat import __version__
from feat.errors import InputError
from feat.fuse import artifacts as art
from feat.fuse.config import (CLASS_WEIGHTS, MISSING, PRECISION, CVConfig, HeadConfig, TrainConfig, from_dict,
                              to_dict)
from feat.fuse.data import FusionData, fit_stats, load_data, prepare
from feat.fuse.metrics import best_threshold, resolve_metric
from feat.fuse.registry import check_inputs, create_head
from feat.fuse.train import Inputs, deterministic, predict, split_metrics, train

STATS = "__stats__"  # key prefix of the standardisation tensors in model.safetensors


@dataclass
class FuseSpec:
    cache: Path  # the feature cache folder
    features: list[str]  # feature sets, one head input each, in this order
    label: str  # label column of the cache's items
    out: Path  # the run folder to write
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    valid_from: list[str] = field(default_factory=list)  # also drop rows invalid in these (ablation: all inputs)
    curve: bool = True  # draw learning_curve.png
    positive: str | None = None  # the positive class of a binary label (default: the second sorted label)
    cv: CVConfig = field(default_factory=CVConfig)  # the folds; `partition` picks one (0 = the data's own split)
    partition: int = 0  # repeat * K + fold: this run trains on the other folds and validates on this one
    trial: int = 0  # --tune: which hyperparameter trial `head` and `train` are (0 = the given values)

    def load(self, valid_from: list[str]) -> FusionData:
        return load_data(self.cache, valid_from, self.label, self.train.missing, valid_from,
                         positive=self.positive, group_col=self.cv.group_col)


@dataclass
class RunResult:
    out: Path
    metrics: dict  # as in metrics.json
    metric: str  # the selection metric
    data_report: dict  # rows per split, rows dropped / zero-filled and why
    classes: list[str]  # binary: the second is the positive class
    features: list[str]
    strategy: str


def check_spec(spec: FuseSpec) -> None:
    """Refuse bad options before any data is read."""
    check_inputs(spec.head.strategy, len(spec.features))
    if spec.train.missing not in MISSING:
        raise InputError(f"--missing must be one of {', '.join(MISSING)}, not '{spec.train.missing}'")
    if spec.train.precision not in PRECISION:
        raise InputError(f"--precision must be one of {', '.join(PRECISION)}, not '{spec.train.precision}'")
    if spec.train.class_weights not in CLASS_WEIGHTS:
        raise InputError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}")
    resolve_metric(spec.train.metric, 2)
    if spec.train.epochs < 1 or spec.train.batch_size < 1 or spec.train.patience < 1:
        raise InputError("--epochs, --batch-size and --patience must be at least 1")
    if spec.cv.folds == 1 or spec.cv.folds < 0 or spec.cv.repeats < 1:
        raise InputError("--cv takes 0 (the data's own split) or at least 2 folds, --cv-repeats at least 1")


def run_fuse(spec: FuseSpec, data: FusionData | None = None) -> RunResult:
    """Train one head and write its run folder. `data` (already loaded, e.g. by ablate) is reused as is."""
    check_spec(spec)
    valid_from = list(dict.fromkeys([*spec.valid_from, *spec.features]))
    if data is None:
        data = spec.load(valid_from)
    data = data.with_partition(spec.cv, spec.partition).select(spec.features)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / art.METRICS).unlink(missing_ok=True)  # the folder is incomplete until metrics.json is back

    stats, inputs = _inputs(data, spec.train)
    result = train(spec.head, spec.train, data, inputs)
    threshold = _threshold(result.head, inputs, data, spec.train)
    splits = {s: _evaluate_split(result.head, inputs, data, s, spec.train, threshold) for s in ("dev", "test")}

    config = {"feat_version": __version__, "cache": str(Path(spec.cache).resolve()), "features": data.features,
              "label": spec.label, "classes": data.classes, "input_dims": inputs.dims, "metric": result.metric,
              "valid_from": valid_from, "head": to_dict(spec.head), "train": to_dict(spec.train),
              "fingerprints": data.fingerprints, "items_digest": data.items_digest(), "data": data.report,
              "positive_class": data.classes[1] if len(data.classes) == 2 else None, "cv": to_dict(spec.cv),
              "partition": spec.partition, "trial": spec.trial}
    art.write_json(out / art.CONFIG, config)
    tensors = dict(result.head.state_dict())
    for f, s in (stats or {}).items():
        tensors[f"{STATS}/{f}/mean"], tensors[f"{STATS}/{f}/scale"] = torch.from_numpy(s["mean"]), torch.from_numpy(s["scale"])
    art.save_model(out / art.MODEL, tensors, {"format": "pt"})  # one key: a map of several is written in random order
    history = pd.DataFrame(result.history)
    art.write_csv(out / art.HISTORY, history)
    for s, (_, prob) in splits.items():
        rows = data.rows(s)
        art.write_csv(out / f"predictions_{s}.csv", art.predictions_frame(data.ids[rows], data.y[rows], prob, data.classes))
    if spec.curve:
        dev_y = data.y[data.rows("dev")]
        art.learning_curve(out / art.CURVE, history, result.metric, result.best_epoch,
                           f"label '{spec.label}': {spec.head.strategy} on {'+'.join(data.features)}, seed "
                           f"{spec.train.seed}", data.classes, art.chance_level(result.metric, dev_y, len(data.classes)))
    metrics = {"dev": splits["dev"][0], "test": splits["test"][0], "best_epoch": result.best_epoch,
               "seed": spec.train.seed, "train_seconds": round(result.seconds, 3), "metric": result.metric,
               "positive_class": config["positive_class"]}
    art.write_json(out / art.METRICS, metrics)
    return RunResult(out, metrics, result.metric, data.report, data.classes, data.features, spec.head.strategy)


def _threshold(head, inputs: Inputs, data: FusionData, cfg: TrainConfig) -> float | None:
    """Binary tasks: the decision threshold that maximises the positive-class F1 of the dev (validation)
    rows; test is scored with it once."""
    if len(data.classes) != 2:
        return None
    rows = data.rows("dev")
    with deterministic(cfg.seed, cfg.precision):
        prob = split_metrics(predict(head, inputs, rows), data.y[rows])[1]
    return best_threshold(data.y[rows], prob[:, 1])


def _inputs(data: FusionData, cfg: TrainConfig) -> tuple[dict | None, Inputs]:
    """Train-only statistics and the prepared matrices, memoised per input and partition on `data` (an
    ablation standardises each input once per fold, not once per run)."""
    stats = fit_stats(data) if cfg.standardize else None
    matrices = []
    for f in data.features:
        key = ("prepared", f, cfg.standardize, cfg.missing, data.partition)
        if key not in data.memo:
            data.memo[key] = prepare(data.select([f]), stats and {f: stats[f]}, cfg.missing)[0]
        matrices.append(data.memo[key])
    return stats, Inputs(matrices)


def _evaluate_split(head, inputs: Inputs, data: FusionData, split: str, cfg: TrainConfig,
                    threshold: float | None = None) -> tuple[dict, np.ndarray]:
    """Metrics (+ mean learned modality weights) and probabilities of one split; the same code for both
    the end of training and `feat evaluate`, single-threaded so that the floats are identical."""
    rows = data.rows(split)
    with deterministic(cfg.seed, cfg.precision):
        metrics, prob = split_metrics(predict(head, inputs, rows), data.y[rows], threshold)
        with torch.no_grad():
            weights = head.modality_weights(inputs.take(rows))
    if weights is not None:
        metrics["modality_weights"] = dict(zip(data.features, weights.mean(dim=0).tolist()))
    return metrics, prob


@dataclass
class Evaluation:
    split: str
    metrics: dict  # recomputed now
    saved: dict | None  # metrics.json's entry for the split
    config: dict

    @property
    def identical(self) -> bool:
        return self.saved is not None and art.jsonable(self.metrics) == self.saved


def evaluate_run(run_dir: Path, split: str = "dev", cache: Path | None = None) -> Evaluation:
    """Rebuild the head from a run folder and recompute one split's metrics from the cache."""
    run_dir = Path(run_dir)
    split = "dev" if split == "val" else split
    if split not in ("train", "dev", "test"):
        raise InputError(f"--split must be train, dev (val) or test, not '{split}'")
    if not (run_dir / art.CONFIG).exists() or not (run_dir / art.MODEL).exists():
        raise InputError(f"{run_dir} is not a complete feat run folder (config.json / model.safetensors missing)")
    config = art.read_json(run_dir / art.CONFIG)
    if config.get("kind") == "finetune":  # its encoders changed: the cache does not hold its features
        raise InputError(f"{run_dir} is a fine-tuned run: its features are not in any cache; its metrics.json "
                         "holds dev and test, and `feat predict` labels rows with it")
    cache = Path(cache or config["cache"])
    train_cfg = from_dict(TrainConfig, config["train"])
    _check_fingerprints(cache, config)
    cv = from_dict(CVConfig, config.get("cv", {}))
    data = load_data(cache, config["valid_from"], config["label"], train_cfg.missing, config["valid_from"],
                     classes=config["classes"], group_col=cv.group_col)
    data = data.with_partition(cv, config.get("partition", 0))
    if data.items_digest() != config["items_digest"]:
        raise InputError(f"the items of cache {cache} (ids, splits or '{config['label']}' labels) differ from "
                         f"the ones run {run_dir} was trained on")
    head, data, inputs = _rebuild(run_dir, config, data.select(config["features"]))
    saved_all = art.read_json(run_dir / art.METRICS) if (run_dir / art.METRICS).exists() else {}
    threshold = (saved_all.get("dev") or {}).get("threshold")
    metrics = _evaluate_split(head, inputs, data, split, train_cfg, threshold)[0]
    return Evaluation(split, metrics, saved_all.get(split), config)


def _rebuild(run_dir: Path, config: dict, data: FusionData):
    """(head with the run's weights, data, the run's prepared inputs of `data`'s rows)."""
    head_cfg, train_cfg = from_dict(HeadConfig, config["head"]), from_dict(TrainConfig, config["train"])
    tensors = art.load_model(Path(run_dir) / art.MODEL)
    stats = None
    if train_cfg.standardize:
        stats = {f: {k: tensors.pop(f"{STATS}/{f}/{k}").numpy() for k in ("mean", "scale")} for f in data.features}
    inputs = Inputs(prepare(data, stats, train_cfg.missing))
    with deterministic(train_cfg.seed):
        head = create_head(head_cfg, inputs.dims, len(data.classes))
    head.load_state_dict(tensors)
    return head, data, inputs


def fitted_model(run_dir: Path, data: FusionData, rows: np.ndarray):
    """A saved run as attribution.FittedModel on `rows` of `data` (the ablation's load): the run's own
    standardisation, and "missing" as the run was trained to see it (zeros + indicator with --missing zero;
    else the train mean, which is 0 after standardisation)."""
    from feat.fuse.attribution import FittedModel

    config = art.read_json(Path(run_dir) / art.CONFIG)
    train_cfg = from_dict(TrainConfig, config["train"])
    view = data.with_partition(from_dict(CVConfig, config.get("cv", {})), config.get("partition", 0))
    view = view.select(config["features"])
    head, _, inputs = _rebuild(run_dir, config, view.subset(rows))
    missing = [_missing_row(view, f, m.shape[1], train_cfg) for f, m in zip(view.features, inputs.matrices)]

    def probabilities(matrices: list) -> np.ndarray:
        with deterministic(train_cfg.seed, train_cfg.precision):
            logits = predict(head, Inputs(matrices), np.arange(matrices[0].shape[0]))
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy().astype(np.float64)

    matrices = [m if sp.issparse(m) else m.numpy() for m in inputs.matrices]
    return FittedModel(probabilities, matrices, missing, train_cfg.seed)


def _missing_row(view: FusionData, feature: str, width: int, cfg: TrainConfig):
    """The (1, width) prepared row of a missing input."""
    row = np.zeros((1, width), np.float32)
    if cfg.missing == "zero":
        row[0, -1] = 1
    elif not cfg.standardize and not sp.issparse(view.matrices[feature]):  # the raw mean of its training rows
        row[0] = view.matrices[feature][view.rows("train")].mean(axis=0)
    return sp.csr_matrix(row) if sp.issparse(view.matrices[feature]) else row


def _check_fingerprints(cache: Path, config: dict) -> None:
    from feat.cache import FeatureCache, fingerprint_id

    store = FeatureCache(cache)
    for name, saved in config["fingerprints"].items():
        current = store.fingerprint(name)
        if current is None:
            raise InputError(f"feature set '{name}' of run is not in cache {cache}")
        if fingerprint_id(current) != saved["id"]:
            raise InputError(f"feature set '{name}' in cache {cache} has fingerprint {fingerprint_id(current)}, "
                             f"but the run was trained on {saved['id']} (re-extracted with other settings?); "
                             "refusing to evaluate on different features")
