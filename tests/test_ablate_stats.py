"""Summary statistics against hand-computed examples: mean/std, confusion-count metrics, resampled AUROC and
log-loss, bootstrap CI, the paired bootstrap, the Nadeau-Bengio corrected t-test, winner probabilities, Holm;
and the ranking of the summary by validation, never by test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from feat.fuse.stats import (bootstrap_ci, confusions, corrected_t_test, first_place_rate, holm, mean_std,
                             metric_from_confusion, observed, paired_bootstrap, resamples, score_resamples,
                             winner_probability)


def one_hot(pred: np.ndarray, k: int = 2) -> np.ndarray:
    return np.eye(k)[pred]


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


@pytest.mark.parametrize("k", [2, 3])
def test_resampled_auroc_and_log_loss_equal_sklearn_on_every_resample(k):
    rng = np.random.default_rng(k)
    y, prob = rng.integers(0, k, 60), rng.dirichlet(np.ones(k), size=60)
    prob[:, 0] = np.round(prob[:, 0], 1) + 0.05  # ties: AUROC counts them as half
    prob /= prob.sum(1, keepdims=True)
    draws = resamples(60, 5, 0)
    auroc = score_resamples("auroc", y, prob, draws)
    loss = score_resamples("loss", y, prob, draws)
    for b, d in enumerate(draws):
        expected = roc_auc_score(y[d], prob[d, 1]) if k == 2 else roc_auc_score(y[d], prob[d], multi_class="ovr")
        assert auroc[b] == pytest.approx(expected)
        assert loss[b] == pytest.approx(log_loss(y[d], prob[d], labels=list(range(k))))
    # seeds: the metric is computed per seed, then averaged
    other = rng.dirichlet(np.ones(k), size=60)
    both = score_resamples("auroc", y, np.stack([prob, other]), draws)
    assert both == pytest.approx((auroc + score_resamples("auroc", y, other, draws)) / 2)


def test_bootstrap_ci_of_accuracy_by_hand():
    """5 of 10 items right: the resampled accuracy is Binomial(10, 1/2) / 10. P(X <= 1) = 11/1024 < 2.5%
    < P(X <= 2) = 56/1024, so the 95% percentile interval is [0.2, 0.8]."""
    y = np.zeros(10, dtype=np.int64)
    prob = one_hot(np.array([0] * 5 + [1] * 5))
    assert bootstrap_ci("accuracy", y, prob, b=20000) == (0.2, 0.8)
    # seeds are averaged inside each resample: two identical seeds give the same interval
    assert bootstrap_ci("accuracy", y, np.stack([prob, prob]), b=20000) == (0.2, 0.8)
    assert bootstrap_ci("accuracy", y, one_hot(np.zeros(10, dtype=int))) == (1.0, 1.0)


def test_paired_bootstrap_p_value_by_hand():
    """a is right on 3 items where b is wrong, equal elsewhere (n = 10). Accuracy difference = 0.3. A
    resample has delta <= 0 only when it draws none of the 3 items: 0.7^10 = 0.0282, so p = 2 * 0.0282."""
    y = np.zeros(10, dtype=np.int64)
    a = one_hot(np.zeros(10, dtype=np.int64))
    b = one_hot(np.array([1, 1, 1] + [0] * 7))
    result = paired_bootstrap("accuracy", y, a, b, b=40000)
    assert result["delta"] == pytest.approx(0.3)
    assert result["p"] == pytest.approx(2 * 0.7 ** 10, abs=0.006)
    # P(delta = 0) = 0.028 > 2.5%: the interval starts at 0
    assert result["ci"][0] == 0.0 and 0.3 < result["ci"][1] <= 0.7
    assert paired_bootstrap("accuracy", y, b, a, b=40000)["p"] == pytest.approx(2 * 0.7 ** 10, abs=0.006)
    assert paired_bootstrap("accuracy", y, a, a) == {"delta": 0.0, "ci": [0.0, 0.0], "p": 1.0}


def test_corrected_resampled_t_test_worked_example():
    """d = (0.01, 0.02, 0.00, 0.03, 0.01), J = 5, n_test / n_train = 200 / 800: mean 0.014, sample variance
    0.00052 / 4 = 0.00013; corrected variance 0.00013 * (1/5 + 1/4) = 5.85e-5, t = 0.014 / 0.0076485 = 1.8304,
    4 degrees of freedom. The plain paired t-test (variance 0.00013 / 5) gives t = 2.7456: overlapping training
    sets make it anti-conservative."""
    d = [0.01, 0.02, 0.0, 0.03, 0.01]
    result = corrected_t_test(d, n_train=800, n_test=200)
    assert result["delta"] == pytest.approx(0.014)
    assert result["t"] == pytest.approx(1.8304, abs=1e-4)
    assert result["df"] == 4
    assert result["p"] == pytest.approx(2 * scipy_stats.t.sf(1.8304, 4), abs=1e-4)
    plain = scipy_stats.ttest_1samp(d, 0.0)
    assert plain.statistic == pytest.approx(2.7456, abs=1e-4) and plain.pvalue < result["p"]
    assert corrected_t_test([0.0, 0.0, 0.0], 800, 200)["p"] == 1.0


def test_winner_probability():
    # a beats b in every cell: always first; identical rows split every draw
    scores = np.array([[0.9, 0.8, 0.85], [0.7, 0.6, 0.65]])
    assert winner_probability(scores, "auroc").tolist() == [1.0, 0.0]
    assert winner_probability(np.array([[0.5, 0.6], [0.5, 0.6]]), "auroc").tolist() == [0.5, 0.5]
    # lower is better for the loss
    assert winner_probability(scores, "loss").tolist() == [0.0, 1.0]
    # a wins 2 of 3 cells by a little, loses one by a lot: uncertain
    close = winner_probability(np.array([[0.81, 0.81, 0.5], [0.8, 0.8, 0.8]]), "auroc", b=4000)
    assert 0.2 < close[0] < 0.5
    assert first_place_rate(np.array([[1.0, np.nan], [0.5, 0.5]]), "auroc").tolist() == [0.5, 0.5]


def test_holm_step_down():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_observed_decision_metrics_use_the_threshold():
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    assert observed("f1", y, prob) == pytest.approx(f1_score(y, [0, 0, 0, 1]))
    assert observed("f1", y, prob, threshold=0.25) == pytest.approx(f1_score(y, [0, 1, 1, 1]))
