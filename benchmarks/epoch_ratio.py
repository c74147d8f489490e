"""Benchmark: how close a stage-2 training epoch is to this CPU's limit.

    python benchmarks/epoch_ratio.py [--rows 3608] [--rounds 5] [--strategy concat]

Ratio = time of the same matrix multiplications in a bare loop (forward and backward of the head's Linear
layers on the same batches, one thread, no optimizer, no data handling) / time of a real training epoch of
feat's trainer (batch gathering, dropout, AdamW, grad clipping, schedule). Target >= 0.8: the bookkeeping
around the matmuls costs at most a quarter of an epoch. Data: random features of MVSA-Single's shapes
(MiniLM 384-d + EfficientNet 1280-d), so that the script needs no cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleave, median, parser, report, start  # noqa: E402


def main() -> int:
    p = parser(__doc__.splitlines()[0], rows=3608, rounds=5)
    p.add_argument("--strategy", default="concat")
    args = start(p)
    import torch
    from torch import nn

    from feat.fuse.config import HeadConfig, TrainConfig
    from feat.fuse.data import FusionData
    from feat.fuse.run import _inputs
    from feat.fuse.train import train

    torch.set_num_threads(1)
    n, dev = args.rows, 64  # a small dev split: the epoch is what is measured
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n + dev, 384)).astype(np.float32), rng.normal(size=(n + dev, 1280)).astype(np.float32)
    y = (a[:, 0] + b[:, 0] > 0).astype(np.int64)
    split = np.array(["train"] * n + ["dev"] * (dev // 2) + ["test"] * (dev // 2), dtype=object)
    data = FusionData(["a", "b"], np.array([str(i) for i in range(n + dev)], dtype=object), split, y, ["0", "1"],
                      {"a": a, "b": b}, {"a": np.ones(n + dev, bool), "b": np.ones(n + dev, bool)},
                      {"a": {}, "b": {}})
    cfg = TrainConfig(epochs=1, patience=1)
    head_cfg = HeadConfig(strategy=args.strategy)
    inputs = _inputs(data, cfg)[1]

    def epoch() -> None:
        train(head_cfg, cfg, data, inputs)

    from feat.fuse.registry import create_head

    head = create_head(head_cfg, inputs.dims, 2)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    batches = [min(cfg.batch_size, n - i) for i in range(0, n, cfg.batch_size)]
    # Layers fed by a raw input need no input gradient, the others do: the same matmuls as backpropagation.
    feeds = {size: [torch.randn(size, layer.in_features, requires_grad=layer.in_features not in inputs.dims)
                    for layer in linears] for size in set(batches)}

    def bare() -> None:
        for size in batches:
            for layer, x in zip(linears, feeds[size]):
                layer(x).sum().backward()
        head.zero_grad(set_to_none=True)

    timings, _ = interleave({"epoch": epoch, "bare": bare}, args.rounds)
    ratio = timings.ratio("bare", "epoch")
    rows = [["feat training epoch (1 epoch + dev eval)", f"{median(timings['epoch']):.3f}"],
            ["bare Linear forward + backward, same batches", f"{median(timings['bare']):.3f}"],
            ["ratio bare / epoch (target >= 0.8)", f"{ratio:.2f}"]]
    report(f"stage-2 epoch vs bare matmuls: {args.strategy}, {n} rows, batch {cfg.batch_size}, 1 thread",
           "| what | seconds (median) |\n|---|---:|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
