"""`weighted_mean` (reference): one scalar per input, w_i = sigmoid(a_i) with a_i initialised to 0.5;
fused = sum(w_i * x_i) / sum(w_i) -> reference classifier."""

from __future__ import annotations

import torch
from torch import nn

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, projections


class WeightedMean(Head):
    min_inputs = 2

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        self.project = projections(dims, cfg.common_dim)
        self.scores = nn.Parameter(torch.full((len(dims),), 0.5))
        self.classifier = Classifier(cfg.common_dim, n_classes, cfg.dropout)

    def forward(self, xs):
        w = torch.sigmoid(self.scores)
        stacked = torch.stack([p(x) for p, x in zip(self.project, xs)])  # (inputs, rows, d)
        fused = (w[:, None, None] * stacked).sum(dim=0) / w.sum()
        return self.classifier(fused)

    def modality_weights(self, xs):
        w = torch.sigmoid(self.scores)
        return (w / w.sum()).expand(xs[0].shape[0], -1)

    def mixing_parameters(self):
        return [self.scores]
