"""Benchmark: the full ablation grid on MVSA-Single cached MiniLM + EfficientNet features.

    python benchmarks/ablation.py [--cache DIR] [--out DIR] [--seeds 5] [--workers 2] [--cv 5]

Grid: the 5 reference strategies on minilm+effnet, plus the unimodal baselines on minilm and on effnet
(feature sets minilm | effnet | minilm,effnet), 5 seeds each = 35 runs, default training options
(15 epochs max, patience 5, batch 128). Targets on a 2-core CPU: <= 2 minutes wall time; with --cv 5
(175 runs, plus the evaluation and attribution of every configuration) <= 5 minutes.

It also estimates what the reference pipeline would pay for the same comparison: it re-encodes every item
with both encoders in every epoch of every run. Per-item forward time of minilm + effnet is measured on a few
items (image decoding included, forward only: fine-tuning would add a backward pass on top).

Needs ../shared/data/mvsa_single (skips with a message when absent). Builds the cache first if needed
(`feat extract ... -e minilm -e effnet`, 3-15 minutes, not part of the timed figure).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mvsa_single" / "data.csv"


def ensure_cache(cache: Path) -> None:
    from feat.cache import FeatureCache
    from feat.extract.runner import ExtractConfig, extract

    if {"minilm", "effnet"} <= set(FeatureCache(cache).feature_names()):
        return
    print(f"building the cache {cache} (not timed) ...", file=sys.stderr)
    extract(ExtractConfig(data=DATA, cache=cache, encoders=["minilm", "effnet"], num_workers=1))


def encoder_seconds_per_item(n: int = 16) -> float:
    """Forward time of minilm (text) + effnet (image, decode + resize included) per item."""
    import pandas as pd
    import torch

    from feat.extract.base import Runtime
    from feat.extract.images import decode_image, to_rgb
    from feat.extract.registry import create_encoder

    frame = pd.read_csv(DATA, dtype=str, keep_default_na=False).head(n)
    text, image = create_encoder("minilm"), create_encoder("effnet")
    text.load(Runtime())
    image.load(Runtime())
    transform = image.transform()
    texts, paths = frame["text"].tolist(), [str(DATA.parent / p) for p in frame["image"]]

    def images():
        return torch.stack([transform(to_rgb(decode_image(p)[0])) for p in paths])

    text.encode_texts(texts[:2]), image.encode_pixels(images()[:2])  # warm-up
    start = time.perf_counter()
    text.encode_texts(texts)
    image.encode_pixels(images())
    return (time.perf_counter() - start) / n


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (the ablation workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "feat-bench-mvsa-cache")
    parser.add_argument("--out", type=Path, default=None, help="ablation folder (default: a fresh temp dir)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32", help="fp32 (default) | bf16")
    parser.add_argument("--cv", type=int, default=0, help="folds over train+dev (0: the data's own split)")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} not found (the benchmark needs MVSA-Single in ../shared/data)")
        return 0

    import pandas as pd

    from feat.fuse.ablate import AblateSpec, run_ablation
    from feat.fuse.config import CVConfig, TrainConfig

    ensure_cache(args.cache)
    try:  # before the grid, so that the two measurements do not compete for the cores
        per_item = encoder_seconds_per_item()
    except Exception as exc:  # the figure is an estimate: report it as missing rather than lose the timing
        print(f"encoder timing failed ({type(exc).__name__}: {exc}); reference estimate skipped", file=sys.stderr)
        per_item = None
    out = args.out or Path(tempfile.mkdtemp(prefix="feat-bench-ablation-"))
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    summary = run_ablation(AblateSpec(args.cache, [["minilm"], ["effnet"], ["minilm", "effnet"]], ["reference"],
                                      args.seeds, "label", out, train=TrainConfig(precision=args.precision),
                                      workers=args.workers, cv=CVConfig(args.cv)))
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    results = pd.read_csv(out / "results.csv")
    epochs = sum(len(pd.read_csv(out / run / "history.csv")) for run in results["run"])
    items = pd.read_csv(DATA, dtype=str, keep_default_na=False)["split"].isin(["train", "dev"]).sum()

    print(summary.markdown)
    print("| what | value |\n|---|---:|")
    print(f"| machine | {machine()} |")
    print(f"| ablation wall time (s), {args.workers} workers, {args.precision}, --cv {args.cv} | {wall:.1f} |")
    print(f"| CPU time of all processes (s) | {cpu:.1f} |")
    print(f"| load average (1 min) before / after, {os.cpu_count()} cores | {load_before:.1f} / {os.getloadavg()[0]:.1f} |")
    print(f"| runs | {len(results)} |")
    print(f"| runs/s | {len(results) / wall:.2f} |")
    print(f"| epochs trained in total (early stopping) | {epochs} |")
    if per_item is not None:
        reference = per_item * items * epochs
        print(f"| encoder forward per item, minilm + effnet (ms) | {per_item * 1000:.1f} |")
        print(f"| reference way: re-encode {items} train+dev items x {epochs} epochs (s) | {reference:.0f} |")
        print(f"| ratio reference / cached | {reference / wall:.0f}x |")
    print(f"\nreport: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
