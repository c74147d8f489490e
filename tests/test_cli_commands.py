"""`feat encoders` and `feat demo`: commands no other test calls."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest

from feat.extract.registry import ENCODERS
from helpers import cli, register_test_encoders


def test_encoders_lists_every_registered_encoder_and_each_resolves():
    lines = cli("encoders").output.splitlines()
    listed = dict(line.split(None, 1) for line in lines)
    assert listed.keys() == ENCODERS.keys() and {"minilm", "effnet", "tfidf"} <= listed.keys()
    for name, target in listed.items():
        module, attribute = target.strip().split(":")
        assert hasattr(importlib.import_module(module), attribute), f"{name}: {target} does not resolve"


def test_demo_runs_end_to_end_on_a_small_dataset(tmp_path, monkeypatch):
    """The demo's whole path (synthetic data, extract, ablation over every strategy, the report and the
    fusion-vs-unimodal verdict) with the tiny test encoders in place of MiniLM and EfficientNet and one
    seed; `test_demo_with_the_real_encoders` (slow) runs it as shipped."""
    import feat.demo as demo

    register_test_encoders(monkeypatch)
    monkeypatch.setattr(demo, "TEXT", "probe-text")
    monkeypatch.setattr(demo, "IMAGE", "tiny-image")
    real = demo.run_demo
    monkeypatch.setattr(demo, "run_demo", lambda out, rows: real(out, rows, seeds=1, workers=1))
    output = " ".join(cli("demo", "--out", tmp_path / "demo", "--rows", "40").output.split())
    assert "wrote a synthetic dataset of 40 image + caption items" in output
    assert "vs text-only probe-text" in output and "vs image-only tiny-image" in output
    summary = pd.read_csv(tmp_path / "demo" / "ablation" / "summary.csv")
    assert {"probe-text", "tiny-image", "probe-text+tiny-image"} <= set(summary["features"])
    best = tmp_path / "demo" / "ablation" / "best"  # a symlink to the best run, or a file naming it
    run = best if best.is_dir() else best.parent / best.read_text().strip()
    assert (run / "metrics.json").exists()
    # a second demo reuses the data and every cached feature
    again = " ".join(cli("demo", "--out", tmp_path / "demo", "--rows", "40").output.split())
    assert "wrote a synthetic dataset" not in again and again.count("no forward pass") == 2, again


@pytest.mark.slow
def test_demo_with_the_real_encoders(tmp_path):
    output = " ".join(cli("demo", "--out", tmp_path / "demo", "--rows", "120").output.split())
    assert "vs text-only minilm" in output and "vs image-only effnet" in output
    assert (tmp_path / "demo" / "ablation" / "summary.md").exists()
