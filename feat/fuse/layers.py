"""Building blocks shared by the fusion heads: the per-input projection and the reference classifier.

Inputs reach a head as a list of tensors, one per feature set. A TF-IDF input is a sparse COO tensor: the
first Linear of its branch multiplies it with `torch.sparse.mm`, so the 5,000+ columns are never densified.
"""

from __future__ import annotations

import torch
from torch import nn


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` that also accepts a sparse `x` (sparse @ dense keeps the gradient of the dense weight)."""
    if x.layout != torch.strided:
        return torch.sparse.mm(x, layer.weight.t()) + layer.bias
    return layer(x)


def dense(x: torch.Tensor) -> torch.Tensor:
    return x.to_dense() if x.layout != torch.strided else x


class Project(nn.Module):
    """Input -> common width: a Linear, or Identity when the width already matches (as the reference)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out) if d_in != d_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense(x) if self.linear is None else linear(x, self.linear)


def projections(dims: list[int], d: int) -> nn.ModuleList:
    return nn.ModuleList(Project(d_in, d) for d_in in dims)


class Classifier(nn.Sequential):
    """The reference classifier: Linear(d, d/2) -> ReLU -> Dropout -> Linear(d/2, classes)."""

    def __init__(self, d: int, n_classes: int, dropout: float):
        super().__init__(nn.Linear(d, d // 2), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d // 2, n_classes))


class Head(nn.Module):
    """A fusion head: `forward(xs)` maps one tensor per input to class logits.

    Subclasses set `min_inputs` / `max_inputs`; heads with learned modality weights override
    `modality_weights` to return a (rows, inputs) tensor that is averaged into metrics.json, and
    `mixing_parameters` to list the parameters that produce them.
    """

    min_inputs = 1
    max_inputs: int | None = None

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def modality_weights(self, xs: list[torch.Tensor]) -> torch.Tensor | None:
        return None

    def mixing_parameters(self) -> list[nn.Parameter]:
        """The few scalars that mix the inputs: trained at their own learning rate (--lr-weights)."""
        return []
