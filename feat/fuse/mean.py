"""`mean` (reference): the element-wise mean of the projected inputs -> reference classifier."""

from __future__ import annotations

import torch

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, projections


class Mean(Head):
    min_inputs = 2

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        self.project = projections(dims, cfg.common_dim)
        self.classifier = Classifier(cfg.common_dim, n_classes, cfg.dropout)

    def forward(self, xs):
        return self.classifier(torch.stack([p(x) for p, x in zip(self.project, xs)]).mean(dim=0))
