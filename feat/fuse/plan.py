"""Stage 2, step 1 of 4: plan -> train -> evaluate -> report. The runs of an ablation, decided up front.

A configuration is a feature set and a strategy. Every configuration gets the same seeds, the same
train/validation partitions (the data's own split, or the same K x R CV folds) and the same hyperparameter
trials (`--tune`): every comparison between configurations is paired. Each run is one FuseSpec, the whole
spec of that run; it goes down to training unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from feat.errors import InputError
from feat.fuse.config import CVConfig, HeadConfig, TrainConfig
from feat.fuse.registry import REFERENCE, STRATEGIES, UNIMODAL, strategy_class
from feat.fuse.run import FuseSpec, check_spec
from feat.fuse.tune import trials


@dataclass
class AblateSpec:
    cache: Path  # the feature cache folder
    feature_sets: list[list[str]]  # e.g. [["minilm"], ["effnet"], ["minilm", "effnet"]]
    strategies: list[str]  # fusion strategies for the multi-input sets (see resolve_strategies)
    seeds: int  # runs seeds train.seed .. train.seed + seeds - 1 of every configuration
    label: str  # label column
    out: Path  # the ablation folder
    head: HeadConfig = field(default_factory=HeadConfig)  # `strategy` is set per run
    train: TrainConfig = field(default_factory=TrainConfig)  # `seed` is set per run
    workers: int = 2  # processes; 1 runs in this process
    curves: bool | None = None  # a learning_curve.png per run; None: only without CV (a plot costs ~0.2 s, K x the runs)
    cv: CVConfig = field(default_factory=CVConfig)  # folds over train+dev (0 folds: the data's own split)
    tune: int = 0  # hyperparameter trials per configuration, chosen on validation (0 or 1: the given values)
    positive: str | None = None  # positive class of a binary label
    baselines: bool = True  # add the unimodal baselines of every input (`feat fuse --cv` runs one configuration)
    attribution: bool = True  # permutation / missing-input importance and robustness curves of multimodal heads


def resolve_strategies(names: list[str]) -> list[str]:
    """`all` = every registered multi-input head, `reference` = the five reference heads; else names."""
    out: list[str] = []
    for name in (n.strip() for item in names for n in item.split(",")):
        if name == "all":
            out += [s for s in STRATEGIES if s != UNIMODAL]
        elif name == "reference":
            out += list(REFERENCE)
        elif name:
            strategy_class(name)  # refuses unknown names
            out.append(name)
    return list(dict.fromkeys(out))


def configurations(spec: AblateSpec) -> list[tuple[list[str], str]]:
    """(features, strategy): strategies on multi-input sets, `single` (and `logreg` when asked) on every input."""
    multi = [fs for fs in spec.feature_sets if len(fs) > 1]
    configs = [(list(fs), s) for fs in multi for s in spec.strategies
               if s != UNIMODAL and len(fs) >= strategy_class(s).min_inputs]
    if not spec.baselines:
        return configs + [(list(fs), s) for fs in spec.feature_sets if len(fs) == 1 for s in spec.strategies]
    singles = list(dict.fromkeys([tuple(fs) for fs in spec.feature_sets if len(fs) == 1]
                                 + [(f,) for fs in multi for f in fs]))
    return configs + [(list(fs), s) for fs in singles
                      for s in [UNIMODAL, *(["logreg"] if "logreg" in spec.strategies else [])]]


def run_name(features: list[str], strategy: str, seed: int, trial: int, partition: int, cv: CVConfig) -> str:
    name = f"{'+'.join(features)}__{strategy}__seed{seed}"
    if trial:
        name += f"__trial{trial}"
    if cv.folds:
        repeat, fold = divmod(partition, cv.folds)
        name += f"__fold{fold}" if cv.repeats == 1 else f"__rep{repeat}fold{fold}"
    return name


def plan(spec: AblateSpec) -> list[FuseSpec]:
    """Every run of the ablation: configurations x trials x seeds x partitions."""
    if spec.seeds < 1:
        raise InputError("--seeds must be at least 1")
    if spec.tune < 0:
        raise InputError("--tune must be 0 (no tuning) or a number of trials")
    valid_from = list(dict.fromkeys(f for fs in spec.feature_sets for f in fs))
    candidates = trials(spec.tune, spec.head, spec.train, seed=spec.cv.seed)
    curves = spec.curves if spec.curves is not None else not spec.cv.folds
    runs = []
    for seed in range(spec.train.seed, spec.train.seed + spec.seeds):
        for features, strategy in configurations(spec):
            for trial, (head, train) in enumerate(candidates):
                for partition in range(spec.cv.partitions):
                    name = run_name(features, strategy, seed, trial, partition, spec.cv)
                    runs.append(FuseSpec(spec.cache, list(features), spec.label, spec.out / "runs" / name,
                                         replace(head, strategy=strategy), replace(train, seed=seed), valid_from,
                                         curves, spec.positive, spec.cv, partition, trial))
    for run in runs:
        check_spec(run)
    return runs
