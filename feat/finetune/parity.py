"""Parity before any step: the assembled model must reproduce the run's dev predictions from live inputs.

This is what proves that live and cached features agree (same weights, same preprocessing, same pooling,
same standardisation). On a mismatch the error names the input whose live vectors differ from its cached
ones, or says that they all agree and the difference is in the head.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from feat.errors import FeatError
from feat.finetune.data import RowSet, batches, ordered_chunks

VECTOR_TOLERANCE = 1e-3  # relative |live - cached| above which an input is named as the one that differs


def evaluate(model, rows: RowSet, positions: np.ndarray, batch_size: int, transforms: dict, num_workers: int = 0,
             pin_memory: bool = False, vectors: dict | None = None) -> np.ndarray:
    """Logits (float32) of `positions` in eval mode, in order."""
    model.eval()
    out = []
    with torch.no_grad():
        for batch in batches(rows, ordered_chunks(positions, batch_size), transforms, num_workers, pin_memory):
            out.append(model(batch, vectors).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(rows.classes)), np.float32)


@contextlib.contextmanager
def as_cached(model, matmul: str):
    """Run `model` as the cache and the run computed: float32 encoders without autocast and without TF32
    (cuDNN convolutions use TF32 by default on Ampere and later, which `set_float32_matmul_precision` does not
    cover), low-precision encoders in their own dtype (always), the head in its float32 matmul precision."""
    from feat.fuse.config import PRECISION

    previous, autocast = torch.get_float32_matmul_precision(), model.autocast
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    model.autocast = contextlib.nullcontext
    torch.set_float32_matmul_precision(PRECISION.get(matmul, "highest"))
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        model.autocast = autocast


def tolerance_for(model, requested: float) -> float:
    """The probability tolerance of the check: at least the rounding step (machine epsilon) of the lowest
    precision a live encoder computes in. A bfloat16 encoder reproduces the cache's arithmetic, but its dev
    batches are padded otherwise than extraction's length-sorted ones, and bfloat16 results of differently
    shaped matrices differ by its step, 2**-7 (MiniLM, 64 synthetic rows: 4.7e-4 in probability)."""
    steps = [torch.finfo(p.dtype).eps for f, m in zip(model.live, model.encoders) if model.native[f]
             for p in list(m.parameters())[:1]]
    return max([requested, *steps])


def check_parity(model, rows: RowSet, saved, metric: str, tolerance: float, batch_size: int, transforms: dict,
                 num_workers: int = 0, pin_memory: bool = False) -> tuple[dict, dict]:
    """(dev metrics of the model before any step, parity figures); raises FeatError on a mismatch."""
    from feat.fuse.train import split_metrics

    dev = rows.positions("dev")
    vectors: dict = {}
    logits = evaluate(model, rows, dev, batch_size, transforms, num_workers, pin_memory, vectors)
    metrics, prob = split_metrics(logits, rows.y[dev])
    expected = run_dev_probabilities(saved, rows.ids[dev])
    run_value = _run_metrics(saved)["dev"][metric]
    worst = float(np.abs(prob - expected).max()) if len(dev) else 0.0
    inputs = {f: _vector_difference(rows, f, vectors.get(f, [])) for f in model.live}
    figures = {"max_probability_difference": worst, "tolerance": tolerance, "run_dev": run_value,
               "dev": metrics[metric], "inputs": inputs}
    same_metric = run_value is None and metrics[metric] is None or (
        run_value is not None and metrics[metric] is not None and abs(metrics[metric] - run_value) <= 1e-9)
    if worst > tolerance or not same_metric:
        raise FeatError(_explain(saved, metric, figures, rows.ids[dev], np.abs(prob - expected).max(axis=1)))
    return metrics, figures


def run_dev_probabilities(saved, ids: np.ndarray) -> np.ndarray:
    frame = pd.read_csv(saved.path / "predictions_dev.csv", dtype={"id": str}, keep_default_na=False)
    frame = frame.set_index("id")
    missing = [item for item in ids if item not in frame.index]
    if missing:
        raise FeatError(f"run {saved.path}: predictions_dev.csv lacks dev rows ({', '.join(missing[:3])})")
    return frame.loc[list(ids), [f"p_{c}" for c in saved.classes]].to_numpy(dtype=np.float64)


def _run_metrics(saved) -> dict:
    from feat.fuse import artifacts as art

    return art.read_json(saved.path / art.METRICS)


def _vector_difference(rows: RowSet, feature: str, parts: list) -> dict:
    """Max |live - cached| over the rows encoded live, absolute and relative to the cached vectors' scale."""
    if not parts:
        return {"max_abs_difference": 0.0, "relative": 0.0, "worst_id": None}
    positions = np.concatenate([p for p, _ in parts])
    live = np.concatenate([v for _, v in parts])
    cached = np.asarray(rows.cached[feature][positions], dtype=np.float64)
    if live.shape != cached.shape:
        return {"max_abs_difference": float("inf"), "relative": float("inf"), "worst_id": None,
                "shape": f"live {live.shape[1]}-d, cached {cached.shape[1]}-d"}
    per_row = np.abs(live - cached).max(axis=1)
    scale = max(float(np.abs(cached).max()), 1e-12)
    worst = int(per_row.argmax())
    return {"max_abs_difference": float(per_row[worst]), "relative": float(per_row[worst] / scale),
            "worst_id": str(rows.ids[positions[worst]])}


def _explain(saved, metric: str, figures: dict, ids: np.ndarray, per_row: np.ndarray) -> str:
    worst_rows = ", ".join(str(ids[i]) for i in np.argsort(-per_row)[:3])
    head = (f"parity check failed before any step: the model's dev probabilities differ from run {saved.path}'s "
            f"by up to {figures['max_probability_difference']:.3g} (tolerance {figures['tolerance']:g}; rows "
            f"{worst_rows}); dev {metric} {figures['dev']} vs the run's {figures['run_dev']}. ")
    differ = {f: d for f, d in figures["inputs"].items() if d["relative"] > VECTOR_TOLERANCE}
    if differ:
        parts = [f"input '{f}' differs from its cached features: "
                 + (d["shape"] if "shape" in d else f"max |live - cached| {d['max_abs_difference']:.3g} "
                    f"({d['relative']:.2%} of the cached scale) on row {d['worst_id']}")
                 for f, d in differ.items()]
        agree = [f for f in figures["inputs"] if f not in differ]
        tail = f"; {', '.join(agree)} agree" if agree else ""
        return head + "; ".join(parts) + tail + " (other weights, preprocessing or compute dtype than the cache's?)"
    return head + ("every live input agrees with its cached features (" + ", ".join(
        f"{f} {d['relative']:.1e}" for f, d in figures["inputs"].items()) + " relative): the head, its "
        "standardisation or the fixed inputs differ from the run's")
