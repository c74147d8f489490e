"""Summary statistics against hand-computed examples: mean/std, confusion-count metrics, bootstrap CI and
the paired bootstrap p-value; and the ranking of the summary by dev, never by test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from feat.fuse.stats import bootstrap_ci, confusions, mean_std, metric_from_confusion, paired_bootstrap


def test_mean_and_sample_std():
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, (5 / 3) ** 0.5))
    assert mean_std([0.7]) == (0.7, 0.0)


def test_confusion_metrics_match_sklearn_and_hand_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([[0, 1, 1, 1, 2, 0]])
    c = confusions(y, pred, np.arange(6)[None], 3)
    assert c[0, 0].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per-class F1: 1/2, 4/5, 2/3 -> macro 0.6556
    assert metric_from_confusion(c, "macro_f1")[0, 0] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert metric_from_confusion(c, "accuracy")[0, 0] == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    for k in (2, 3, 4):
        y, p = rng.integers(0, k, 50), rng.integers(0, k, 50)
        c = confusions(y, p[None], np.arange(50)[None], k)
        expected = f1_score(y, p, average="binary" if k == 2 else "macro")
        assert metric_from_confusion(c, "f1")[0, 0] == pytest.approx(expected)
        assert metric_from_confusion(c, "macro_f1")[0, 0] == pytest.approx(f1_score(y, p, average="macro"))


def test_bootstrap_ci_of_accuracy_by_hand():
    """5 of 10 items right: the resampled accuracy is Binomial(10, 1/2) / 10. P(X <= 1) = 11/1024 < 2.5%
    < P(X <= 2) = 56/1024, so the 95% percentile interval is [0.2, 0.8]."""
    y = np.zeros(10, dtype=np.int64)
    pred = np.array([0] * 5 + [1] * 5)
    assert bootstrap_ci(y, pred, 2, "accuracy", b=20000) == (0.2, 0.8)
    # seeds are averaged inside each resample: two identical seeds give the same interval
    assert bootstrap_ci(y, np.stack([pred, pred]), 2, "accuracy", b=20000) == (0.2, 0.8)
    assert bootstrap_ci(y, np.zeros((3, 10), dtype=np.int64), 2, "accuracy") == (1.0, 1.0)


def test_paired_bootstrap_p_value_by_hand():
    """a is right on 3 items where b is wrong, equal elsewhere (n = 10). Accuracy difference = 0.3. A
    resample has delta <= 0 only when it draws none of the 3 items: 0.7^10 = 0.0282, so p = 2 * 0.0282."""
    y = np.zeros(10, dtype=np.int64)
    a = np.zeros(10, dtype=np.int64)
    b = np.array([1, 1, 1] + [0] * 7)
    delta, p = paired_bootstrap(y, a, b, 2, "accuracy", b=40000)
    assert delta == pytest.approx(0.3)
    assert p == pytest.approx(2 * 0.7 ** 10, abs=0.006)
    assert paired_bootstrap(y, b, a, 2, "accuracy", b=40000)[1] == pytest.approx(2 * 0.7 ** 10, abs=0.006)
    assert paired_bootstrap(y, a, a, 2, "accuracy") == (0.0, 1.0)


def test_summary_is_ranked_by_dev_not_test(tmp_path):
    """Config x has the better dev metric and the worse test metric: it must still rank first."""
    from feat.fuse.data import FusionData
    from feat.fuse.report import write_report

    n = 20
    ids = np.array([f"i{i}" for i in range(n)], dtype=object)
    y = np.array([0, 1] * (n // 2))
    data = FusionData(["a", "b"], ids, np.array(["test"] * n, dtype=object), y, ["no", "yes"], {}, {}, {})
    rows = []
    configs = [("a+b", "x", 0.9, 12, 0.5), ("a+b", "y", 0.8, 18, 0.5), ("a", "single", 0.7, 14, 0.5),
               ("b", "single", 0.7, 10, 0.4)]  # ties a / single on dev f1 with a lower dev loss
    for features, strategy, dev, right, loss in configs:
        for seed in (0, 1):
            run = f"runs/{features}__{strategy}__seed{seed}"
            (tmp_path / run).mkdir(parents=True)
            pred = np.where(np.arange(n) < right, y, 1 - y)
            pd.DataFrame({"id": ids, "true": np.array(["no", "yes"])[y], "pred": np.array(["no", "yes"])[pred]}).to_csv(
                tmp_path / run / "predictions_test.csv", index=False)
            rows.append({"features": features, "strategy": strategy, "seed": seed, "n_inputs": features.count("+") + 1,
                         "dev_f1": dev + 0.01 * seed, "dev_loss": loss, "test_f1": f1_score(y, pred), "best_epoch": 1,
                         "seconds": 1.0,
                         "run": run})
    summary = write_report(tmp_path, pd.DataFrame(rows), data, "f1")
    assert list(zip(summary.table["features"], summary.table["strategy"])) == [
        ("a+b", "x"), ("a+b", "y"), ("b", "single"), ("a", "single")]
    assert summary.best_run == "runs/a+b__x__seed1"  # best dev seed of the best dev configuration
    assert summary.table["dev_f1_mean"].tolist() == pytest.approx([0.905, 0.805, 0.705, 0.705])
    assert summary.table["dev_f1_std"].tolist() == pytest.approx([0.01 / 2 ** 0.5] * 4)
    assert summary.best_unimodal == "b / single"
    assert np.isnan(summary.table["p_value"].iloc[2]) and summary.table["p_value"].iloc[1] < 0.2
    assert (tmp_path / "best").read_text().strip() == "runs/a+b__x__seed1"
