"""The strategy registry: one line per head, `name: ("module:Class", help)`.

Import strings, not classes, so that `feat --help` and `feat fuse --help` never import torch.
"""

from __future__ import annotations

import importlib

from feat.errors import InputError

STRATEGIES: dict[str, tuple[str, str]] = {
    "concat": ("feat.fuse.concat:Concat", "reference; N inputs: Linear(N*d -> d) on the concatenation"),
    "mean": ("feat.fuse.mean:Mean", "reference; N inputs: mean of the N projections"),
    "weighted_mean": ("feat.fuse.weighted_mean:WeightedMean", "reference; N learned sigmoid weights"),
    "proj_concat": ("feat.fuse.proj_concat:ProjConcat", "reference; N inputs: Linear(d -> d/N) each"),
    "gated": ("feat.fuse.gated:Gated", "reference for 2 inputs (sigmoid gate); N>2: softmax gate, not the reference"),
    "intermediate": ("feat.fuse.intermediate:Intermediate", "one sub-network per input (--depth, --width)"),
    "late_max": ("feat.fuse.late_max:LateMax", "one classifier per input, element-wise max of logits"),
    "late_mean": ("feat.fuse.late_mean:LateMean", "one classifier per input, mean of logits"),
    "late_learned": ("feat.fuse.late_learned:LateLearned", "one classifier per input, learned softmax mix"),
    "logreg": ("feat.fuse.logreg:LogReg", "scikit-learn logistic regression on the concatenation"),
    "single": ("feat.fuse.single:Single", "unimodal baseline: exactly one input"),
}
REFERENCE = ("concat", "mean", "weighted_mean", "proj_concat", "gated")
UNIMODAL = "single"
# Heads that learn modality weights; their per-split mean weights are written to metrics.json.
WEIGHTED = ("weighted_mean", "gated", "late_learned")


def strategy_help() -> str:
    return "; ".join(f"{name}: {note}" for name, (_, note) in STRATEGIES.items())


def strategy_class(name: str):
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    module, cls = STRATEGIES[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


def check_inputs(name: str, n_inputs: int) -> None:
    cls = strategy_class(name)
    if n_inputs < cls.min_inputs or (cls.max_inputs is not None and n_inputs > cls.max_inputs):
        wanted = f"exactly {cls.min_inputs}" if cls.max_inputs == cls.min_inputs else f"at least {cls.min_inputs}"
        raise InputError(f"strategy '{name}' takes {wanted} input(s), got {n_inputs}")


def create_head(config, dims: list[int], n_classes: int):
    """Build the head of `config.strategy` for inputs of widths `dims`."""
    check_inputs(config.strategy, len(dims))
    return strategy_class(config.strategy)(config, dims, n_classes)
