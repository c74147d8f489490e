"""The training protocol: early stopping keeps the best epoch's weights (a real copy), train-only statistics,
determinism, invalid and unlabelled rows, class weights, metric definitions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import feat.fuse.train as train_module
from feat.errors import InputError
from feat.fuse.config import HeadConfig, TrainConfig
from feat.fuse.data import fit_stats, load_data, prepare
from feat.fuse.metrics import compute_metrics
from feat.fuse.run import FuseSpec, run_fuse
from feat.fuse.toy import toy_features, write_toy_cache
from feat.fuse.train import Inputs, class_weights, deterministic, predict, split_metrics, train

FAST = TrainConfig(epochs=6, batch_size=32, lr=3e-3, patience=6)
HEAD = HeadConfig(strategy="concat", common_dim=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_toy_cache(tmp_path_factory.mktemp("toy") / "cache")


def snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_early_stopping_returns_the_best_epochs_weights(cache, monkeypatch):
    """Dev scores 0.5, 0.9, 0.3, 0.2, 0.1: epoch 2 is best and the last is worse. A shallow
    `state_dict().copy()` (the reference's bug) would hand back the last epoch's weights instead."""
    data = load_data(cache, ["a", "b"], "label")
    scripted, states, heads = iter([0.5, 0.9, 0.3, 0.2, 0.1, 0.0]), [], []
    real_create = train_module.create_head

    def create(*args):
        heads.append(real_create(*args))
        return heads[-1]

    def fake_score(metrics, metric):
        states.append(snapshot(heads[0]))
        return next(scripted)

    monkeypatch.setattr(train_module, "create_head", create)
    monkeypatch.setattr(train_module, "score", fake_score)
    result = train(HEAD, TrainConfig(epochs=10, batch_size=16, lr=1e-2, patience=3), data,
                   Inputs(prepare(data, fit_stats(data), "drop")))
    assert result.best_epoch == 2
    assert len(result.history) == 5  # epochs 3, 4, 5 without improvement, patience 3
    final = result.head.state_dict()
    for key, value in states[1].items():
        assert torch.equal(final[key], value), key
    assert any(not torch.equal(final[k], v) for k, v in states[-1].items()), "got the last epoch's weights"


def test_the_returned_head_scores_what_the_best_epoch_scored(cache):
    data = load_data(cache, ["a", "b"], "label")
    inputs = Inputs(prepare(data, fit_stats(data), "drop"))
    result = train(HEAD, TrainConfig(epochs=8, batch_size=16, lr=1e-2, patience=8, metric="loss"), data, inputs)
    rows = data.rows("dev")
    with deterministic(0):
        metrics = split_metrics(predict(result.head, inputs, rows), data.y[rows])[0]
    best = result.history[result.best_epoch - 1]
    assert metrics["loss"] == best["dev_loss"] == min(h["dev_loss"] for h in result.history)


def test_standardisation_statistics_see_train_rows_only(cache):
    data = load_data(cache, ["a", "s"], "label")
    before = fit_stats(data)
    for f in ("a", "s"):  # wreck every dev and test row: the statistics must not move
        other = np.flatnonzero(data.split != "train")
        data.matrices[f] = data.matrices[f].copy() if not hasattr(data.matrices[f], "tolil") else data.matrices[f].tolil()
        data.matrices[f][other] = 1e6
        data.matrices[f] = data.matrices[f].tocsr() if hasattr(data.matrices[f], "tocsr") else data.matrices[f]
    data.memo.clear()
    after = fit_stats(data)
    for f in ("a", "s"):
        for key in ("mean", "scale"):
            np.testing.assert_array_equal(before[f][key], after[f][key])
    train_rows = data.matrices["a"][data.rows("train")]
    np.testing.assert_allclose(before["a"]["mean"], train_rows.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(before["a"]["scale"], train_rows.std(axis=0), rtol=1e-5)
    assert not before["s"]["mean"].any()  # sparse: scaled, never centred (stays sparse)


def test_tfidf_is_fitted_on_train_texts_only(tmp_path):
    """TF-IDF statistics (vocabulary, idf) come from train rows: changing dev/test texts changes neither."""
    from feat.cache import FeatureCache
    from feat.extract.runner import ExtractConfig, extract

    frame = pd.DataFrame({"id": [f"r{i}" for i in range(30)],
                          "text": [f"common words item {i % 5}" for i in range(30)],
                          "split": ["train"] * 20 + ["dev"] * 5 + ["test"] * 5, "label": ["x", "y"] * 15})
    vocab = []
    for variant in ("a", "b"):
        if variant == "b":
            frame.loc[frame["split"] != "train", "text"] = "zebra quokka axolotl narwhal"
        frame.to_csv(tmp_path / f"{variant}.csv", index=False)
        extract(ExtractConfig(data=tmp_path / f"{variant}.csv", cache=tmp_path / variant, encoders=["tfidf"]))
        state = FeatureCache(tmp_path / variant).read("tfidf").state
        vocab.append((list(state["vocabulary"]), state["idf"].tolist()))
    assert vocab[0] == vocab[1]
    assert "zebra" not in vocab[1][0]


def test_same_seed_same_metrics_bit_for_bit(cache, tmp_path):
    runs = []
    for i in range(2):
        run_fuse(FuseSpec(cache, ["a", "b", "s"], "label", tmp_path / f"r{i}", HeadConfig(strategy="gated", common_dim=16),
                          FAST, curve=False))
        metrics = json.loads((tmp_path / f"r{i}" / "metrics.json").read_text())
        metrics.pop("train_seconds")
        runs.append((metrics, (tmp_path / f"r{i}" / "model.safetensors").read_bytes(),
                     (tmp_path / f"r{i}" / "predictions_test.csv").read_text()))
    assert runs[0] == runs[1]
    other = run_fuse(FuseSpec(cache, ["a", "b", "s"], "label", tmp_path / "r2", HeadConfig(strategy="gated", common_dim=16),
                              TrainConfig(**{**FAST.__dict__, "seed": 1}), curve=False))
    assert (tmp_path / "r2" / "model.safetensors").read_bytes() != runs[0][1]
    assert "modality_weights" in other.metrics["test"]


def test_invalid_rows_drop_or_zero(tmp_path):
    cache = write_toy_cache(tmp_path / "c", invalid={"b": [0, 1, 3, 4]})  # splits: 0,1 train; 3 dev; 4 test
    dropped = load_data(cache, ["a", "b"], "label", "drop")
    assert dropped.report["invalid_dropped"] == {"train": 2, "dev": 1, "test": 1}
    assert "i0000" not in set(dropped.ids)
    zeroed = load_data(cache, ["a", "b"], "label", "zero")
    assert zeroed.report["invalid_zeroed"]["b"] == {"train": 2, "dev": 1, "test": 1}
    assert zeroed.report["invalid_zeroed"]["a"] == {"train": 0, "dev": 0, "test": 0}
    a, b = prepare(zeroed, fit_stats(zeroed), "zero")
    assert a.shape[1] == 8 + 1 and b.shape[1] == 6 + 1  # one missing-indicator column per input
    assert (b[[0, 1, 3, 4], :-1] == 0).all() and (b[[0, 1, 3, 4], -1] == 1).all() and b[2, -1] == 0
    # statistics ignore the invalid rows' (meaningless) values
    assert fit_stats(zeroed)["b"]["mean"].tolist() == pytest.approx(
        zeroed.matrices["b"][[i for i in zeroed.rows("train") if i not in (0, 1)]].mean(axis=0).tolist(), abs=1e-5)
    result = run_fuse(FuseSpec(cache, ["a", "b"], "label", tmp_path / "run", HEAD,
                               TrainConfig(**{**FAST.__dict__, "missing": "zero"}), curve=False))
    assert result.metrics["test"]["n"] == 32
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["input_dims"] == [9, 7] and config["data"]["invalid_zeroed"]["b"]["test"] == 1


def test_unlabelled_rows_dropped_and_unseen_labels_refused(tmp_path):
    labels = ["yes", "no"] * 80
    labels[0] = ""  # a train row without a label
    labels[3] = " "  # a dev row without a label
    data = load_data(write_toy_cache(tmp_path / "c1", labels=labels), ["a"], "label")
    assert data.report["unlabelled_dropped"] == {"train": 1, "dev": 1, "test": 0}
    assert data.classes == ["no", "yes"]
    labels[4] = "maybe"  # a test row with a label train never saw
    with pytest.raises(InputError, match="maybe.*never occur in train"):
        load_data(write_toy_cache(tmp_path / "c2", labels=labels), ["a"], "label")
    with pytest.raises(InputError, match="label column 'nope'"):
        load_data(tmp_path / "c1", ["a"], "nope")
    with pytest.raises(InputError, match="not in cache"):
        load_data(tmp_path / "c1", ["zzz"], "label")


def test_a_continuous_or_identifier_label_is_refused(tmp_path):
    cache = write_toy_cache(tmp_path / "c", labels=[f"{0.1 * i:.3f}" for i in range(160)])
    with pytest.raises(InputError, match="looks continuous or like an identifier"):
        load_data(cache, ["a"], "label")
    frame, _ = toy_features(160, 0)
    rank_in_split = frame.groupby("split").cumcount()
    many_but_categorical = [f"class{r % 25}" for r in rank_in_split]  # 25 classes, ~4 train rows each: allowed
    assert len(load_data(write_toy_cache(tmp_path / "c2", labels=many_but_categorical), ["a"], "label").classes) == 25


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(weights.numpy(), [4 / (2 * 3), 4 / (2 * 1)])


def test_metric_definitions_by_hand():
    """Two classes: f1/precision/recall of the positive (second sorted) class; three: macro."""
    y = np.array([0, 0, 1, 1, 1])
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])  # preds 0 1 1 1 0
    m = compute_metrics(y, prob, loss=0.5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs ordered right
    assert m["n"] == 5
    three = compute_metrics(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 1]], loss=0.0)
    assert three["f1"] == three["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
