"""`intermediate`: one sub-network per input (`depth` x [Linear(width) -> ReLU -> Dropout]), the branch
outputs concatenated and classified by the reference classifier. Any number of inputs (tfidf + minilm +
effnet: the intermediate-fusion tutorial's recipe)."""

from __future__ import annotations

import torch
from torch import nn

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, linear


class Branch(nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in if i == 0 else width, width) for i in range(depth))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        for layer in self.layers:
            x = self.drop(torch.relu(linear(x, layer)))
        return x


class Intermediate(Head):
    min_inputs = 1

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        self.branches = nn.ModuleList(Branch(d, cfg.width, max(1, cfg.depth), cfg.dropout) for d in dims)
        self.classifier = Classifier(cfg.width * len(dims), n_classes, cfg.dropout)

    def forward(self, xs):
        return self.classifier(torch.cat([b(x) for b, x in zip(self.branches, xs)], dim=1))
