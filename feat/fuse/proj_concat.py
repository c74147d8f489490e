"""`proj_concat` (reference): each projected input through its own Linear(d -> d/N) (d/2 for the reference's
two inputs), concatenated back to width d, then Dropout(ReLU(Linear(d -> d))) -> reference classifier."""

from __future__ import annotations

import torch
from torch import nn

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, projections


class ProjConcat(Head):
    min_inputs = 2

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        d, part = cfg.common_dim, cfg.common_dim // len(dims)
        self.project = projections(dims, d)
        self.reduce = nn.ModuleList(nn.Linear(d, part) for _ in dims)
        self.fuse = nn.Linear(part * len(dims), d)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = Classifier(d, n_classes, cfg.dropout)

    def forward(self, xs):
        parts = [r(p(x)) for p, r, x in zip(self.project, self.reduce, xs)]
        return self.classifier(self.drop(torch.relu(self.fuse(torch.cat(parts, dim=1)))))
