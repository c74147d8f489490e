"""`feat fuse`, `feat evaluate` and `feat ablate` through typer's CliRunner on a tiny toy cache."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from feat.cli import app
from feat.fuse.toy import write_toy_cache

runner = CliRunner()
SMALL = ["--epochs", "4", "--batch-size", "32", "--common-dim", "16", "--lr", "3e-3"]
RUN_FILES = {"config.json", "model.safetensors", "metrics.json", "history.csv", "predictions_dev.csv",
             "predictions_test.csv", "learning_curve.png"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_toy_cache(tmp_path_factory.mktemp("cli") / "cache")


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_fuse_writes_a_complete_run_and_evaluate_reproduces_it(cache, tmp_path):
    out = tmp_path / "run"
    result = invoke("fuse", "--cache", cache, "--features", "a,b", "--strategy", "weighted_mean", "--label", "label",
                    "--seed", "0", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == RUN_FILES
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"dev", "test", "best_epoch", "seed", "train_seconds", "metric", "positive_class"}
    assert metrics["metric"] == "auroc" and metrics["positive_class"] == "yes"
    assert 0 <= metrics["dev"]["threshold"] <= 1 and "f1_tuned" in metrics["test"]
    for split in ("dev", "test"):
        assert {"accuracy", "f1", "macro_f1", "weighted_f1", "precision", "recall", "auroc", "confusion_matrix",
                "n"} <= set(metrics[split])
        assert set(metrics[split]["modality_weights"]) == {"a", "b"}
    predictions = pd.read_csv(out / "predictions_test.csv")
    assert list(predictions.columns) == ["id", "true", "pred", "p_no", "p_yes"]
    assert len(predictions) == metrics["test"]["n"]
    history = pd.read_csv(out / "history.csv")
    assert {"epoch", "train_loss", "dev_auroc"} <= set(history.columns)
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["no", "yes"] and config["metric"] == "auroc" and config["positive_class"] == "yes"
    assert "F1 of class 'yes'" in result.output and "AUROC" in result.output
    assert set(config["fingerprints"]) == {"a", "b"}
    assert config["head"]["strategy"] == "weighted_mean" and config["head"]["common_dim"] == 16
    assert (config["train"]["epochs"], config["train"]["batch_size"], config["train"]["lr"]) == (4, 32, 3e-3)

    for split in ("dev", "test"):
        result = invoke("evaluate", out, "--split", split)
        assert result.exit_code == 0, result.output
        assert "identical" in result.output
        assert json.loads(result.stdout) == metrics[split]


def test_evaluate_refuses_a_cache_with_other_features(cache, tmp_path):
    out = tmp_path / "run"
    assert invoke("fuse", "--cache", cache, "--features", "a", "--strategy", "single", "--out", out,
                  *SMALL).exit_code == 0
    other = write_toy_cache(tmp_path / "other", seed=1)  # same ids and layout, other vectors and fingerprints
    result = invoke("evaluate", out, "--split", "dev", "--cache", other)
    assert result.exit_code == 2
    assert "fingerprint" in result.output


@pytest.mark.parametrize("args,message", [
    (["--features", "a", "--strategy", "concat"], "at least 2"),
    (["--features", "a,b", "--strategy", "nope"], "unknown strategy"),
    (["--features", "a,b", "--label", "nope"], "label column 'nope'"),
    (["--features", "a,b", "--missing", "maybe"], "--missing"),
    (["--features", "a,b", "--metric", "bleu"], "--metric"),
])
def test_fuse_input_errors_are_one_clear_line(cache, tmp_path, args, message):
    result = invoke("fuse", "--cache", cache, "--out", tmp_path / "r", *args, *SMALL)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_ablate_grid_report_and_resume(cache, tmp_path):
    out = tmp_path / "abl"
    args = ["ablate", "--cache", cache, "--features", "a", "--features", "b", "--features", "a,b", "--strategies",
            "mean,weighted_mean,logreg", "--seeds", "2", "--label", "label", "--out", out, "--workers", "1",
            "--no-curves", *SMALL]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    results = pd.read_csv(out / "results.csv")
    # mean, weighted_mean, logreg on a+b; single and logreg on a and on b: 7 configurations x 2 seeds
    assert len(results) == 14
    assert set(zip(results["features"], results["strategy"])) == {
        ("a+b", "mean"), ("a+b", "weighted_mean"), ("a+b", "logreg"), ("a", "single"), ("a", "logreg"),
        ("b", "single"), ("b", "logreg")}
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["rank"]) == list(range(1, 8))
    val = summary["val_auroc_mean"].to_numpy()
    assert (val[:-1] >= val[1:]).all(), "ranked by the validation score"
    assert summary["p_vs_best_text_only"].isna().sum() == 1  # the best text-only config is the reference
    for name in ("summary.md", "answer.json", "importance.csv", "robustness.csv", "bars.png", "heatmap.png",
                 "modality_weights.png", "importance.png", "robustness.png"):
        assert (out / name).exists(), name
    assert (out / "best").is_symlink() and (out / "best" / "metrics.json").exists()
    assert "| rank |" in result.stdout and "Does the image help?" in result.stdout

    # a killed ablation: one run lost its metrics.json -> only that run is redone
    lost = out / results["run"][3]
    (lost / "metrics.json").unlink()
    kept = out / results["run"][0] / "metrics.json"
    stamp = kept.stat().st_mtime_ns
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "13 already done" in result.output.replace("\n", " ")
    assert (lost / "metrics.json").exists() and kept.stat().st_mtime_ns == stamp
    assert pd.read_csv(out / "results.csv").drop(columns="seconds").equals(results.drop(columns="seconds"))


def test_ablate_uses_worker_processes_with_the_same_results(cache, tmp_path):
    """Two spawned workers give the same numbers as one in-process run (single-threaded, seeded)."""
    common = ["--cache", cache, "--features", "a,b", "--strategies", "concat", "--seeds", "2", "--no-curves", *SMALL]
    assert invoke("ablate", *common, "--out", tmp_path / "one", "--workers", "1").exit_code == 0
    result = invoke("ablate", *common, "--out", tmp_path / "two", "--workers", "2")
    assert result.exit_code == 0, result.output
    one, two = (pd.read_csv(tmp_path / d / "results.csv").drop(columns="seconds") for d in ("one", "two"))
    assert one.equals(two)


def test_fuse_precision_bf16_trains_and_evaluates_with_bf16_matmuls(cache, tmp_path):
    """--precision bf16 lets float32 matmuls run in bf16 (torch's "medium" matmul precision) while the head
    trains and while evaluate recomputes it, and puts the setting back afterwards; fp32 is the control."""
    import torch

    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.append(torch.get_float32_matmul_precision()))
    before = torch.get_float32_matmul_precision()
    try:
        for precision in ("bf16", "fp32"):
            seen.clear()
            out = tmp_path / precision
            result = invoke("fuse", "--cache", cache, "--features", "a,b", "--strategy", "concat", "--label",
                            "label", "--precision", precision, "--out", out, *SMALL)
            assert result.exit_code == 0, result.output
            assert json.loads((out / "config.json").read_text())["train"]["precision"] == precision
            assert set(seen) == {"medium" if precision == "bf16" else "highest"}, set(seen)
            seen.clear()
            result = invoke("evaluate", out, "--split", "test")
            assert result.exit_code == 0 and "identical" in result.output, result.output
            assert set(seen) == {"medium" if precision == "bf16" else "highest"}, set(seen)
            assert torch.get_float32_matmul_precision() == before
    finally:
        handle.remove()


def test_test_labels_reach_neither_training_nor_model_selection(tmp_path):
    """Two caches that differ only in every test label (flipped): the same head, history and dev metrics, and
    test accuracies that add up to 1 (each test row is scored once, against its own label)."""
    from feat.fuse.toy import toy_features

    frame, _ = toy_features()
    flipped = [{"yes": "no", "no": "yes"}[label] if split == "test" else label
               for label, split in zip(frame["label"], frame["split"])]
    runs = {}
    for name, labels in (("true", None), ("flipped", flipped)):
        cache = write_toy_cache(tmp_path / f"cache-{name}", labels=labels)
        runs[name] = tmp_path / name
        result = invoke("fuse", "--cache", cache, "--features", "a,b", "--strategy", "concat", "--label", "label",
                        "--seed", "0", "--out", runs[name], *SMALL)
        assert result.exit_code == 0, result.output
    true, other = runs["true"], runs["flipped"]
    import torch
    from safetensors.torch import load_file

    weights = [load_file(str(run / "model.safetensors")) for run in (true, other)]  # the files' metadata binds
    assert weights[0].keys() == weights[1].keys()  # each to its own config.json, whose items digest differs
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    history = [pd.read_csv(run / "history.csv") for run in (true, other)]
    timing = [c for c in history[0].columns if "second" in c]
    assert history[0].drop(columns=timing).equals(history[1].drop(columns=timing))
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (true, other)]
    assert metrics[0]["dev"] == metrics[1]["dev"] and metrics[0]["best_epoch"] == metrics[1]["best_epoch"]
    assert metrics[0]["test"]["accuracy"] + metrics[1]["test"]["accuracy"] == pytest.approx(1.0)
