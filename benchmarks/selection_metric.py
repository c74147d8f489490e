"""Benchmark: which selection metric ranks configurations most stably (the `--metric auto` choice).

    python benchmarks/selection_metric.py [--cache DIR] [--seeds 3] [--cv 5] [--metrics auroc,loss,macro_f1]

For each candidate metric, the MVSA-Single grid of benchmarks/ablation.py (the 5 reference strategies on
minilm+effnet plus the unimodal baselines on minilm and effnet; 3 classes) is run with that metric for early stopping and
selection, K-fold CV over train+dev, several seeds. Two numbers per metric:
- stability: the mean Spearman correlation between the configurations' scores in two different (seed, fold)
  cells, over all pairs of cells: how much the ranking depends on which fold and seed one happened to draw;
- validity: Spearman(selection score, test score of the fold ensemble) in that metric, and against test
  macro-F1 (what most papers report).
Needs ../shared/data/mvsa_single and builds the cache like benchmarks/ablation.py.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from ablation import DATA  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "feat-bench-mvsa-cache")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--metrics", default="auroc,loss,macro_f1")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} not found (the benchmark needs MVSA-Single in ../shared/data)")
        return 0
    import pandas as pd
    from scipy.stats import spearmanr

    from feat.cache import FeatureCache
    from feat.extract.runner import ExtractConfig, extract
    from feat.fuse.ablate import AblateSpec, run_ablation
    from feat.fuse.config import CVConfig, TrainConfig

    if not {"minilm", "effnet"} <= set(FeatureCache(args.cache).feature_names()):
        extract(ExtractConfig(data=DATA, cache=args.cache, encoders=["minilm", "effnet"], num_workers=1))
    out = args.out or Path(tempfile.mkdtemp(prefix="feat-bench-selection-"))
    rows = []
    for metric in args.metrics.split(","):
        start = time.perf_counter()
        summary = run_ablation(AblateSpec(args.cache, [["minilm"], ["effnet"], ["minilm", "effnet"]],
                                          ["reference"], args.seeds, "label", out / metric,
                                          train=TrainConfig(metric=metric), workers=args.workers,
                                          curves=False, cv=CVConfig(args.cv), attribution=False))
        results = pd.read_csv(out / metric / "results.csv")
        cells = results.pivot_table(index=["features", "strategy"], columns=["seed", "fold"],
                                    values=f"val_{metric}")
        pairs = [spearmanr(cells[a], cells[b])[0] for a, b in itertools.combinations(cells.columns, 2)]
        table = summary.table
        sign = -1 if metric == "loss" else 1
        validity = spearmanr(sign * table[f"val_{metric}_mean"], sign * table[f"test_{metric}_mean"])[0]
        versus_f1 = spearmanr(sign * table[f"val_{metric}_mean"], table["test_macro_f1_mean"])[0]
        rows.append([metric, f"{np.mean(pairs):.3f}", f"{validity:.3f}", f"{versus_f1:.3f}", len(table),
                     f"{time.perf_counter() - start:.0f}"])
    print(f"\n## Selection metric on MVSA-Single (3 classes), {args.cv}-fold CV x {args.seeds} seeds\n\n{machine()}\n")
    print("| metric | stability: mean Spearman between (seed, fold) cells | Spearman(selection, test, same metric) | "
          "Spearman(selection, test macro-F1) | configurations | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
