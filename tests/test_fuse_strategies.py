"""Every registered head: output shapes, gradients reaching every parameter, sparse inputs, and learning a
separable toy task (tiny random features, a few seconds in total)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from feat.errors import InputError
from feat.fuse.config import HeadConfig, TrainConfig
from feat.fuse.data import FusionData, fit_stats, prepare
from feat.fuse.registry import STRATEGIES, create_head, strategy_class
from feat.fuse.train import Inputs, deterministic, predict, train

DIMS = [8, 6, 12]


def input_counts(name: str) -> list[int]:
    cls = strategy_class(name)
    return [n for n in (1, 2, 3) if n >= cls.min_inputs and (cls.max_inputs is None or n <= cls.max_inputs)]


CASES = [(name, n) for name in STRATEGIES for n in input_counts(name)]


def small(name: str) -> HeadConfig:
    return HeadConfig(strategy=name, common_dim=16, width=8, dropout=0.1)


@pytest.mark.parametrize("name,n_inputs", CASES)
def test_shapes_and_every_parameter_gets_a_gradient(name, n_inputs):
    torch.manual_seed(0)
    head = create_head(small(name), DIMS[:n_inputs], 3)
    xs = [torch.randn(64, d) for d in DIMS[:n_inputs]]  # enough rows for every late_max expert to win somewhere
    logits = head(xs)
    assert logits.shape == (64, 3)
    nn.functional.cross_entropy(logits, torch.arange(64) % 3).backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    weights = head.modality_weights(xs)
    if weights is not None:
        assert weights.shape == (64, n_inputs)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(64))


@pytest.mark.parametrize("name,n_inputs", CASES)
def test_sparse_input_equals_dense_input(name, n_inputs):
    """A CSR/TF-IDF input goes through torch.sparse.mm: same logits and gradients as the dense matrix."""
    torch.manual_seed(0)
    head = create_head(small(name), DIMS[:n_inputs], 2).eval()
    xs = [torch.randn(5, d) for d in DIMS[:n_inputs]]
    xs[-1] = torch.where(torch.rand_like(xs[-1]) < 0.7, torch.zeros_like(xs[-1]), xs[-1])
    dense_out = head(xs)
    dense_out.sum().backward()
    dense_grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    sparse_out = head(xs[:-1] + [xs[-1].to_sparse()])
    sparse_out.sum().backward()
    torch.testing.assert_close(sparse_out, dense_out)
    for g, p in zip(dense_grads, head.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_input_counts_are_checked():
    with pytest.raises(InputError, match="exactly 1"):
        create_head(small("single"), [8, 6], 2)
    with pytest.raises(InputError, match="at least 2"):
        create_head(small("concat"), [8], 2)
    with pytest.raises(InputError, match="unknown strategy"):
        create_head(small("nope"), [8, 6], 2)


def test_reference_shapes_match_the_reference():
    """Two inputs of width 768: Identity projections, proj_concat halves, the reference classifier."""
    head = create_head(HeadConfig(strategy="proj_concat"), [768, 640], 2)
    assert head.project[0].linear is None and head.project[1].linear.weight.shape == (768, 640)
    assert [r.weight.shape for r in head.reduce] == [(384, 768), (384, 768)]
    assert head.fuse.weight.shape == (768, 768)
    assert [m.weight.shape for m in head.classifier if isinstance(m, nn.Linear)] == [(384, 768), (2, 384)]
    gated = create_head(HeadConfig(strategy="gated"), [768, 768], 2)
    assert gated.gate.weight.shape == (768, 1536)
    wm = create_head(HeadConfig(strategy="weighted_mean"), [768, 768], 2)
    torch.testing.assert_close(wm.scores.detach(), torch.full((2,), 0.5))


def toy_data(n: int = 300, seed: int = 0, one_input: bool = False) -> FusionData:
    """Dense inputs a (8), b (6), sparse s (12); label = sign of a score needing both a and b."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(n, 6)).astype(np.float32)
    s = np.where(rng.random((n, 12)) < 0.8, 0, rng.random((n, 12))).astype(np.float32)
    s[:, 0] = b[:, 0] - b[:, 1]  # the sparse input carries b's part of the score
    s = sp.csr_matrix(s)
    score = a[:, 0] + a[:, 1] + (0 if one_input else b[:, 0] - b[:, 1])
    split = np.array(["train"] * (n * 6 // 10) + ["dev"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10), dtype=object)
    return FusionData(["a", "b", "s"], np.array([f"i{i}" for i in range(n)], dtype=object), split,
                      (score > 0).astype(np.int64), ["no", "yes"], {"a": a, "b": b, "s": s},
                      {f: np.ones(n, bool) for f in "abs"}, {f: {"id": f, "fingerprint": {}} for f in "abs"})


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_learns_a_separable_toy_task(name):
    features = ["a"] if strategy_class(name).max_inputs == 1 else ["a", "s"] if name == "intermediate" else ["a", "b"]
    data = toy_data(one_input=len(features) == 1).select(features)
    inputs = Inputs(prepare(data, fit_stats(data), "drop"))
    cfg = TrainConfig(epochs=30, batch_size=16, lr=3e-3, patience=30, metric="accuracy")
    result = train(small(name), cfg, data, inputs)
    with deterministic(0):
        for split in ("train", "dev"):
            rows = data.rows(split)
            accuracy = (predict(result.head, inputs, rows).argmax(1) == data.y[rows]).mean()
            assert accuracy >= (0.9 if split == "train" else 0.8), f"{name}: {split} accuracy {accuracy:.2f}"
