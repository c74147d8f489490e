"""Modality attribution from trained heads, without their learned weights: how much the test metric drops
when one input is permuted across test items or replaced by its "missing" row, with a paired item bootstrap
CI of the drop; and the missing-modality robustness curve (the metric when a fraction p of the test rows
lose one input). Nothing is retrained: every number comes from predicting the test rows again.

Every perturbation is a row index into the input matrix with its missing row appended (index n): a
permutation, n everywhere ("missing"), or n on a subset of rows (robustness). CSR inputs stay sparse.
Models sharing a seed (the K fold models of one seed) are averaged into one probability matrix per seed and
the metric is averaged over seeds, as `stats.score_resamples` does for every other number of stage 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feat.fuse import artifacts as art
from feat.fuse.metrics import higher_is_better
from feat.fuse.stats import observed, paired_summary, resamples, score_resamples

KINDS = ("permuted", "missing")
KIND_LABELS = {"permuted": "permuted across test items", "missing": "replaced by the missing-input row"}
FRACTIONS = tuple(np.round(np.linspace(0, 1, 11), 2))
LEVEL = 0.95


@dataclass
class FittedModel:
    """One trained head with the test rows prepared the way its own training rows were."""

    predict: Callable[[list], np.ndarray]  # prepared matrices (one per input, same row order) -> (n, k) probabilities
    inputs: list  # prepared test matrices, one per input: float32 np.ndarray or scipy.sparse CSR
    missing: list  # per input, a (1, d) row (np.ndarray or CSR) that stands for "this input is missing"
    seed: int  # models sharing a seed are one fold ensemble: their probabilities are averaged before the metric


def _with_missing_row(matrix, missing):
    """`matrix` with `missing` appended as row n, in the matrix's own format."""
    if sp.issparse(matrix):
        return sp.vstack([matrix, sp.csr_matrix(missing, dtype=matrix.dtype)], format="csr")
    row = missing.toarray() if sp.issparse(missing) else np.asarray(missing)
    return np.concatenate([matrix, row.reshape(1, -1).astype(matrix.dtype, copy=False)])


class _Ensemble:
    """The models of one configuration, able to predict the test rows with one input re-indexed."""

    def __init__(self, models: list[FittedModel], names: list[str]):
        if not models:
            raise ValueError("attribution needs at least one fitted model")
        for model in models:
            if len(model.inputs) != len(names) or len(model.missing) != len(names):
                raise ValueError(f"every model needs {len(names)} inputs and missing rows ({', '.join(names)}), "
                                 f"got {len(model.inputs)} and {len(model.missing)}")
        self.models = models
        self.n = models[0].inputs[0].shape[0]
        self.seeds = sorted({m.seed for m in models})
        self._extended: dict[int, list] = {}

    def _extended_input(self, i: int) -> list:
        if i not in self._extended:  # one input at a time: the copies are as large as the test matrices
            self._extended = {i: [_with_missing_row(m.inputs[i], m.missing[i]) for m in self.models]}
        return self._extended[i]

    def predict(self, i: int | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """(seeds, n, k) probabilities with input i replaced by rows `rows` of [input i; missing row]."""
        extended = self._extended_input(i) if i is not None else None
        by_seed: dict[int, list] = {s: [] for s in self.seeds}
        for j, model in enumerate(self.models):
            inputs = list(model.inputs)
            if extended is not None:
                inputs[i] = extended[j][rows]
            by_seed[model.seed].append(np.asarray(model.predict(inputs), dtype=np.float64))
        return np.stack([np.mean(by_seed[s], axis=0) for s in self.seeds])


def _drop_row(name, kind, metric, y, base_scores, base_value, perturbed_probs, draws) -> dict:
    """Oriented drop (positive = worse) of the perturbed ensembles, averaged over their repeats, with a
    percentile CI over the item draws shared with the baseline (paired) and the two-sided bootstrap p."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    perturbed = float(np.mean([observed(metric, y, prob) for prob in perturbed_probs]))
    scores = np.mean([score_resamples(metric, y, prob, draws) for prob in perturbed_probs], axis=0)
    summary = paired_summary(sign * (base_value - perturbed), sign * (base_scores - scores), LEVEL)
    return {"input": name, "kind": kind, "metric": metric, "baseline": base_value, "perturbed": perturbed,
            "drop": summary["delta"], "ci_low": summary["ci"][0], "ci_high": summary["ci"][1], "p": summary["p"],
            "n": len(y)}


def importance(models: list[FittedModel], y: np.ndarray, metric: str, names: list[str], permutations: int = 5,
               b: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (input, kind): the test `metric` drop when the input is permuted across items (the same
    `permutations` permutations for every model and input, averaged) or replaced by its missing row."""
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, not {permutations}")
    ensemble = _Ensemble(models, names)
    y = np.asarray(y, dtype=np.int64)
    n = ensemble.n
    baseline = ensemble.predict()
    draws = resamples(n, b, seed)
    base_scores = score_resamples(metric, y, baseline, draws)
    base_value = observed(metric, y, baseline)
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(n) for _ in range(permutations)]
    rows = []
    for i, name in enumerate(names):
        permuted = [ensemble.predict(i, order) for order in orders]
        missing = [ensemble.predict(i, np.full(n, n))]
        for kind, probs in zip(KINDS, (permuted, missing)):
            rows.append(_drop_row(name, kind, metric, y, base_scores, base_value, probs, draws))
    return pd.DataFrame(rows)


def robustness(models: list[FittedModel], y: np.ndarray, metric: str, names: list[str],
               fractions=FRACTIONS, seed: int = 0) -> pd.DataFrame:
    """The test `metric` when the first round(p * n) rows of a seeded random order (one per input, so the
    subsets are nested as p grows) have input i replaced by its missing row."""
    ensemble = _Ensemble(models, names)
    y = np.asarray(y, dtype=np.int64)
    n = ensemble.n
    rows = []
    for i, name in enumerate(names):
        order = np.random.default_rng([seed, i]).permutation(n)
        for p in fractions:
            index = np.arange(n)
            index[order[:int(round(float(p) * n))]] = n
            value = observed(metric, y, ensemble.predict(i, index))
            rows.append({"input": name, "fraction": float(p), "metric": metric, "value": value, "n": n})
    return pd.DataFrame(rows)


def _wrap(title: str, fig) -> str:
    """Break a long title over lines that fit the figure (about 10 characters per inch at 10 pt)."""
    import textwrap

    return textwrap.fill(title, width=max(40, int(fig.get_figwidth() * 10)))


def _configurations(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(f"{f} / {s}" for f, s in zip(frame["features"], frame["strategy"])))


def _metric_name(frame: pd.DataFrame) -> str:
    return ", ".join(dict.fromkeys(frame["metric"].astype(str)))


def importance_figure(frame: pd.DataFrame, path: Path, title: str) -> None:
    """Horizontal bars of the drop with CI whiskers: one row per (configuration, input), one bar colour per
    kind, configurations separated by rules, a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame.assign(configuration=[f"{f} / {s}" for f, s in zip(frame["features"], frame["strategy"])])
    groups = list(frame.groupby(["configuration", "input"], sort=False))
    kinds = [k for k in KINDS if k in set(frame["kind"])] + sorted(set(frame["kind"]) - set(KINDS))
    height = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(groups) * max(1, len(kinds) / 2) + 1.6), dpi=150)
    for k, kind in enumerate(kinds):
        colour = plt.get_cmap("tab10")(k)
        for g, (_, rows) in enumerate(groups):
            row = rows[rows["kind"] == kind]
            if row.empty:
                continue
            drop, low, high = (float(row[c].iloc[0]) for c in ("drop", "ci_low", "ci_high"))
            whisker = np.array([[max(drop - low, 0)], [max(high - drop, 0)]])
            ax.barh(g + (k - (len(kinds) - 1) / 2) * height, drop, height=height, xerr=whisker, capsize=2.5,
                    color=colour, label=KIND_LABELS.get(kind, kind))
    ax.set_yticks(np.arange(len(groups)), [f"{c}: {i}" for (c, i), _ in groups], fontsize=8)
    previous = None
    for g, ((configuration, _), _) in enumerate(groups):
        if previous is not None and configuration != previous:
            ax.axhline(g - 0.5, color="lightgrey", linewidth=0.8)
        previous = configuration
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    metric = _metric_name(frame)
    worse = "higher" if metric == "loss" else "lower"
    ax.set_xlabel(f"drop in test {metric} when the input is perturbed (positive = {worse} {metric}), "
                  f"95% paired bootstrap CI", fontsize=8)
    ax.set_ylabel("configuration: perturbed input", fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    n = ", ".join(str(v) for v in dict.fromkeys(frame["n"])) if "n" in frame else "?"
    fig.suptitle(_wrap(f"{title} (n = {n} test items)", fig), fontsize=10)
    fig.tight_layout()
    art.atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def robustness_figure(frame: pd.DataFrame, path: Path, title: str, chance: float | None) -> None:
    """One panel per dropped input, one line per configuration (same colour in every panel), x = fraction
    of test rows missing that input; the chance level dashed when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame.assign(configuration=[f"{f} / {s}" for f, s in zip(frame["features"], frame["strategy"])])
    configurations = _configurations(frame)
    colours = {c: plt.get_cmap("tab10" if len(configurations) <= 10 else "tab20")(j)
               for j, c in enumerate(configurations)}
    inputs = list(dict.fromkeys(frame["input"]))
    metric = _metric_name(frame)
    fig, axes = plt.subplots(1, len(inputs), figsize=(4.2 * len(inputs) + 2.6, 3.8), dpi=150, sharey=True,
                             squeeze=False)
    for ax, name in zip(axes[0], inputs):
        for configuration, rows in frame[frame["input"] == name].groupby("configuration", sort=False):
            rows = rows.sort_values("fraction")
            ax.plot(rows["fraction"], rows["value"], "o-", markersize=3, color=colours[configuration],
                    label=configuration)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_title(f"{name} missing", fontsize=9)
        ax.set_xlabel(f"fraction of test rows missing {name}", fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0][0].set_ylabel(f"test {metric}", fontsize=8)
    legend = {}
    for ax in axes[0]:
        legend.update(zip(*ax.get_legend_handles_labels()[::-1]))
    labels = sorted(legend, key=lambda label: label == "chance")  # configurations first, chance last
    handles = [legend[label] for label in labels]
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    n = ", ".join(str(v) for v in dict.fromkeys(frame["n"])) if "n" in frame else "?"
    fig.suptitle(_wrap(f"{title} (n = {n} test items)", fig), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / fig.get_figwidth(), 1))
    art.atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
