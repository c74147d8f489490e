"""Summary statistics of an ablation: mean ± std over seeds, bootstrap CIs and paired tests over test items.

Both the CI and the test resample TEST ITEMS (the main source of uncertainty with a few hundred test items)
and, in every resample, average the metric over the seeds of a configuration. The paired test draws the
same items for both configurations; its two-sided p-value inverts the percentile interval of the difference:
p = min(1, 2 * min(P*(delta <= 0), P*(delta >= 0))), the smallest alpha whose (1 - alpha) interval
touches 0. Metrics come from confusion counts, vectorised over resamples (sklearn's F1 definitions: a class
absent from both truth and predictions of a resample is left out of the macro mean).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_METRICS = ("accuracy", "f1", "macro_f1")


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def confusions(y: np.ndarray, preds: np.ndarray, resamples: np.ndarray, k: int) -> np.ndarray:
    """(seeds, B, k, k) confusion counts (rows = truth) of `preds` (seeds, n) on item resamples (B, n)."""
    seeds, b = preds.shape[0], resamples.shape[0]
    truth = y[resamples]  # (B, n)
    cell = truth[None] * k + preds[:, resamples]  # (seeds, B, n)
    offset = (np.arange(seeds * b).reshape(seeds, b, 1)) * k * k
    counts = np.bincount((cell + offset).ravel(), minlength=seeds * b * k * k)
    return counts.reshape(seeds, b, k, k)


def metric_from_confusion(c: np.ndarray, metric: str) -> np.ndarray:
    """accuracy / f1 (positive class for k=2, else macro) / macro_f1 over the last two axes."""
    k = c.shape[-1]
    tp = np.diagonal(c, axis1=-2, axis2=-1).astype(np.float64)
    if metric == "accuracy":
        return tp.sum(-1) / c.sum((-2, -1))
    denom = c.sum(-1) + c.sum(-2)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if metric == "f1" and k == 2:
        return f1[..., 1]
    present = denom > 0
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def resamples(n: int, b: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def seed_mean_metric(y, preds, draws, k, metric) -> np.ndarray:
    """The metric averaged over seeds, per resample: (B,)."""
    return metric_from_confusion(confusions(y, np.atleast_2d(preds), draws, k), metric).mean(axis=0)


def bootstrap_ci(y: np.ndarray, preds: np.ndarray, k: int, metric: str, b: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the seed-averaged metric over bootstrap resamples of the items."""
    values = seed_mean_metric(y, preds, resamples(len(y), b, seed), k, metric)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def paired_bootstrap(y: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray, k: int, metric: str,
                     b: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(observed metric(a) - metric(b), two-sided p-value), the same item resamples for both."""
    everything = np.arange(len(y))[None]
    observed = float(seed_mean_metric(y, preds_a, everything, k, metric)[0]
                     - seed_mean_metric(y, preds_b, everything, k, metric)[0])
    draws = resamples(len(y), b, seed)
    delta = seed_mean_metric(y, preds_a, draws, k, metric) - seed_mean_metric(y, preds_b, draws, k, metric)
    p = min(1.0, 2 * min(float(np.mean(delta <= 0)), float(np.mean(delta >= 0))))
    return observed, p
