"""`logreg`: scikit-learn logistic regression on the concatenated (standardised) inputs, a strong linear
baseline. Fitted by lbfgs, then stored as an ordinary Linear head so that saving, `feat evaluate` and the
metrics go through exactly the same code as the neural heads. Sparse inputs stay sparse end to end."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from feat.fuse.config import HeadConfig
from feat.fuse.layers import Head


class LogReg(Head):
    min_inputs = 1

    def __init__(self, cfg: HeadConfig, dims: list[int], n_classes: int):
        super().__init__()
        self.dims = list(dims)
        self.c = cfg.logreg_c
        self.linear = nn.Linear(sum(dims), n_classes)

    def forward(self, xs):
        out, start = self.linear.bias, 0
        for x, d in zip(xs, self.dims):
            w = self.linear.weight[:, start:start + d].t()
            out = out + (torch.sparse.mm(x, w) if x.layout != torch.strided else x @ w)
            start += d
        return out

    def fit_sklearn(self, inputs: list, y: np.ndarray, class_weight: str, seed: int) -> None:
        """Fit on the train rows (`inputs` are numpy arrays or CSR matrices) and copy the solution in."""
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        matrix = sp.hstack(inputs, format="csr") if any(sp.issparse(m) for m in inputs) else np.hstack(inputs)
        model = LogisticRegression(C=self.c, max_iter=2000, random_state=seed,
                                   class_weight="balanced" if class_weight == "balanced" else None)
        with threadpool_limits(1):  # single-threaded BLAS: same result on every run
            model.fit(matrix, y)
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row; logits [0, z] give the same probabilities
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
