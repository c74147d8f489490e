"""`late_learned`: per-input classifiers, logits mixed by learned weights softmax(m) (m starts at 0 = mean)."""

import torch
from torch import nn

from feat.fuse.late import LateFusion


class LateLearned(LateFusion):
    def __init__(self, cfg, dims, n_classes):
        super().__init__(cfg, dims, n_classes)
        self.mix = nn.Parameter(torch.zeros(len(dims)))

    def merge(self, logits):
        return (torch.softmax(self.mix, dim=0)[:, None, None] * logits).sum(dim=0)

    def modality_weights(self, xs):
        return torch.softmax(self.mix, dim=0).expand(xs[0].shape[0], -1)

    def mixing_parameters(self):
        return [self.mix]
