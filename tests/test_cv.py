"""Cross-validation, tuning and the answer: folds, selection blind to test, learned weights that learn,
answer.json on a control where the image carries the label and one where it carries nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from feat.errors import InputError
from feat.fuse.ablate import AblateSpec, run_ablation
from feat.fuse.config import CVConfig, HeadConfig, TrainConfig
from feat.fuse.data import FusionData, load_data
from feat.fuse.folds import assign_folds
from feat.fuse.metrics import best_threshold
from feat.fuse.plan import plan
from feat.fuse.run import _inputs
from feat.fuse.toy import toy_features, write_toy_cache
from feat.fuse.train import train

FAST = TrainConfig(epochs=5, batch_size=32, lr=3e-3, patience=5)
HEAD = HeadConfig(common_dim=16, width=16)


def labels_from(frame_and_features, which: str) -> list[str]:
    """Labels carried by input `a` alone (the image `b` is then noise), or jointly."""
    _, m = frame_and_features
    score = m["a"][:, 0] + m["a"][:, 1] if which == "a" else m["a"][:, 0] + m["a"][:, 1] + m["b"][:, 0] - m["b"][:, 1]
    return list(np.where(score > 0, "yes", "no"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_cache(tmp_path_factory.mktemp("cv") / "cache", n=300)


def test_folds_are_stratified_deterministic_and_ignore_row_order():
    rng = np.random.default_rng(0)
    n = 400
    ids = np.array([f"id{i:03d}" for i in range(n)], dtype=object)
    y = (rng.random(n) < 0.3).astype(np.int64)
    split = np.where(rng.random(n) < 0.2, "test", np.where(rng.random(n) < 0.8, "train", "dev")).astype(object)
    cv = CVConfig(folds=5, repeats=2, seed=3)
    folds = assign_folds(ids, split, y, None, cv)
    assert folds.shape == (2, n)
    assert (folds[:, split == "test"] == -1).all() and (folds[:, split != "test"] >= 0).all()
    pool = split != "test"
    for r in range(2):
        for f in range(5):
            share = y[pool & (folds[r] == f)].mean()
            assert abs(share - y[pool].mean()) < 0.03  # stratified
    assert not np.array_equal(folds[0], folds[1])  # repeats reshuffle
    assert np.array_equal(assign_folds(ids, split, y, None, cv), folds)  # deterministic
    order = rng.permutation(n)
    shuffled = assign_folds(ids[order], split[order], y[order], None, cv)
    assert np.array_equal(shuffled, folds[:, order])  # the table's row order does not matter


def test_groups_stay_in_one_fold():
    rng = np.random.default_rng(1)
    n = 300
    ids = np.array([f"i{i}" for i in range(n)], dtype=object)
    groups = np.array([f"g{i // 3}" for i in range(n)], dtype=object)  # triples of near duplicates
    y = np.repeat(rng.integers(0, 2, n // 3), 3)
    split = np.array(["train"] * n, dtype=object)
    folds = assign_folds(ids, split, y, groups, CVConfig(folds=4, group_col="g"))
    for g in np.unique(groups):
        assert len(set(folds[0, groups == g])) == 1


def test_too_few_rows_of_a_class_for_k_folds_is_a_clear_error():
    ids = np.array([f"i{i}" for i in range(20)], dtype=object)
    y = np.array([0] * 17 + [1] * 3)
    with pytest.raises(InputError, match="rarest class has 3 rows"):
        assign_folds(ids, np.array(["train"] * 20, dtype=object), y, None, CVConfig(folds=5))


def test_every_configuration_gets_the_same_partitions_and_validation_never_trains(toy, tmp_path):
    spec = AblateSpec(toy, [["a"], ["b"], ["a", "b"]], ["mean", "concat"], 1, "label", tmp_path, HEAD, FAST,
                      cv=CVConfig(folds=3))
    runs = plan(spec)
    data = runs[0].load(runs[0].valid_from)
    by_partition: dict[int, set] = {}
    for run in runs:
        view = data.with_partition(run.cv, run.partition)
        validation = frozenset(view.ids[view.split == "dev"])
        assert not validation & set(view.ids[view.split == "train"])
        assert set(view.ids[view.split == "test"]) == set(data.ids[data.split == "test"])
        by_partition.setdefault(run.partition, set()).add(validation)
    assert sorted(by_partition) == [0, 1, 2]
    assert all(len(v) == 1 for v in by_partition.values())  # one validation fold per partition, shared by all
    union = set().union(*(next(iter(v)) for v in by_partition.values()))
    assert union == set(data.ids[data.split != "test"])


def test_selection_and_tuning_never_see_test_labels(tmp_path):
    """Two caches differ only in their test labels: everything chosen must be identical."""
    frame, _ = toy_features(300)
    poisoned = [("no" if v == "yes" else "yes") if s == "test" else v for v, s in zip(frame["label"], frame["split"])]
    clean, bad = write_toy_cache(tmp_path / "clean", n=300), write_toy_cache(tmp_path / "bad", n=300, labels=poisoned)
    chosen = []
    for cache in (clean, bad):
        summary = run_ablation(AblateSpec(cache, [["a"], ["b"], ["a", "b"]], ["mean", "concat"], 1, "label",
                                          tmp_path / f"abl-{cache.name}", HEAD, FAST, workers=1, curves=False,
                                          cv=CVConfig(folds=3), tune=2, attribution=False))
        table = summary.table
        chosen.append((table[["features", "strategy", "trial", "val_auroc_mean"]], summary.best_run))
    assert chosen[0][0].equals(chosen[1][0]) and chosen[0][1] == chosen[1][1]
    first = pd.read_csv(tmp_path / "abl-clean" / "summary.csv")
    second = pd.read_csv(tmp_path / "abl-bad" / "summary.csv")
    assert not np.allclose(first["test_auroc_mean"], second["test_auroc_mean"])  # the poison did reach test


def test_tuning_gives_every_configuration_the_same_trials_and_records_them(toy, tmp_path):
    spec = AblateSpec(toy, [["a", "b"]], ["mean", "intermediate"], 1, "label", tmp_path, HEAD, FAST, tune=3)
    runs = plan(spec)
    per_config: dict[str, list] = {}
    for run in runs:
        per_config.setdefault((tuple(run.features), run.head.strategy), []).append(
            (run.trial, run.train.lr, run.head.dropout))
    assert len(set(map(tuple, per_config.values()))) == 1  # the same trials for every configuration
    assert len(per_config) == 4  # mean and intermediate on a+b, single on a and on b
    assert per_config[(("a", "b"), "mean")][0] == (0, FAST.lr, HEAD.dropout)  # trial 0: the given values
    assert len({lr for _, lr, _ in per_config[(("a", "b"), "mean")]}) == 3
    assert [r.trial for r in plan(spec)] == [r.trial for r in runs]  # reproducible


def test_answer_says_the_image_helps_only_when_it_does(tmp_path):
    """Positive control: the label needs both inputs. Negative control: the image input carries nothing."""
    answers = {}
    for which in ("both", "a"):
        cache = write_toy_cache(tmp_path / which, n=600, labels=labels_from(toy_features(600), which))
        out = tmp_path / f"abl-{which}"
        run_ablation(AblateSpec(cache, [["a"], ["b"], ["a", "b"]], ["concat", "weighted_mean", "late_learned"], 2,
                                "label", out, HEAD, TrainConfig(epochs=15, batch_size=32, lr=3e-3), workers=1,
                                curves=False, cv=CVConfig(folds=3)))
        answers[which] = json.loads((out / "answer.json").read_text())
    helps, control = answers["both"], answers["a"]
    assert helps["image_helps"] is True and helps["vs_text_only"]["p"] < 0.05
    assert helps["best_text_only"]["features"] == "a" and helps["best_image_only"]["features"] == "b"
    assert {"delta", "ci", "p", "cv"} <= set(helps["vs_text_only"])
    assert helps["metric"] == "auroc" and helps["positive_class"] == "yes"
    assert 0 <= helps["winner_probability"] <= 1
    assert control["image_helps"] is False
    importance = pd.read_csv(tmp_path / "abl-a" / "importance.csv")
    image = importance[(importance["input"] == "b") & (importance["kind"] == "permuted")]
    assert (image["ci_low"] <= 0).all()  # the image's importance CI includes 0 on the negative control
    results = pd.read_csv(tmp_path / "abl-a" / "results.csv")
    for strategy in ("weighted_mean", "late_learned"):
        rows = results[results["strategy"] == strategy]
        assert (rows["test_weight_a"] > rows["test_weight_b"]).mean() >= 0.75, strategy


def noise_data(n: int = 1200, d: int = 16, seed: int = 0) -> FusionData:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    y = (a[:, 0] + a[:, 1] > 0).astype(np.int64)
    split = np.array(["train"] * 840 + ["dev"] * 180 + ["test"] * (n - 1020), dtype=object)
    return FusionData(["a", "b"], np.array([f"i{i}" for i in range(n)], dtype=object), split, y, ["0", "1"],
                      {"a": a, "b": b}, {"a": np.ones(n, bool), "b": np.ones(n, bool)}, {"a": {}, "b": {}})


@pytest.mark.parametrize("strategy", ["weighted_mean", "late_learned"])
@pytest.mark.parametrize("seed", [0, 1])
def test_learned_weights_move_to_the_informative_input(strategy, seed):
    """b is pure noise: the learned weight of a ends above 0.8 (at lr 1e-3 it stayed at 0.50 +- 0.01)."""
    data = noise_data(seed=seed)
    cfg = TrainConfig(seed=seed, epochs=15)
    inputs = _inputs(data, cfg)[1]
    head = train(HeadConfig(strategy=strategy, common_dim=32), cfg, data, inputs).head
    with torch.no_grad():
        weights = head.modality_weights(inputs.take(data.rows("test"))).mean(0)
    assert weights[0] > 0.8, weights


def test_best_threshold_maximises_validation_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        y = rng.integers(0, 2, n)
        p = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], n) if rng.random() < 0.5 else rng.random(n)
        t = best_threshold(y, p)
        best = max(f1_score(y, (p >= c).astype(int), zero_division=0) for c in [*p, 1.1])
        assert f1_score(y, (p >= t).astype(int), zero_division=0) == pytest.approx(best)


def test_positive_label_orders_the_classes(toy):
    data = load_data(toy, ["a"], "label", positive="no")
    assert data.classes == ["yes", "no"]
    with pytest.raises(InputError, match="--positive-label 'maybe'"):
        load_data(toy, ["a"], "label", positive="maybe")
