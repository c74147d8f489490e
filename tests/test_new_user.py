"""What a new user stumbles on (issue 16): column options that name nothing, run folders and ablation folders
wherever a run is taken, one convention for list options, progress and unwrapped lines in logs."""

from __future__ import annotations

import os

import pytest

from helpers import cli, register_test_encoders, write_csv

RECORDS = [{"id": f"r{i}", "text": f"text number {i}", "caption": f"caption {i}", "label": "ab"[i % 2],
            "split": ("train", "dev", "test")[i % 3]} for i in range(12)]


# ----- 1. a column option that names no column is an error, never replaced by a default -----------------
@pytest.mark.parametrize("option", ["--text-col", "--image-col", "--id-col", "--split-col"])
def test_extract_refuses_a_column_option_naming_no_column(tmp_path, monkeypatch, option):
    register_test_encoders(monkeypatch)
    data = write_csv(tmp_path / "d.csv", [{**r, "image": "x.png"} for r in RECORDS])
    result = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", option, "nosuch", expect=2)
    assert "column 'nosuch'" in result.output and option in result.output
    assert not (tmp_path / "c").exists()


def test_extract_encodes_the_named_text_column_not_a_column_called_text(tmp_path, monkeypatch):
    from feat.cache import FeatureCache

    register_test_encoders(monkeypatch)
    data = write_csv(tmp_path / "d.csv", RECORDS)
    cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", "--text-col", "caption")
    items = FeatureCache(tmp_path / "c").read_items()
    assert items["text"].tolist() == [r["caption"] for r in RECORDS]


def test_study_and_predict_refuse_a_column_option_naming_no_column(tmp_path):
    data = write_csv(tmp_path / "d.csv", RECORDS)
    result = cli("study", data, "--text-col", "nosuch", "--out", tmp_path / "s", expect=2)
    assert "no column 'nosuch' (--text-col" in result.output and not (tmp_path / "s").exists()


# ----- 4. A/best and an ablation folder wherever a run folder is taken ----------------------------------
SMALL = ["--epochs", "2", "--batch-size", "32", "--common-dim", "8", "--no-curves", "--workers", "1"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    from feat.fuse.toy import write_toy_cache

    root = tmp_path_factory.mktemp("abl")
    cache = write_toy_cache(root / "cache")
    # 5. `--strategy` (singular) is accepted by ablate, as `--strategies` is by fuse.
    cli("ablate", "--cache", cache, "--features", "a,b", "--strategy", "concat", "--seeds", "1", "--out",
        root / "A", *SMALL)
    return root / "A", cache


def test_evaluate_takes_an_ablation_folder_and_its_best_file_or_link(ablation, tmp_path):
    import shutil

    from feat.fuse import artifacts as art

    folder, _ = ablation
    best = art.best_run(folder)
    for run in (folder, folder / "best"):
        result = cli("evaluate", run, "--split", "test")
        assert "identical to" in result.output and best.split("/")[-1] in " ".join(result.output.split())
    linked = tmp_path / "A"
    shutil.copytree(folder, linked, symlinks=True)
    art.write_best(linked, best)
    assert (linked / "best").is_symlink() and not os.path.isabs(os.readlink(linked / "best"))
    assert (linked / "best" / "metrics.json").exists() and art.best_run(linked) == best
    assert "identical to" in cli("evaluate", linked / "best").output


def test_a_folder_that_is_no_run_is_still_refused(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "results.csv").write_text("run\n")
    assert "has no 'best' yet" in cli("evaluate", tmp_path / "A", expect=2).output


# ----- 5. one convention for list options, the same aliases and defaults --------------------------------
def test_list_options_accept_repeats_and_commas_alike():
    from feat.cli import _list

    assert _list(["a,b", " c ", "a", ""]) == ["a", "b", "c"] and _list(None) == []


def test_fuse_features_repeated_equal_comma_separated_and_strategies_is_an_alias(ablation, tmp_path):
    import json

    _, cache = ablation
    small = ["--epochs", "1", "--common-dim", "8", "--no-standardize"]
    cli("fuse", "--cache", cache, "--features", "a", "--features", "b", "--strategies", "concat", "--out",
        tmp_path / "r1", *small)
    cli("fuse", "--cache", cache, "--features", "a,b", "--strategy", "concat", "--out", tmp_path / "r2", *small)
    configs = [json.loads((tmp_path / r / "config.json").read_text()) for r in ("r1", "r2")]
    assert configs[0]["features"] == configs[1]["features"] == ["a", "b"]
    assert configs[0]["head"]["strategy"] == "concat"
    result = cli("fuse", "--cache", cache, "--features", "a,b", "--strategies", "concat,gated", "--out",
                 tmp_path / "r3", expect=2)
    assert "one strategy" in result.output


def test_evaluate_accepts_val_for_dev(ablation):
    folder, _ = ablation
    assert "identical to" in cli("evaluate", folder, "--split", "val").output
    assert cli("evaluate", folder, "--split", "valid").exit_code == 0


def test_study_label_defaults_to_label_and_takes_repeated_encoders(tmp_path):
    data = write_csv(tmp_path / "d.csv", [{k: v for k, v in r.items() if k != "label"} for r in RECORDS])
    result = cli("study", data, "--out", tmp_path / "s", expect=2)
    assert "label column 'label'" in result.output
    result = cli("study", write_csv(tmp_path / "e.csv", RECORDS), "-e", "minilm", "--encoder", "nosuch,effnet",
                 "--out", tmp_path / "s", expect=2)
    assert "nosuch" in result.output


def test_study_model_overrides_comma_separated():
    from feat.cli import _model_overrides

    assert _model_overrides(["a=x,b=y", "c=/p/with,comma"]) == {"a": "x", "b": "y", "c": "/p/with,comma"}


# ----- 7. progress in logs, 8. no hard wrap ------------------------------------------------------------
def test_extract_says_progress_in_plain_lines_when_not_on_a_terminal(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    data = write_csv(tmp_path / "d.csv", RECORDS)
    output = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c").output
    lines = output.splitlines()
    assert "probe-text: 0/12 rows (0%), loading model, elapsed 0:00" in lines
    assert any(line.startswith("probe-text: 12/12 rows (100%), ") and line.endswith(", done") and " rows/s, "
               in line for line in lines)


def test_plain_progress_lines_come_every_few_seconds_with_rate_and_eta(capsys, monkeypatch):
    import time

    import feat.console as feat_console

    monkeypatch.setattr(feat_console, "PLAIN_EVERY", 0.01)
    seen = ""
    with feat_console.progress_bar("runs", 4, unit="runs", done=1) as advance:
        advance(1)
        deadline = time.monotonic() + 60  # a bound on a stuck ticker, not a timing assertion
        while "ETA" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
            seen += capsys.readouterr().err
        advance(2)
    lines = (seen + capsys.readouterr().err).splitlines()
    assert lines[0] == "runs: 1/4 runs (25%), elapsed 0:00"
    ticks = [line for line in lines[1:] if "ETA" in line]
    assert ticks and all(line.startswith("runs: 2/4 runs (50%), ") and " runs/s, " in line for line in ticks)
    assert feat_console._rate(1 / 70) == "0.014" and feat_console._rate(12.345) == "12.3"
    assert lines[-1].startswith("runs: 4/4 runs (100%), ") and lines[-1].endswith(", done")


def test_log_lines_are_never_wrapped_at_80_columns(capsys):
    from feat.console import console

    path = "/a/very/long/" + "folder/" * 20 + "cache"
    console.print(f"features cached in {path} (12.3 s); inspect them with `feat info {path}`")
    assert capsys.readouterr().err == f"features cached in {path} (12.3 s); inspect them with `feat info {path}`\n"


# ----- 6. one name per TF-IDF view in every command ----------------------------------------------------
def test_extract_names_the_dense_tfidf_view_as_study_does(tmp_path):
    from feat.cache import FeatureCache

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    data = write_csv(tmp_path / "d.csv", [{**r, "text": " ".join(words[i:] + words[:i][::2])}
                                          for i, r in enumerate(RECORDS)])
    cli("extract", data, "-e", "tfidf", "-c", tmp_path / "c")
    cli("extract", data, "-e", "tfidf", "--svd-dim", "2", "-c", tmp_path / "c")
    assert FeatureCache(tmp_path / "c").feature_names() == ["tfidf", "tfidf-svd2"]
    assert FeatureCache(tmp_path / "c").read("tfidf-svd2").rows.matrix.shape == (12, 2)


# ----- 9. learning_curve.png and study.png: figures a person would paste into a paper -------------------
def test_learning_curve_is_titled_labelled_and_keeps_legends_off_the_curves(tmp_path):
    import numpy as np
    import pandas as pd
    from PIL import Image

    from feat.fuse.artifacts import chance_level, curve_figure, learning_curve

    history = pd.DataFrame({"epoch": [1], "train_loss": [0.61], "dev_loss": [0.66], "dev_f1": [0.48]})
    chance = chance_level("f1", np.array([0, 0, 0, 1]), 2)
    assert chance == pytest.approx(0.25 / 0.75)  # precision 1/4, recall 1/2
    fig = curve_figure(history, "f1", 1, "mvsa, label 'label': logreg on minilm, seed 0", ["neg", "pos"], chance)
    loss, score = fig.axes
    assert fig._suptitle.get_text() == "mvsa, label 'label': logreg on minilm, seed 0"
    assert score.get_ylabel() == "dev F1 of class 'pos'" and loss.get_ylabel() == "cross-entropy loss"
    assert loss.get_xlabel() == score.get_xlabel() == "epoch"
    assert score.get_ylim() == (0, 1.02) and loss.get_ylim() == (0, pytest.approx(0.726)), "points inside"
    assert score.get_xlim() == (0.5, 1.5), "one fit: a unit-wide axis, not a 0.96-1.04 zoom"
    assert any(line.get_label().startswith("chance (0.333)") for line in score.get_lines())
    fig.canvas.draw()
    for ax in (loss, score):
        assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent()), "legend over the plot"
    learning_curve(tmp_path / "c.png", history, "f1", 1, "t", ["neg", "pos"])
    assert Image.open(tmp_path / "c.png").size >= (900, 400)


def test_study_figure_names_dataset_label_metric_and_class_and_draws_no_empty_group(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd

    from feat.study import figure
    from feat.study.answers import Missing

    table = pd.DataFrame({"group": ["text-only", "image-only", "fusion of towers"], "features": ["t", "i", "t+i"],
                          "strategy": ["single", "single", "concat"], "runs": [3, 3, 3],
                          "test_f1_mean": [0.55, 0.5, 0.6], "test_ci_low": [0.5, 0.45, 0.55],
                          "test_ci_high": [0.6, 0.55, 0.65]})
    missing = {"joint encoder": Missing([], "no joint encoder or dual-encoder pair in this study")}
    drawn = {}
    original = plt.close
    plt.close = lambda fig: drawn.setdefault("fig", fig)
    try:
        figure.draw(tmp_path / "s.png", table, "f1", "f1", "mvsa/data.csv, label 'label'", missing,
                    ["negative", "positive"], 0.4)
    finally:
        plt.close = original
    ax = drawn["fig"].axes[0]
    assert ax.get_title(loc="left") == ("Unimodal vs multimodal: mvsa/data.csv, label 'label', test F1 of class "
                                        "'positive'")
    assert ax.get_xlim() == (0, 1) and ax.get_xlabel().startswith("test F1 of class 'positive' (mean over seeds, 3 runs")
    labels = [t.get_text() for t in ax.texts]
    assert "joint encoder" not in labels and {"text-only", "image-only", "fusion of towers"} <= set(labels)
    assert any(line.get_label() == "chance (0.400)" for line in ax.get_lines())
    assert "Not drawn, no configuration: joint encoder" in drawn["fig"].texts[0].get_text()


# ----- 10. the demo encodes only what it uses ------------------------------------------------------------
def test_the_demo_extracts_only_the_encoders_its_ablation_uses(tmp_path, monkeypatch):
    import feat.extract.runner as runner
    from feat import demo

    class Stop(Exception):
        pass

    def extract(config, prepared=None):
        seen["encoders"] = config.encoders
        raise Stop

    seen = {}
    monkeypatch.setattr(runner, "extract", extract)
    with pytest.raises(Stop):
        demo.run_demo(tmp_path, rows=24)
    assert seen["encoders"] == [demo.TEXT, demo.IMAGE] == ["minilm", "effnet"]
