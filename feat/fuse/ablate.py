"""`feat ablate`: every strategy on every multi-input feature set, the unimodal baselines, every seed.

The cache is read once per process. Runs go to a pool of worker processes (spawned, one torch thread each,
so two workers use both cores and every run is the same single-threaded computation as `feat fuse`).
Each run folder is complete when its metrics.json exists (written last, atomically): re-running after a kill
skips finished runs whose config still matches and redoes the rest.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from feat.errors import InputError
from feat.fuse import artifacts as art
from feat.fuse.config import HeadConfig, TrainConfig, to_dict
from feat.fuse.data import FusionData, describe_report, load_data
from feat.fuse.registry import REFERENCE, STRATEGIES, UNIMODAL, strategy_class
from feat.fuse.run import FuseSpec, check_spec, run_fuse

RESULTS = "results.csv"
SCALARS = ("accuracy", "f1", "macro_f1", "weighted_f1", "precision", "recall", "auroc", "loss")


@dataclass
class AblateSpec:
    cache: Path  # the feature cache folder
    feature_sets: list[list[str]]  # e.g. [["minilm"], ["effnet"], ["minilm", "effnet"]]
    strategies: list[str]  # fusion strategies for the multi-input sets (see resolve_strategies)
    seeds: int  # runs seeds 0 .. seeds-1 of every configuration
    label: str  # label column
    out: Path  # the ablation folder
    head: HeadConfig = field(default_factory=HeadConfig)  # `strategy` is set per run
    train: TrainConfig = field(default_factory=TrainConfig)  # `seed` is set per run
    workers: int = 2  # processes; 1 runs in this process
    curves: bool = True  # a learning_curve.png per run


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


def plan(spec: AblateSpec) -> list[FuseSpec]:
    """The runs: strategies on multi-input sets, `single` (and `logreg` when asked) on every input."""
    if spec.seeds < 1:
        raise InputError("--seeds must be at least 1")
    multi = [fs for fs in spec.feature_sets if len(fs) > 1]
    singles = list(dict.fromkeys([tuple(fs) for fs in spec.feature_sets if len(fs) == 1]
                                 + [(f,) for fs in multi for f in fs]))
    configs = [(fs, s) for fs in multi for s in spec.strategies
               if s != UNIMODAL and len(fs) >= strategy_class(s).min_inputs]
    configs += [(list(fs), s) for fs in singles for s in [UNIMODAL, *(["logreg"] if "logreg" in spec.strategies else [])]]
    valid_from = list(dict.fromkeys(f for fs in spec.feature_sets for f in fs))
    runs = []
    for seed in range(spec.seeds):
        for features, strategy in configs:
            name = f"{'+'.join(features)}__{strategy}__seed{seed}"
            runs.append(FuseSpec(spec.cache, list(features), spec.label, spec.out / "runs" / name,
                                 replace(spec.head, strategy=strategy), replace(spec.train, seed=seed),
                                 valid_from, spec.curves))
    for run in runs:
        check_spec(run)
    return runs


def _cost(run: FuseSpec, dims: dict[str, int]) -> float:
    """Rough training cost of a run (parameters of its head, counted on the meta device): the pool gets
    the longest runs first so that both workers finish at about the same time."""
    import torch

    from feat.fuse.registry import create_head

    with torch.device("meta"):
        head = create_head(run.head, [dims[f] for f in run.features], 2)
    params = sum(p.numel() for p in head.parameters())
    return params * (0.05 if hasattr(head, "fit_sklearn") else 1.0)


def result_row(run: FuseSpec, metrics: dict, metric: str) -> dict:
    row = {"features": "+".join(run.features), "strategy": run.head.strategy, "seed": run.train.seed,
           "n_inputs": len(run.features), "metric": metric}
    for split in ("dev", "test"):
        row.update({f"{split}_{k}": metrics[split][k] for k in SCALARS})
        for feature, weight in (metrics[split].get("modality_weights") or {}).items():
            row[f"{split}_weight_{feature}"] = weight
    row.update(best_epoch=metrics["best_epoch"], seconds=metrics["train_seconds"],
               run=str(run.out.relative_to(run.out.parent.parent)))
    return row


def _finished(run: FuseSpec, data: FusionData) -> dict | None:
    """metrics.json of an earlier identical run, else None."""
    if not (run.out / art.METRICS).exists() or not (run.out / art.CONFIG).exists():
        return None
    config = art.read_json(run.out / art.CONFIG)
    same = (config.get("features") == run.features and config.get("label") == run.label
            and config.get("head") == to_dict(run.head) and config.get("train") == to_dict(run.train)
            and config.get("valid_from") == run.valid_from and config.get("items_digest") == data.items_digest()
            and {f: v["id"] for f, v in config.get("fingerprints", {}).items()}
            == {f: data.fingerprints[f]["id"] for f in run.features})
    return art.read_json(run.out / art.METRICS) if same else None


_WORKER_DATA: FusionData | None = None


def _init_worker(cache, features, label, missing) -> None:
    import torch

    global _WORKER_DATA
    torch.set_num_threads(1)
    _WORKER_DATA = load_data(cache, features, label, missing, features)


def _work(run: FuseSpec) -> tuple[dict, str]:
    result = run_fuse(run, _WORKER_DATA)
    return result.metrics, result.metric


def run_ablation(spec: AblateSpec):
    """Run (or resume) the grid, write results.csv and the report; returns the report's Summary."""
    from feat.console import console, progress_bar
    from feat.fuse.metrics import resolve_metric
    from feat.fuse.report import write_report

    spec = replace(spec, out=Path(spec.out), strategies=resolve_strategies(spec.strategies))
    runs = plan(spec)
    features = runs[0].valid_from
    data = load_data(spec.cache, features, spec.label, spec.train.missing, features)
    metric = resolve_metric(spec.train.metric, len(data.classes))
    spec.out.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict] = {}
    todo = []
    for i, run in enumerate(runs):
        done = _finished(run, data)
        if done is not None:
            rows[i] = result_row(run, done, metric)
        else:
            todo.append(i)
    console.print(describe_report(data.report))
    console.print(f"ablation: {len(runs)} runs ({len(runs) - len(todo)} already done) on {len(data.ids)} items, "
                  f"{spec.workers} worker(s), selection metric dev {metric}")
    dims = {f: data.matrices[f].shape[1] for f in features}
    todo.sort(key=lambda i: -_cost(runs[i], dims))
    with progress_bar("runs", len(runs)) as advance:
        advance(len(runs) - len(todo))
        if spec.workers <= 1 or len(todo) <= 1:
            for i in todo:
                result = run_fuse(runs[i], data)
                rows[i] = result_row(runs[i], result.metrics, metric)
                advance(1)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(spec.workers, len(todo)), mp_context=context, initializer=_init_worker,
                                     initargs=(spec.cache, features, spec.label, spec.train.missing)) as pool:
                futures = {pool.submit(_work, runs[i]): i for i in todo}
                try:
                    for future in as_completed(futures):
                        i = futures[future]
                        rows[i] = result_row(runs[i], future.result()[0], metric)
                        advance(1)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    results = pd.DataFrame([rows[i] for i in range(len(runs))])
    art.write_csv(spec.out / RESULTS, results)
    return write_report(spec.out, results, data, metric)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
