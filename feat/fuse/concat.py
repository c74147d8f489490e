"""`concat` (reference): Dropout(ReLU(Linear(N*d -> d)([x1; ...; xN]))) -> reference classifier."""

from __future__ import annotations

import torch
from torch import nn

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, projections


class Concat(Head):
    min_inputs = 2

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        d = cfg.common_dim
        self.project = projections(dims, d)
        self.fuse = nn.Linear(len(dims) * d, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = Classifier(d, n_classes, cfg.dropout)

    def forward(self, xs):
        joined = torch.cat([p(x) for p, x in zip(self.project, xs)], dim=1)
        return self.classifier(self.drop(torch.relu(self.fuse(joined))))
