"""`gated` (reference): g = sigmoid(Linear(2d -> d)([t; v])), fused = g*t + (1-g)*v -> reference classifier.

Two inputs are exactly the reference. For N > 2 inputs the gate becomes a per-dimension softmax over the
inputs, g = softmax_i(Linear(N*d -> N*d)([x1; ...; xN])), fused = sum_i g_i * x_i.
"""

from __future__ import annotations

import torch
from torch import nn

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Classifier, Head, projections


class Gated(Head):
    min_inputs = 2

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        d, n = cfg.common_dim, len(dims)
        self.project = projections(dims, d)
        self.gate = nn.Linear(n * d, d if n == 2 else n * d)
        self.classifier = Classifier(d, n_classes, cfg.dropout)

    def _gates(self, projected: list[torch.Tensor]) -> torch.Tensor:
        """(inputs, rows, d) weights that sum to 1 over the inputs."""
        logits = self.gate(torch.cat(projected, dim=1))
        if len(projected) == 2:
            g = torch.sigmoid(logits)
            return torch.stack([g, 1 - g])
        rows, d = projected[0].shape
        return torch.softmax(logits.view(rows, len(projected), d), dim=1).transpose(0, 1)

    def forward(self, xs):
        projected = [p(x) for p, x in zip(self.project, xs)]
        fused = (self._gates(projected) * torch.stack(projected)).sum(dim=0)
        return self.classifier(fused)

    def modality_weights(self, xs):
        projected = [p(x) for p, x in zip(self.project, xs)]
        return self._gates(projected).mean(dim=2).t()

    def mixing_parameters(self):
        return [self.gate.bias]
