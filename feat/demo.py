"""`feat demo`: the whole pipeline on the embedded synthetic dataset, offline."""

from __future__ import annotations

from pathlib import Path

from feat.console import console


def run_demo(out: Path, rows: int = 600) -> None:
    from feat.extract.runner import ExtractConfig, extract
    from feat.synthetic import make_synthetic_dataset

    out = Path(out)
    data = out / "data" / "data.csv"
    if not data.exists():
        data = make_synthetic_dataset(out / "data", rows=rows)
        console.print(f"wrote a synthetic dataset of {rows} image + caption items to {data}")
    report = extract(ExtractConfig(data=data, cache=out / "cache", encoders=["tfidf", "minilm", "effnet"]))
    for line in report.encoders:
        console.print(line.line())
    console.print(f"features cached in {report.cache} ({report.seconds:.1f} s); inspect them with "
                  f"`feat info {report.cache}`")
