"""`feat ablate`: plan -> train -> evaluate -> report over every configuration, seed, fold and trial.

The cache is read once per process. Runs go to a pool of worker processes (spawned, one torch thread each,
so two workers use both cores and every run is the same single-threaded computation as `feat fuse`).
Each run folder is complete when its metrics.json exists (written last, atomically): re-running after a kill
skips finished runs whose config still matches and redoes the rest.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import pandas as pd

from feat.errors import InputError
from feat.fuse import artifacts as art
from feat.fuse.config import to_dict
from feat.fuse.data import FusionData, describe_report
from feat.fuse.plan import AblateSpec, plan, resolve_strategies
from feat.fuse.run import FuseSpec, run_fuse
from feat.fuse.tune import hyperparameters

RESULTS = "results.csv"
SCALARS = ("accuracy", "f1", "f1_tuned", "macro_f1", "weighted_f1", "precision", "recall", "auroc", "loss")

__all__ = ["AblateSpec", "resolve_strategies", "run_ablation", "default_workers"]


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
    """One line of results.csv: which run (configuration, seed, trial, fold), its validation (`val_`, the dev
    split or the CV fold) and test metrics, and the hyperparameters it used."""
    repeat, fold = divmod(run.partition, run.cv.folds) if run.cv.folds else (0, -1)
    row = {"features": "+".join(run.features), "strategy": run.head.strategy, "seed": run.train.seed,
           "trial": run.trial, "repeat": repeat, "fold": fold, "n_inputs": len(run.features), "metric": metric}
    for split, prefix in (("dev", "val"), ("test", "test")):
        row.update({f"{prefix}_{k}": metrics[split].get(k) for k in SCALARS})
        row[f"{prefix}_n"] = metrics[split]["n"]
        for feature, weight in (metrics[split].get("modality_weights") or {}).items():
            row[f"{prefix}_weight_{feature}"] = weight
    row.update(threshold=metrics["dev"].get("threshold"), best_epoch=metrics["best_epoch"],
               seconds=metrics["train_seconds"], run=str(run.out.relative_to(run.out.parent.parent)))
    row.update(hyperparameters(run.head, run.train))
    return row


def _finished(run: FuseSpec, data: FusionData) -> dict | None:
    """metrics.json of an earlier identical run, else None."""
    if not (run.out / art.METRICS).exists() or not (run.out / art.CONFIG).exists():
        return None
    try:
        config, metrics = art.read_json(run.out / art.CONFIG), art.read_json(run.out / art.METRICS)
    except InputError:  # a damaged run folder: the run is redone
        return None
    view = data.with_partition(run.cv, run.partition)
    same = (config.get("features") == run.features and config.get("label") == run.label
            and config.get("head") == to_dict(run.head) and config.get("train") == to_dict(run.train)
            and config.get("valid_from") == run.valid_from and config.get("items_digest") == view.items_digest()
            and config.get("cv") == to_dict(run.cv) and config.get("partition") == run.partition
            and {f: v["id"] for f, v in config.get("fingerprints", {}).items()}
            == {f: data.fingerprints[f]["id"] for f in run.features})
    return metrics if same else None


_WORKER_DATA: FusionData | None = None


def _init_worker(run: FuseSpec) -> None:
    import torch

    global _WORKER_DATA
    torch.set_num_threads(1)
    _WORKER_DATA = run.load(run.valid_from)


def _work(run: FuseSpec) -> tuple[dict, str]:
    result = run_fuse(run, _WORKER_DATA)
    return result.metrics, result.metric


def train_all(spec: AblateSpec, runs: list[FuseSpec], data: FusionData, metric: str) -> pd.DataFrame:
    """Step 2: train every run not already finished; one results.csv row per run, in plan order."""
    from feat.console import console, progress_bar

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
                  f"{spec.workers} worker(s), selection metric: validation {metric}", soft_wrap=True)
    dims = {f: data.matrices[f].shape[1] for f in runs[0].valid_from}
    todo.sort(key=lambda i: -_cost(runs[i], dims))
    with progress_bar("runs", len(runs), unit="runs", done=len(runs) - len(todo)) as advance:
        if spec.workers <= 1 or len(todo) <= 1:
            for i in todo:
                rows[i] = result_row(runs[i], run_fuse(runs[i], data).metrics, metric)
                advance(1)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(spec.workers, len(todo)), mp_context=context, initializer=_init_worker,
                                     initargs=(runs[0],)) as pool:
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
    return results


def run_ablation(spec: AblateSpec):
    """Run (or resume) the grid, then evaluate and write the report; returns the report's Summary."""
    from feat.fuse.evaluate import evaluate
    from feat.fuse.metrics import resolve_metric
    from feat.fuse.report import write_report

    spec = replace(spec, out=Path(spec.out), strategies=resolve_strategies(spec.strategies))
    runs = plan(spec)
    data = runs[0].load(runs[0].valid_from)
    metric = resolve_metric(spec.train.metric, len(data.classes))
    spec.out.mkdir(parents=True, exist_ok=True)
    results = train_all(spec, runs, data, metric)
    return write_report(evaluate(spec, results, data, metric))


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def fuse(spec: FuseSpec):
    """`feat fuse`: one run (RunResult), or with --cv one run per fold, evaluated as the ablation of this one
    configuration (Summary: validation over folds, test by the fold ensemble)."""
    if not spec.cv.folds:
        return run_fuse(spec)
    return run_ablation(AblateSpec(spec.cache, [spec.features], [spec.head.strategy], 1, spec.label, spec.out,
                                   spec.head, spec.train, default_workers(), spec.curve, spec.cv, 0, spec.positive,
                                   baselines=False))


def _num(value) -> str:
    """A metric for a log line: 'undefined' where it is (AUROC on a split holding one class)."""
    return "undefined" if value is None or value != value else f"{value:.4f}"


def describe_run(result) -> str:
    """What `feat fuse` prints: every number with its metric, class, split and n."""
    from feat.fuse.artifacts import metric_label
    from feat.fuse.run import RunResult

    if isinstance(result, RunResult):
        m, classes, name = result.metrics, result.classes, metric_label(result.metric, result.classes)
        tuned = (f", at the threshold {m['dev']['threshold']:.3f} chosen on dev {_num(m['test']['f1_tuned'])}"
                 if "f1_tuned" in m["test"] else "")
        return (f"{describe_report(result.data_report)}\n{result.strategy} on {'+'.join(result.features)}, seed "
                f"{m['seed']}: best epoch {m['best_epoch']}; dev {name} {_num(m['dev'][result.metric])} (n = "
                f"{m['dev']['n']}); test (n = {m['test']['n']}): {name} {_num(m['test'][result.metric])}, "
                f"{metric_label('f1', classes)} at 0.5 {_num(m['test']['f1'])}{tuned}, accuracy "
                f"{_num(m['test']['accuracy'])} ({m['train_seconds']:.1f} s) -> {result.out}")
    c = result.answer["best"]
    return (f"{result.answer['selection']}: {_num(c['selection_score'])} ± {_num(c['selection_std'])}; test "
            f"{result.answer['metric_name']} of the fold ensemble {_num(c['test'][result.metric])} (n = "
            f"{result.answer['n_test']}) -> {result.out} (summary.md, answer.json, runs/)")
