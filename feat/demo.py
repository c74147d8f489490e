"""`feat demo`: the whole pipeline on the embedded synthetic dataset, offline.

synthetic data -> `feat extract` (minilm, effnet: only what the ablation uses) -> `feat ablate` (every strategy
on minilm+effnet, unimodal baselines on each, 3 seeds) -> the ranked summary and the fusion-vs-unimodal comparison. The task
is built so that text alone (mood) and image alone (shape) each reach about half of the labels.
"""

from __future__ import annotations

import time
from pathlib import Path

from feat.console import console

TEXT, IMAGE = "minilm", "effnet"


def run_demo(out: Path, rows: int = 600, seeds: int = 3, workers: int = 2) -> None:
    from feat.extract.runner import ExtractConfig, extract
    from feat.fuse.ablate import AblateSpec, run_ablation
    from feat.synthetic import make_synthetic_dataset

    start = time.perf_counter()
    out = Path(out)
    data = out / "data" / "data.csv"
    if not data.exists():
        data = make_synthetic_dataset(out / "data", rows=rows)
        console.print(f"wrote a synthetic dataset of {rows} image + caption items to {data}")
    # force: the demo owns its cache, so features made by an older feat are re-encoded rather than refused
    report = extract(ExtractConfig(data=data, cache=out / "cache", encoders=[TEXT, IMAGE], force=True))
    for line in report.encoders:
        console.print(line.line(), markup=False)
    console.print(f"features cached in {report.cache} ({report.seconds:.1f} s); inspect them with "
                  f"`feat info {report.cache}`")

    summary = run_ablation(AblateSpec(report.cache, [[TEXT], [IMAGE], [TEXT, IMAGE]], ["all"], seeds, "label",
                                      out / "ablation", workers=workers))
    console.print(summary.markdown, markup=False, soft_wrap=True)
    console.print(_comparison(summary), markup=False, soft_wrap=True)
    console.print(f"report: {summary.out / 'summary.md'} (plots bars.png, heatmap.png, modality_weights.png); "
                  f"best run: {summary.out / summary.best_run}; demo took {time.perf_counter() - start:.0f} s")


def _comparison(summary) -> str:
    """The dev-chosen fusion configuration against the text-only and image-only baselines, on test."""
    table, m = summary.table, f"test_{summary.test_metric}_mean"
    fusion = table[table["n_inputs"] > 1].iloc[0]
    text = table[(table["features"] == TEXT) & (table["strategy"] == "single")].iloc[0]
    image = table[(table["features"] == IMAGE) & (table["strategy"] == "single")].iloc[0]
    beats = fusion[m] > text[m] and fusion[m] > image[m]
    p = "p < 0.001" if fusion["p_value"] < 0.001 else f"p = {fusion['p_value']:.3f}"
    verdict = "fusion beats text-only and image-only" if beats else "fusion does NOT beat both unimodal baselines"
    return (f"{verdict}: {fusion['strategy']} on {fusion['features']} (best fusion by dev) test "
            f"{summary.test_metric} {fusion[m]:.3f} [{fusion['test_ci_low']:.3f}, {fusion['test_ci_high']:.3f}] "
            f"vs text-only {TEXT} {text[m]:.3f} vs image-only {IMAGE} {image[m]:.3f} (mean of "
            f"{int(fusion['runs'])} seeds; {p} against the best unimodal by dev, paired bootstrap)")
