"""`--tune N`: the same N hyperparameter trials for every configuration, chosen on validation data only.

Trial 0 is the configured values (so tuning can only match or beat them on validation); trials 1 .. N-1 are
points of a scrambled Halton sequence (scipy's quasi-random sampler, seeded): they cover the space more
evenly than random search (Bergstra and Bengio 2012 show random search matches grid search at a fraction of
the cost), and every configuration gets exactly the same points, so the comparison of configurations stays
paired. A sequential sampler (Optuna's TPE) would make each trial depend on the previous results: the trials
could no longer be planned up front and spread over the worker pool, and with budgets of 5-20 trials its
model of the space has little to learn from.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from feat.fuse.config import HeadConfig, TrainConfig

# name: (config, low, high, scale) for continuous values; (config, choices) for discrete ones
SPACE = {
    "lr": ("train", 1e-4, 1e-2, "log"),
    "weight_decay": ("train", 1e-6, 1e-1, "log"),
    "dropout": ("head", 0.0, 0.5, "linear"),
    "common_dim": ("head", (128, 256, 512, 768)),
    "width": ("head", (64, 128, 256, 512)),
    "patience": ("train", (3, 5, 8)),
    "logreg_c": ("head", 1e-3, 1e2, "log"),
}


def trials(n: int, head: HeadConfig, train: TrainConfig, seed: int = 0) -> list[tuple[HeadConfig, TrainConfig]]:
    """N (head, train) configurations: the given ones, then N-1 quasi-random points of SPACE."""
    from scipy.stats import qmc

    out = [(head, train)]
    if n <= 1:
        return out
    points = qmc.Halton(len(SPACE), scramble=True, seed=seed).random(n - 1)
    for point in points:
        values = {name: _value(spec, u) for (name, spec), u in zip(SPACE.items(), point)}
        out.append((replace(head, **{k: v for k, v in values.items() if SPACE[k][0] == "head"}),
                    replace(train, **{k: v for k, v in values.items() if SPACE[k][0] == "train"})))
    return out


def _value(spec: tuple, u: float):
    if len(spec) == 2:
        choices = spec[1]
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    _, low, high, scale = spec
    if scale == "log":
        return float(np.exp(np.log(low) + u * (np.log(high) - np.log(low))))
    return float(low + u * (high - low))


def hyperparameters(head: HeadConfig, train: TrainConfig) -> dict:
    """The tunable values a run used, for results.csv (`hp_<name>`)."""
    return {f"hp_{name}": getattr(head if where == "head" else train, name)
            for name, (where, *_) in SPACE.items()}
