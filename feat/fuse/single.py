"""`single`: the unimodal baseline, one input -> projection -> reference classifier (what the fusion heads
are compared against; `feat ablate` runs it on every input automatically)."""

from __future__ import annotations

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, Project


class Single(Head):
    min_inputs = 1
    max_inputs = 1

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        self.project = Project(dims[0], cfg.common_dim)
        self.classifier = Classifier(cfg.common_dim, n_classes, cfg.dropout)

    def forward(self, xs):
        return self.classifier(self.project(xs[0]))
