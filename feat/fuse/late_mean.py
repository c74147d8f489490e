"""`late_mean`: per-input classifiers, logits averaged."""

from feat.fuse.late import LateFusion


class LateMean(LateFusion):
    def merge(self, logits):
        return logits.mean(dim=0)
