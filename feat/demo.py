"""`feat demo`: the whole pipeline on the embedded synthetic dataset, offline.

synthetic data -> `feat extract` (minilm, effnet: only what the ablation uses) -> `feat ablate` (every strategy
on minilm+effnet, unimodal baselines on each, 3 seeds x 5 CV folds) -> answer.json and the ranked summary. The task
is built so that text alone (mood) and image alone (shape) each reach about half of the labels.
"""

from __future__ import annotations

import time
from pathlib import Path

from feat.console import console

TEXT, IMAGE = "minilm", "effnet"


def run_demo(out: Path, rows: int = 600, seeds: int = 3, workers: int = 2, folds: int = 5) -> None:
    from feat.extract.runner import ExtractConfig, extract
    from feat.fuse.ablate import AblateSpec, run_ablation
    from feat.fuse.artifacts import write_json
    from feat.fuse.config import CVConfig
    from feat.fuse.report import ANSWER
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
                                      out / "ablation", workers=workers, cv=CVConfig(folds)))
    console.print(summary.markdown, markup=False, soft_wrap=True)
    write_json(out / ANSWER, summary.answer)
    console.print(_comparison(summary), markup=False, soft_wrap=True)
    console.print(f"answer: {out / ANSWER}; report: {summary.out / 'summary.md'} (plots bars.png, heatmap.png, "
                  "modality_weights.png, importance.png, robustness.png); "
                  f"best run: {summary.out / summary.best_run}; demo took {time.perf_counter() - start:.0f} s")


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _comparison(summary) -> str:
    """The answer of answer.json in one sentence."""
    a = summary.answer
    if a["vs_text_only"] is None:
        return "no comparison: the ablation has no multimodal or no text-only configuration"
    m, v, w = a["metric"], a["vs_text_only"], a["vs_image_only"]
    best, text, image = a["best_multimodal"], a["best_text_only"], a["best_image_only"]
    p = _p(v["p"])
    verdict = "the image helps" if a["image_helps"] else "the image does NOT help significantly"
    return (f"image_helps = {str(a['image_helps']).lower()} ({verdict}): {best['strategy']} on {best['features']} "
            f"(best multimodal by validation) test {a['metric_name']} {best['test'][m]:.3f} vs text-only "
            f"{text['features']} {text['test'][m]:.3f} ({p}, paired bootstrap over {a['n_test']} test items) vs "
            f"image-only {image['features']} {image['test'][m]:.3f} ({_p(w['p'])})")
