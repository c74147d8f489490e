"""Modality attribution without learned weights: permutation and missing-input importance with paired item
bootstrap CIs, and the missing-modality robustness curve, on small logistic heads fitted to synthetic data
where one input carries the label and the other is pure noise."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from feat.fuse.attribution import FittedModel, importance, importance_figure, robustness, robustness_figure
from feat.fuse.stats import bootstrap_ci

NAMES = ["text", "image"]


def _data(n: int, rng: np.random.Generator):
    y = rng.integers(0, 2, n)
    text = (2 * y - 1)[:, None] * 0.4 + rng.normal(size=(n, 4))  # carries the label
    image = rng.normal(size=(n, 3))  # pure noise
    return y, [text, image]


def _predictor(coef: np.ndarray, intercept: float, widths: list[int]):
    splits = np.cumsum(widths)[:-1]
    parts = np.split(coef, splits)

    def predict(inputs: list) -> np.ndarray:
        logit = intercept + sum(np.asarray(x @ w).ravel() for x, w in zip(inputs, parts))
        p = 1 / (1 + np.exp(-logit))
        return np.column_stack([1 - p, p])

    return predict


def _models(seeds=(0, 1), folds=3, sparse=False):
    """`folds` logistic heads per seed, each on its own part of the training rows and standardised with its
    own training statistics (so every model has its own prepared test matrices; missing = the train mean)."""
    rng = np.random.default_rng(42)
    y_train, train = _data(400, rng)
    y_test, test = _data(300, rng)
    models = []
    for seed in seeds:
        fold = np.random.default_rng(seed).permutation(len(y_train)) % folds
        for k in range(folds):
            rows = fold != k
            mean = [x[rows].mean(0) for x in train]
            std = [x[rows].std(0) for x in train]
            prepared_train = np.hstack([(x[rows] - m) / s for x, m, s in zip(train, mean, std)])
            head = LogisticRegression(C=10.0).fit(prepared_train, y_train[rows])
            inputs = [((x - m) / s).astype(np.float32) for x, m, s in zip(test, mean, std)]
            missing = [np.zeros((1, x.shape[1]), dtype=np.float32) for x in test]
            if sparse:
                inputs = [sp.csr_matrix(x) for x in inputs]
                missing = [sp.csr_matrix(m) for m in missing]
            widths = [x.shape[1] for x in test]
            models.append(FittedModel(_predictor(head.coef_[0], float(head.intercept_[0]), widths), inputs,
                                      missing, seed))
    return models, y_test


@pytest.fixture(scope="module")
def fitted():
    return _models()


def _row(frame: pd.DataFrame, name: str, kind: str) -> pd.Series:
    return frame[(frame["input"] == name) & (frame["kind"] == kind)].iloc[0]


def test_informative_input_matters_and_noise_input_does_not(fitted):
    models, y = fitted
    frame = importance(models, y, "auroc", NAMES, permutations=5, b=500, seed=0)
    assert len(frame) == 4 and set(frame["kind"]) == {"permuted", "missing"}
    assert (frame["n"] == len(y)).all() and (frame["metric"] == "auroc").all()
    for kind in ("permuted", "missing"):
        text, image = _row(frame, "text", kind), _row(frame, "image", kind)
        assert text["drop"] > 0.2 and text["ci_low"] > 0.1, (kind, text.to_dict())
        assert abs(image["drop"]) < 0.02 and image["ci_low"] <= 0 <= image["ci_high"], (kind, image.to_dict())
        assert text["ci_low"] <= text["drop"] <= text["ci_high"]
    # without the text the heads are left with noise: AUROC near chance
    assert abs(_row(frame, "text", "permuted")["perturbed"] - 0.5) < 0.08


def test_baseline_is_the_seed_ensemble_metric_averaged_over_seeds(fitted):
    """Per seed the fold models' probabilities are averaged, then the metric is averaged over seeds (not the
    AUROC of all models pooled, not the mean AUROC of single models)."""
    models, y = fitted
    per_seed = []
    for seed in (0, 1):
        prob = np.mean([m.predict(m.inputs) for m in models if m.seed == seed], axis=0)
        per_seed.append(roc_auc_score(y, prob[:, 1]))
    frame = importance(models, y, "auroc", NAMES, permutations=1, b=50)
    assert frame["baseline"].to_numpy() == pytest.approx(np.mean(per_seed), abs=1e-12)
    pooled = roc_auc_score(y, np.mean([m.predict(m.inputs) for m in models], axis=0)[:, 1])
    singles = np.mean([roc_auc_score(y, m.predict(m.inputs)[:, 1]) for m in models])
    assert np.mean(per_seed) not in (pytest.approx(pooled, abs=1e-9), pytest.approx(singles, abs=1e-9))


def test_loss_drop_is_oriented_so_that_positive_means_worse(fitted):
    models, y = fitted
    frame = importance(models, y, "loss", NAMES, permutations=3, b=300)
    for _, row in frame.iterrows():
        assert row["drop"] == pytest.approx(row["perturbed"] - row["baseline"])
    text = _row(frame, "text", "missing")
    assert text["perturbed"] > text["baseline"] and text["drop"] > 0.05 and text["ci_low"] > 0
    per_seed = [log_loss(y, np.mean([m.predict(m.inputs) for m in models if m.seed == s], axis=0)) for s in (0, 1)]
    assert text["baseline"] == pytest.approx(np.mean(per_seed), abs=1e-9)
    auroc = importance(models, y, "auroc", NAMES, permutations=3, b=300)
    for _, row in auroc.iterrows():
        assert row["drop"] == pytest.approx(row["baseline"] - row["perturbed"])


def test_paired_ci_is_reproducible_and_paired(fitted):
    models, y = fitted
    first = importance(models, y, "auroc", NAMES, permutations=2, b=400, seed=7)
    again = importance(models, y, "auroc", NAMES, permutations=2, b=400, seed=7)
    other = importance(models, y, "auroc", NAMES, permutations=2, b=400, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["ci_low"], other["ci_low"])
    # Replacing the noise input by its train mean barely moves any prediction, so with the same items drawn
    # for baseline and perturbed the drop's interval is far narrower than the baseline's own interval;
    # independent draws would make it wider than that.
    low, high = bootstrap_ci("auroc", y, np.stack([np.mean([m.predict(m.inputs) for m in models if m.seed == s],
                                                           axis=0) for s in (0, 1)]), b=400, seed=7)
    image = _row(first, "image", "missing")
    assert image["ci_high"] - image["ci_low"] < 0.25 * (high - low)


class _Recorder:
    """A head whose third input is the row id (missing = -1): it records which rows each call saw."""

    def __init__(self, model: FittedModel, log: list):
        self.model, self.log = model, log

    def __call__(self, inputs: list) -> np.ndarray:
        ids = inputs[2].toarray().ravel() if sp.issparse(inputs[2]) else inputs[2].ravel()
        self.log.append((id(self), ids.astype(np.int64).copy()))
        return self.model.predict(inputs[:2])


def _recording(models, sparse_ids=False):
    log = []
    wrapped = []
    for m in models:
        ids = np.arange(m.inputs[0].shape[0], dtype=np.float32)[:, None]
        missing = np.full((1, 1), -1, dtype=np.float32)
        if sparse_ids:
            ids, missing = sp.csr_matrix(ids), sp.csr_matrix(missing)
        wrapped.append(FittedModel(_Recorder(m, log), m.inputs + [ids], m.missing + [missing], m.seed))
    return wrapped, log


def test_one_permutation_for_every_model_and_several_permutations(fitted):
    models, y = fitted
    wrapped, log = _recording(models)
    importance(wrapped, y, "auroc", NAMES + ["ids"], permutations=3, b=20)
    calls_per_model = len(log) // len(wrapped)
    seen = [ids for _, ids in log]
    # calls are made model by model within one perturbation: group consecutive blocks of len(models)
    blocks = [seen[j:j + len(wrapped)] for j in range(0, len(seen), len(wrapped))]
    assert calls_per_model == 1 + 3 * (3 + 1)  # baseline, then per input: 3 permutations + missing
    permutations = set()
    for block in blocks:
        assert all(np.array_equal(block[0], other) for other in block[1:])
        ids = block[0]
        if (ids >= 0).all() and not np.array_equal(ids, np.arange(len(y))):
            assert sorted(ids) == list(range(len(y)))
            permutations.add(ids.tobytes())
    assert len(permutations) == 3


@pytest.mark.parametrize("sparse_ids", [False, True])
def test_robustness_ends_at_baseline_and_missing_and_subsets_are_nested(fitted, sparse_ids):
    models, y = fitted
    curve = robustness(models, y, "auroc", NAMES, seed=3)
    frame = importance(models, y, "auroc", NAMES, permutations=1, b=20)
    assert list(curve.columns[:5]) == ["input", "fraction", "metric", "value", "n"]
    assert sorted(set(curve["fraction"])) == pytest.approx([i / 10 for i in range(11)])
    for name in NAMES:
        line = curve[curve["input"] == name].sort_values("fraction")
        assert line["value"].iloc[0] == pytest.approx(_row(frame, name, "missing")["baseline"], abs=1e-12)
        assert line["value"].iloc[-1] == pytest.approx(_row(frame, name, "missing")["perturbed"], abs=1e-12)
    text = curve[curve["input"] == "text"].sort_values("fraction")["value"].to_numpy()
    assert text[0] - text[-1] > 0.2 and (np.diff(text) < 0.02).all()  # losing more text rows only hurts

    wrapped, log = _recording(models, sparse_ids)
    fractions = (0.0, 0.1, 0.25, 0.5, 1.0)
    robustness(wrapped, y, "auroc", NAMES + ["ids"], fractions=fractions, seed=3)
    per_call = [ids for _, ids in log]
    m = len(wrapped)
    n = len(y)
    for i in range(3):  # inputs
        masks = []
        for f, p in enumerate(fractions):
            block = per_call[(i * len(fractions) + f) * m:(i * len(fractions) + f + 1) * m]
            assert all(np.array_equal(block[0], other) for other in block[1:])  # same rows for every model
            if i == 2:  # the id input itself is the one being dropped: its missing rows read -1
                missing = block[0] == -1
                assert missing.sum() == round(p * n)
                assert np.array_equal(block[0][~missing], np.arange(n)[~missing])
                masks.append(missing)
        for smaller, larger in zip(masks, masks[1:]):
            assert not (smaller & ~larger).any()  # nested as p grows
    again = robustness(models, y, "auroc", NAMES, seed=3)
    pd.testing.assert_frame_equal(curve, again)


def test_sparse_inputs_stay_sparse_and_agree_with_dense():
    dense, y = _models(seeds=(0,), folds=2)
    sparse, _ = _models(seeds=(0,), folds=2, sparse=True)
    for model in sparse:
        inner = model.predict

        def checked(inputs, inner=inner):
            assert all(sp.issparse(x) and x.format == "csr" for x in inputs)
            return inner(inputs)

        model.predict = checked
    a = importance(dense, y, "loss", NAMES, permutations=2, b=100)
    b = importance(sparse, y, "loss", NAMES, permutations=2, b=100)
    pd.testing.assert_frame_equal(a, b, atol=1e-5, check_exact=False)
    ra = robustness(dense, y, "auroc", NAMES, fractions=(0, 0.5, 1))
    rb = robustness(sparse, y, "auroc", NAMES, fractions=(0, 0.5, 1))
    pd.testing.assert_frame_equal(ra, rb, atol=1e-6, check_exact=False)


def test_inputs_must_match_names(fitted):
    models, y = fitted
    with pytest.raises(ValueError, match="1 inputs.*got 2"):
        importance(models, y, "auroc", ["text"])
    with pytest.raises(ValueError, match="at least one fitted model"):
        robustness([], y, "auroc", NAMES)
    with pytest.raises(ValueError, match="permutations must be at least 1"):
        importance(models, y, "auroc", NAMES, permutations=0)


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_figures_are_written_as_pngs(fitted, tmp_path):
    models, y = fitted
    configurations = [("minilm,effnet", "concat", models), ("minilm,effnet", "late_mean", models[:3])]
    imp, rob = [], []
    for features, strategy, group in configurations:
        imp.append(importance(group, y, "auroc", NAMES, permutations=2, b=100).assign(features=features,
                                                                                    strategy=strategy))
        rob.append(robustness(group, y, "auroc", NAMES).assign(features=features, strategy=strategy))
    bars, curves = tmp_path / "importance.png", tmp_path / "robustness.png"
    importance_figure(pd.concat(imp), bars, "Modality importance on test")
    robustness_figure(pd.concat(rob), curves, "Missing-modality robustness on test", chance=0.5)
    for path in (bars, curves):
        width, height = _png_size(path)
        assert width >= 800 and height >= 300, (path.name, width, height)
        assert path.stat().st_size > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["importance.png", "robustness.png"]  # no temp left
