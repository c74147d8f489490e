"""Summary statistics: mean ± std over seeds, bootstrap CIs and paired tests over test items, the
Nadeau-Bengio corrected resampled t-test over CV folds, and the bootstrap probability of a winner.

Item bootstraps resample TEST ITEMS (the main source of uncertainty with a few hundred test items) and, in
every resample, average the metric over the seeds of a configuration. The paired test draws the same items
for both configurations; its two-sided p-value inverts the percentile interval of the difference:
p = min(1, 2 * min(P*(delta <= 0), P*(delta >= 0))), the smallest alpha whose (1 - alpha) interval touches 0.
Every metric is computed from class probabilities, vectorised over resamples: hard-decision metrics from
confusion counts (sklearn's F1 definitions: a class absent from both truth and predictions of a resample is
left out of the macro mean), AUROC from ranks (Mann-Whitney), log-loss from the true class's probability.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as scipy_stats

from feat.fuse.metrics import higher_is_better

DECISION_METRICS = ("accuracy", "f1", "macro_f1")
EPS = np.finfo(np.float64).eps  # sklearn's log_loss clipping


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


def decisions(prob: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted classes of (..., n, k) probabilities: argmax, or for two classes p(positive) >= threshold."""
    if threshold is None or prob.shape[-1] != 2:
        return prob.argmax(axis=-1)
    return (prob[..., 1] >= threshold).astype(np.int64)


def _auroc(scores: np.ndarray, positive: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of (seeds, n) `scores` for the (n,) boolean `positive` on item resamples `draws`
    (B, n): (seeds, B), NaN where a resample holds one class. A resample is the whole sample weighted by how
    often it drew each item, so one sort per seed serves every draw (4x less CPU than ranking each resample)."""
    b, n = draws.shape
    counts = np.bincount((draws + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
    pos, neg = counts * positive, counts * ~positive
    out = []
    for s in scores:
        order = np.argsort(s, kind="stable")
        ordered = s[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # groups of tied scores
        p = np.add.reduceat(pos[:, order], starts, axis=1).astype(np.float64)
        q = np.add.reduceat(neg[:, order], starts, axis=1).astype(np.float64)
        below = np.cumsum(q, axis=1) - q  # negatives scored below each group; a tie counts one half
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((p * (below + 0.5 * q)).sum(1) / (p.sum(1) * q.sum(1)))
    return np.array(out)


def score_resamples(metric: str, y: np.ndarray, prob: np.ndarray, draws: np.ndarray,
                    threshold: float | None = None) -> np.ndarray:
    """`metric` of seed-averaged (seeds, n, k) or (n, k) probabilities on item resamples `draws` (B, n): (B,).

    The metric is computed per seed and then averaged over seeds (as the runs' own numbers are)."""
    prob = prob if prob.ndim == 3 else prob[None]
    k = prob.shape[-1]
    if metric in DECISION_METRICS:
        values = metric_from_confusion(confusions(y, decisions(prob, threshold), draws, k), metric)
    elif metric == "loss":
        p_true = np.take_along_axis(prob, y[None, :, None], axis=2)[..., 0]  # (seeds, n)
        values = -np.log(np.clip(p_true, EPS, 1))[:, draws].mean(-1)
    elif metric == "auroc":
        classes = [1] if k == 2 else range(k)  # binary: the positive class; else the macro one-vs-rest mean
        values = _nanmean([_auroc(prob[..., c], y == c, draws) for c in classes])
    else:
        raise ValueError(f"no resampled form of metric '{metric}'")
    return _nanmean(values) if values.ndim > 1 else values


def _nanmean(values) -> np.ndarray:
    """Mean over the first axis ignoring NaN; NaN where all are (a resample holding one class), silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(values), axis=0)


def observed(metric: str, y: np.ndarray, prob: np.ndarray, threshold: float | None = None) -> float:
    return float(score_resamples(metric, y, prob, np.arange(len(y))[None], threshold)[0])


def bootstrap_ci(metric: str, y: np.ndarray, prob: np.ndarray, b: int = 2000, seed: int = 0, level: float = 0.95,
                 threshold: float | None = None) -> tuple[float, float]:
    """Percentile CI of the seed-averaged metric over bootstrap resamples of the items."""
    return percentile_interval(score_resamples(metric, y, prob, resamples(len(y), b, seed), threshold), level)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of resampled values (NaN resamples ignored)."""
    tail = (1 - level) / 2 * 100
    return float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))


def paired_bootstrap(metric: str, y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, b: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """metric(a) - metric(b) on the same items: {"delta", "ci": [lo, hi], "p"} (two-sided, paired bootstrap).
    For a lower-is-better metric (loss) the delta is still a minus b: negative means a is better."""
    delta = observed(metric, y, prob_a) - observed(metric, y, prob_b)
    draws = resamples(len(y), b, seed)
    return paired_summary(delta, score_resamples(metric, y, prob_a, draws) - score_resamples(metric, y, prob_b, draws),
                          level)


def paired_summary(delta: float, diffs: np.ndarray, level: float = 0.95) -> dict:
    """{"delta", "ci", "p"} from the observed difference and its paired resamples (NaN resamples dropped)."""
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        return {"delta": float(delta), "ci": [float("nan")] * 2, "p": float("nan")}
    tail = (1 - level) / 2 * 100
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"delta": float(delta), "ci": [float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))],
            "p": p}


def corrected_t_test(differences: np.ndarray, n_train: float, n_test: float) -> dict:
    """Nadeau & Bengio (2003) corrected resampled t-test of J = K x R fold-score differences d_j:
    t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)), J - 1 degrees of freedom, two-sided p. The plain
    paired t-test (variance term 1/J) ignores that the folds' training sets overlap and is anti-conservative."""
    d = np.asarray(differences, dtype=np.float64)
    j = len(d)
    if j < 2:
        return {"delta": float(d.mean()) if j else float("nan"), "t": float("nan"), "df": j - 1, "p": float("nan")}
    variance = d.var(ddof=1) * (1 / j + n_test / n_train)
    if variance == 0:
        t = 0.0 if d.mean() == 0 else np.sign(d.mean()) * np.inf
    else:
        t = d.mean() / np.sqrt(variance)
    p = float(2 * scipy_stats.t.sf(abs(t), df=j - 1))
    return {"delta": float(d.mean()), "t": float(t), "df": j - 1, "p": p}


def winner_probability(scores: np.ndarray, metric: str, b: int = 2000, seed: int = 0) -> np.ndarray:
    """How sure the choice of winner is: `scores` (configurations, cells) are the selection scores of every
    configuration on the same cells (fold x seed, or dev-item resamples already drawn); the cells are
    resampled with replacement, the same draw for every configuration, and each configuration's fraction of
    first places is returned (ties split). Configurations with a NaN cell never win that draw."""
    draws = resamples(scores.shape[1], b, seed)
    return first_place_rate(scores[:, draws].mean(-1), metric)


def first_place_rate(resampled: np.ndarray, metric: str) -> np.ndarray:
    """(configurations, B) resampled selection scores -> each configuration's share of first places (ties split;
    a NaN never wins)."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    means = np.where(np.isfinite(resampled), sign * resampled, -np.inf)
    best = means == means.max(axis=0, keepdims=True)
    return (best / best.sum(axis=0, keepdims=True)).mean(axis=1)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over the claims printed together)."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
