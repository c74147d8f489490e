"""The metrics of one split, as written to metrics.json and recomputed by `feat evaluate`.

`f1`, `precision` and `recall` are binary (positive class = the second sorted label, as the reference) for
two classes and macro-averaged otherwise. Undefined values (AUROC when a class is absent) are None.
"""

from __future__ import annotations

import numpy as np

from feat.errors import InputError


def resolve_metric(metric: str, n_classes: int) -> str:
    """`auto` -> f1 for two classes (positive-class F1, the reference's headline), macro_f1 otherwise."""
    from feat.fuse.config import METRICS

    if metric == "auto":
        return "f1" if n_classes == 2 else "macro_f1"
    if metric not in METRICS:
        raise InputError(f"--metric must be auto or one of {', '.join(METRICS)}, not '{metric}'")
    return metric


def higher_is_better(metric: str) -> bool:
    return metric != "loss"


def compute_metrics(y: np.ndarray, prob: np.ndarray, loss: float) -> dict:
    """`prob` is (n, classes) softmax output; `loss` the mean (unweighted) cross-entropy."""
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_score, recall_score,
                                 roc_auc_score)

    k = prob.shape[1]
    pred = prob.argmax(axis=1)
    average = "binary" if k == 2 else "macro"
    scores = {
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, average=average, zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "precision": float(precision_score(y, pred, average=average, zero_division=0)),
        "recall": float(recall_score(y, pred, average=average, zero_division=0)),
        "auroc": None,
        "loss": float(loss),
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        "n": int(len(y)),
    }
    if len(np.unique(y)) == k:  # AUROC needs every class among the true labels
        if k == 2:
            scores["auroc"] = float(roc_auc_score(y, prob[:, 1]))
        else:
            scores["auroc"] = float(roc_auc_score(y, prob, multi_class="ovr", average="macro",
                                                  labels=list(range(k))))
    return scores


def score(metrics: dict, metric: str) -> float:
    """The selection value of a split's metrics, oriented so that larger is better."""
    value = metrics[metric]
    if value is None:
        return -np.inf
    return value if higher_is_better(metric) else -value
