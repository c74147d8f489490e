"""The metrics of one split, as written to metrics.json and recomputed by `feat evaluate`.

`f1`, `precision` and `recall` are binary (of the positive class: the second of the run's two classes,
`--positive-label` or else the second sorted label) for two classes and macro-averaged otherwise; they
use the argmax decision (p >= 0.5 for two classes). `f1_tuned` is the positive-class F1 at a decision
threshold chosen on validation rows only (binary tasks). Undefined values (AUROC when a class is absent)
are None.
"""

from __future__ import annotations

import numpy as np

from feat.errors import InputError


def resolve_metric(metric: str, n_classes: int) -> str:
    """`auto` -> auroc (binary; macro one-vs-rest for more classes): threshold-free metrics rank configurations
    far more stably than F1 on a few hundred validation rows (see README, "Choosing a configuration")."""
    from feat.fuse.config import METRICS

    if metric == "auto":
        return "auroc"
    if metric not in METRICS:
        raise InputError(f"--metric must be auto or one of {', '.join(METRICS)}, not '{metric}'")
    return metric


def higher_is_better(metric: str) -> bool:
    return metric != "loss"


def best_threshold(y: np.ndarray, p_positive: np.ndarray) -> float:
    """The decision threshold on p(positive) that maximises the positive-class F1 of these (validation) rows;
    midpoint between neighbouring scores; 0.5 when the rows hold no positive (every threshold scores 0)."""
    if not (y == 1).any():
        return 0.5
    order = np.argsort(-p_positive, kind="stable")
    scores, positive = p_positive[order], y[order] == 1
    tp = np.cumsum(positive)
    fp = np.cumsum(~positive)
    f1 = 2 * tp / (tp + fp + positive.sum())
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])  # cut only between distinct scores
    i = last[np.argmax(f1[last])]
    below = scores[i + 1] if i + 1 < len(scores) else 0.0
    return float((scores[i] + below) / 2)


def _scorers(y: np.ndarray, prob: np.ndarray, loss: float) -> dict:
    """metric -> a function computing it: compute_metrics and the per-epoch early-stopping value share them, so
    the value that chose the best epoch is bit for bit the one metrics.json reports."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    k = prob.shape[1]
    pred = prob.argmax(axis=1)
    average = "binary" if k == 2 else "macro"

    def auroc():
        if len(np.unique(y)) < k:  # AUROC needs every class among the true labels
            return None
        if k == 2:
            return float(roc_auc_score(y, prob[:, 1]))
        return float(roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(k))))

    return {
        "accuracy": lambda: float(accuracy_score(y, pred)),
        "f1": lambda: float(f1_score(y, pred, average=average, zero_division=0)),
        "macro_f1": lambda: float(f1_score(y, pred, average="macro", zero_division=0)),
        "weighted_f1": lambda: float(f1_score(y, pred, average="weighted", zero_division=0)),
        "precision": lambda: float(precision_score(y, pred, average=average, zero_division=0)),
        "recall": lambda: float(recall_score(y, pred, average=average, zero_division=0)),
        "auroc": auroc,
        "loss": lambda: float(loss),
    }


def compute_metrics(y: np.ndarray, prob: np.ndarray, loss: float, threshold: float | None = None,
                    only: str | None = None) -> dict:
    """`prob` is (n, classes) softmax output; `loss` the mean (unweighted) cross-entropy; `threshold`, for
    two classes, a decision threshold chosen on validation rows (adds `f1_tuned` and `threshold`).
    `only`: just that metric and the loss (what early stopping needs each epoch)."""
    from sklearn.metrics import confusion_matrix, f1_score

    scorers = _scorers(y, prob, loss)
    if only is not None:
        return {"loss": float(loss), only: scorers[only]()}
    k = prob.shape[1]
    scores = {name: compute() for name, compute in scorers.items()}
    scores["confusion_matrix"] = confusion_matrix(y, prob.argmax(axis=1), labels=list(range(k))).tolist()
    scores["n"] = int(len(y))
    if k == 2 and threshold is not None:
        scores["threshold"] = float(threshold)
        scores["f1_tuned"] = float(f1_score(y, (prob[:, 1] >= threshold).astype(int), zero_division=0))
    return scores


def score(metrics: dict, metric: str) -> float:
    """The selection value of a split's metrics, oriented so that larger is better."""
    value = metrics[metric]
    if value is None:
        return -np.inf
    return value if higher_is_better(metric) else -value
