"""`late_max`: per-input classifiers, logits merged by element-wise max (the Fakeddit reference)."""

from feat.fuse.late import LateFusion


class LateMax(LateFusion):
    def merge(self, logits):
        return logits.max(dim=0).values
