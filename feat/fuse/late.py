"""Late fusion: one full classifier per input (projection + reference classifier); the per-input logits are
merged by the subclass (`late_max`, `late_mean`, `late_learned`). Any number of inputs."""

from __future__ import annotations

import torch
from torch import nn

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, Project


class LateFusion(Head):
    min_inputs = 2

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        self.experts = nn.ModuleList(nn.Sequential(Project(d, cfg.common_dim),
                                                   Classifier(cfg.common_dim, n_classes, cfg.dropout))
                                     for d in dims)

    def forward(self, xs):
        return self.merge(torch.stack([e(x) for e, x in zip(self.experts, xs)]))

    def merge(self, logits: torch.Tensor) -> torch.Tensor:
        """(inputs, rows, classes) -> (rows, classes)."""
        raise NotImplementedError
