"""`feat predict` on a tiny fuse run (DeBERTa, ALIGN, TF-IDF) and on its fine-tuned version, through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from feat.cache import FeatureCache
from helpers import cli
from stage3 import QUICK, build_run, one_thread, probabilities  # noqa: F401 (one_thread: autouse fixture)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model, one_thread):
    return build_run(tmp_path_factory.mktemp("predict"), tiny_model, encoders=("deberta", "align", "tfidf"))


@pytest.fixture(scope="module")
def tuned(tiny):
    out = tiny.root / "ft"
    cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--max-steps", "4", *QUICK)
    return out


def classes(run) -> list[str]:
    return json.loads((run / "config.json").read_text())["classes"]


def unlabelled_copy(tiny, path, prefix: str = ""):
    """The table as new data arrives: no split, no label columns (images stay where they are). A `prefix` on
    the ids makes them rows the training cache does not hold, so that they go through the encoders."""
    frame = pd.read_csv(tiny.data, dtype=str, keep_default_na=False)
    frame = frame.assign(id=prefix + frame["id"])
    frame[["id", "text", "image"]].to_csv(path, index=False)
    return path, frame


def without_prefix(predicted: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return predicted.assign(id=predicted["id"].str.removeprefix(prefix))


def assert_same_predictions(predicted: pd.DataFrame, saved_csv, names: list[str], atol: float) -> None:
    saved = probabilities(saved_csv, names)
    mine = predicted.set_index("id").loc[saved.index]
    np.testing.assert_allclose(mine[[f"p_{c}" for c in names]].to_numpy(), saved.to_numpy(), atol=atol, rtol=0)
    expected = pd.read_csv(saved_csv, dtype={"id": str}, keep_default_na=False).set_index("id")["pred"]
    assert (mine["pred"] == expected.loc[saved.index]).all()


def test_a_fuse_run_labels_new_rows_as_it_labelled_dev_and_test(tiny, tmp_path):
    data, frame = unlabelled_copy(tiny, tmp_path / "new.csv", prefix="new-")
    out = tmp_path / "preds.csv"
    first = cli("predict", tiny.run, data, "--out", out, "--image-root", tiny.data.parent)
    output = " ".join(first.output.split())
    assert "48 of 48 rows predicted" in output and output.count("48 encoded in") == 3
    predicted = pd.read_csv(out, dtype={"id": str, "pred": str, "reason": str}, keep_default_na=False)
    names = classes(tiny.run)
    assert list(predicted.columns) == ["id", "pred", *[f"p_{c}" for c in names], "reason"]
    assert predicted["id"].tolist() == frame["id"].tolist(), "one line per input row, in order"
    assert (predicted["reason"] == "").all()
    for split in ("dev", "test"):
        assert_same_predictions(without_prefix(predicted, "new-"), tiny.run / f"predictions_{split}.csv", names,
                                atol=1e-6)
    assert (tiny.run / "predict-cache" / "features").is_dir()

    second = cli("predict", tiny.run, data, "--out", tmp_path / "again.csv", "--image-root", tiny.data.parent)
    assert " ".join(second.output.split()).count("no forward pass, all rows reused from cache") == 3
    assert pd.read_csv(tmp_path / "again.csv").equals(pd.read_csv(out))


def test_a_finetuned_run_labels_new_rows_with_its_own_weights(tiny, tuned, tmp_path):
    data, _ = unlabelled_copy(tiny, tmp_path / "new.csv")
    out = tmp_path / "preds.csv"
    cli("predict", tuned, data, "--out", out, "--image-root", tiny.data.parent)
    predicted = pd.read_csv(out, dtype={"id": str, "pred": str}, keep_default_na=False)
    names = classes(tuned)
    for split in ("dev", "test"):
        assert_same_predictions(predicted, tuned / f"predictions_{split}.csv", names, atol=1e-5)
    fuse = pd.read_csv(tiny.run / "predictions_dev.csv", dtype={"id": str}).set_index("id")
    mine = predicted.set_index("id").loc[fuse.index]
    assert np.abs(mine[f"p_{names[0]}"].to_numpy() - fuse[f"p_{names[0]}"].to_numpy()).max() > 1e-4, \
        "the fine-tuned weights were used, not the checkpoint's"
    stored = FeatureCache(tuned / "predict-cache").fingerprint("deberta")
    assert stored["weights"] == json.loads((tuned / "config.json").read_text())["fingerprints"]["deberta"][
        "fingerprint"]["weights"]


def test_tfidf_transforms_new_rows_with_the_runs_fit(tiny, tmp_path):
    known = pd.read_csv(tiny.data, dtype=str, keep_default_na=False).iloc[[5]]
    new = pd.DataFrame({"id": ["n1", "n2", "k"], "text": ["never seen words only", "what a wonderful day zzz",
                                                          known["text"].iloc[0]],
                        "image": [known["image"].iloc[0]] * 3})
    new.to_csv(tmp_path / "new.csv", index=False)
    cli("predict", tiny.run, tmp_path / "new.csv", "--out", tmp_path / "p.csv", "--image-root", tiny.data.parent,
        "--cache", tmp_path / "c")
    fitted = FeatureCache(tiny.cache).read("tfidf")
    mine = FeatureCache(tmp_path / "c").read("tfidf")
    assert list(mine.state["vocabulary"]) == list(fitted.state["vocabulary"]), "the stored fit, not a new one"
    np.testing.assert_array_equal(mine.state["idf"], fitted.state["idf"])
    assert mine.rows.matrix[0].nnz == 0, "words outside the train vocabulary have no column"
    row = list(fitted.rows.ids).index(known["id"].iloc[0])
    np.testing.assert_array_equal(mine.rows.matrix[2].toarray(), fitted.rows.matrix[row].toarray())


def test_bad_images_are_reported_and_get_no_prediction(tiny, tmp_path):
    frame = pd.read_csv(tiny.data, dtype=str, keep_default_na=False).iloc[:4][["id", "text", "image"]].copy()
    frame.loc[1, "image"] = "images/missing.png"
    frame.loc[2, "image"] = ""
    frame.to_csv(tmp_path / "new.csv", index=False)
    result = cli("predict", tiny.run, tmp_path / "new.csv", "--out", tmp_path / "p.csv", "--image-root",
                 tiny.data.parent, "--cache", tmp_path / "c")
    output = " ".join(result.output.split())
    assert "2 of 4 rows predicted" in output and f"no prediction for {frame['id'][1]}" in output
    predicted = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False)
    assert len(predicted) == 4
    assert predicted["pred"].tolist()[1:3] == ["", ""] and "" not in predicted["pred"].tolist()[::3]
    assert "align: image file not found" in predicted["reason"][1] and "align: no image path" in predicted["reason"][2]
    assert (FeatureCache(tmp_path / "c").root / "bad_rows.csv").exists()
    failed = cli("predict", tiny.run, tmp_path / "new.csv", "--out", tmp_path / "q.csv", "--image-root",
                 tiny.data.parent, "--cache", tmp_path / "c2", "--on-bad-image", "fail", expect=2)
    assert frame["id"][1] in failed.output and not (tmp_path / "q.csv").exists()


def test_changed_encoder_weights_are_refused(tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    small = build_run(tmp_path, tiny_model, encoders=("deberta",), strategy="single", label="mood", rows=20)
    weights = small.models["deberta"] / "model.safetensors"
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, str(weights), {"format": "pt"})
    result = cli("predict", small.run, small.data, "--out", tmp_path / "p.csv", expect=2)
    output = " ".join(result.output.split())
    assert "feature 'deberta': the encoder now makes other features" in output and "weights" in output
    assert not (tmp_path / "p.csv").exists()


def test_rows_of_the_training_cache_are_reused_not_encoded(tiny, tmp_path):
    """Issue 16: `feat predict R data.csv` on rows the run was trained on re-encoded all of them."""
    data, _ = unlabelled_copy(tiny, tmp_path / "known.csv")
    out = tmp_path / "p.csv"
    result = cli("predict", tiny.run, data, "--out", out, "--image-root", tiny.data.parent, "--cache", tmp_path / "c")
    output = " ".join(result.output.split())
    assert output.count("no forward pass, all rows reused from cache") == 3 and "48 of 48 rows predicted" in output
    predicted = pd.read_csv(out, dtype={"id": str, "pred": str}, keep_default_na=False)
    for split in ("dev", "test"):
        assert_same_predictions(predicted, tiny.run / f"predictions_{split}.csv", classes(tiny.run), atol=1e-6)


def test_a_training_cache_given_as_cache_is_read_never_overwritten(tiny, tmp_path):
    items = FeatureCache(tiny.cache).read_items()
    run = tmp_path / "run"
    shutil.copytree(tiny.run, run)
    result = cli("predict", run, tiny.data, "--out", tmp_path / "p.csv", "--cache", tiny.cache,
                 "--image-root", tiny.data.parent)
    output = " ".join(result.output.split())
    assert output.count("no forward pass, all rows reused from cache") == 3
    assert f"features in {run / 'predict-cache'}" in output
    assert FeatureCache(tiny.cache).read_items().equals(items)


def test_what_is_not_a_run_is_refused(tiny, tmp_path):
    assert "not a feat run folder" in " ".join(cli("predict", tmp_path, tiny.data, expect=2).output.split())
    assert "data not found" in cli("predict", tiny.run, tmp_path / "none.csv", "--out", tmp_path / "p.csv",
                                   expect=2).output


def test_an_ablation_folder_or_its_best_file_stands_for_its_best_run(tiny, tmp_path):
    """Issue 16: `feat predict A data.csv` and `feat predict A/best data.csv` were refused."""
    import os

    from feat.fuse import artifacts as art

    data, _ = unlabelled_copy(tiny, tmp_path / "new.csv")
    ablation = tmp_path / "A"
    ablation.mkdir()
    (ablation / "results.csv").write_text("run\n")
    (ablation / "best").write_text(os.path.relpath(tiny.run, ablation) + "\n")  # the text form
    for run in (ablation, ablation / "best"):
        result = cli("predict", run, data, "--out", tmp_path / "p.csv", "--image-root", tiny.data.parent,
                     "--cache", tmp_path / "c")
        assert "48 of 48 rows predicted" in " ".join(result.output.split())


def test_a_column_option_naming_no_column_is_refused(tiny, tmp_path):
    data, _ = unlabelled_copy(tiny, tmp_path / "new.csv")
    result = cli("predict", tiny.run, data, "--text-col", "caption", "--out", tmp_path / "p.csv", expect=2)
    assert "no column 'caption' (--text-col" in " ".join(result.output.split())


# ----- "Nothing is unpickled", the strict check of fine-tuned weights, --no-standardize, TF-IDF + SVD -------------
def _forbid_unpickling(monkeypatch) -> None:
    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)


def test_a_finetuned_run_predicts_with_nothing_unpickled(tiny, tuned, tmp_path, monkeypatch):
    data, _ = unlabelled_copy(tiny, tmp_path / "new.csv")
    _forbid_unpickling(monkeypatch)
    result = cli("predict", tuned, data, "--out", tmp_path / "p.csv", "--image-root", tiny.data.parent,
                 "--cache", tmp_path / "c")
    assert "48 of 48 rows predicted" in " ".join(result.output.split())
    assert "identical" in cli("evaluate", tiny.run, "--split", "test").output


def test_finetuned_weights_that_do_not_fit_the_checkpoint_are_refused(tiny, tuned, tmp_path):
    """The base checkpoint a fine-tuned run names now builds a network with one layer less: the fine-tuned
    tensors of that layer fit nowhere, and predict refuses rather than run a partly fine-tuned encoder. (A
    fine-tuned tensor removed from the run is refused before this, by the fingerprint of the tuned weights.)"""
    config_path = tiny.models["deberta"] / "config.json"
    original = config_path.read_text()
    config = json.loads(original)
    config["num_hidden_layers"] -= 1
    data, _ = unlabelled_copy(tiny, tmp_path / "new.csv")
    try:
        config_path.write_text(json.dumps(config))
        result = cli("predict", tuned, data, "--out", tmp_path / "p.csv", "--image-root", tiny.data.parent,
                     "--cache", tmp_path / "c", expect=1)
    finally:
        config_path.write_text(original)
    message = " ".join(result.output.split())
    assert "the fine-tuned weights do not fit the checkpoint" in message and "unexpected" in message, message
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture(scope="module")
def unstandardized(tiny):
    run = tiny.root / "raw"
    cli("fuse", "--cache", tiny.cache, "--features", "deberta,align", "--strategy", "concat", "--label", "label",
        "--no-standardize", "--out", run, "--epochs", "3", "--batch-size", "8", "--common-dim", "16", "--lr", "3e-3")
    return run


def test_no_standardize_is_kept_by_evaluate_predict_and_finetune(tiny, unstandardized, tmp_path):
    """A run trained on raw features: evaluate and predict feed it raw features (standardising them would
    change its probabilities), and finetune's step-0 parity holds."""
    run = unstandardized
    assert json.loads((run / "config.json").read_text())["train"]["standardize"] is False
    for split in ("dev", "test"):
        assert "identical" in cli("evaluate", run, "--split", split).output
    data, _ = unlabelled_copy(tiny, tmp_path / "new.csv")
    cli("predict", run, data, "--out", tmp_path / "p.csv", "--image-root", tiny.data.parent, "--cache",
        tmp_path / "c")
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"id": str, "pred": str, "reason": str}, keep_default_na=False)
    for split in ("dev", "test"):
        assert_same_predictions(predicted, run / f"predictions_{split}.csv", classes(run), atol=1e-6)
    cli("finetune", run, "--data", tiny.data, "--out", tmp_path / "ft", "--max-steps", "1", *QUICK)
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["parity"]["max_probability_difference"] <= 1e-3


def test_tfidf_svd_is_fitted_on_train_only_and_reused_by_predict(tmp_path):
    from helpers import text_table

    data = text_table(tmp_path / "d.csv", 60)
    frame = pd.read_csv(data, keep_default_na=False)
    cache = tmp_path / "c"
    cli("extract", data, "-e", "tfidf", "--svd-dim", "6", "--name", "tfidf-svd300", "-c", cache)
    fitted = FeatureCache(cache).read("tfidf-svd300")
    assert fitted.rows.matrix.shape == (60, 6)

    # Other dev and test texts: the fit (vocabulary, idf, SVD) and the train rows' vectors stay the same
    changed = frame.copy()
    held_out = changed["split"] != "train"
    changed.loc[held_out, "text"] = [f"unseen{i} zebra words" for i in range(int(held_out.sum()))]
    changed.to_csv(tmp_path / "changed.csv", index=False)
    cli("extract", tmp_path / "changed.csv", "-e", "tfidf", "--svd-dim", "6", "--name", "tfidf-svd300", "-c",
        tmp_path / "c2")
    other = FeatureCache(tmp_path / "c2").read("tfidf-svd300")
    assert fitted.state.keys() == other.state.keys() and len(fitted.state) >= 3
    for key in fitted.state:
        np.testing.assert_array_equal(np.asarray(fitted.state[key]), np.asarray(other.state[key]), err_msg=key)
    train = (frame["split"] == "train").to_numpy()
    np.testing.assert_array_equal(fitted.rows.matrix[train], other.rows.matrix[train])

    run = tmp_path / "run"
    cli("fuse", "--cache", cache, "--features", "tfidf-svd300", "--strategy", "single", "--label", "label",
        "--out", run, "--epochs", "2", "--batch-size", "16")
    new = frame[["id", "text"]].iloc[::7]
    new.to_csv(tmp_path / "new.csv", index=False)
    cli("predict", run, tmp_path / "new.csv", "--out", tmp_path / "p.csv", "--cache", tmp_path / "pc")
    mine = FeatureCache(tmp_path / "pc").read("tfidf-svd300")
    for key in fitted.state:
        np.testing.assert_array_equal(np.asarray(mine.state[key]), np.asarray(fitted.state[key]), err_msg=key)
    rows = [list(fitted.rows.ids).index(i) for i in new["id"]]
    np.testing.assert_allclose(mine.rows.matrix, fitted.rows.matrix[rows], rtol=0, atol=1e-6)
