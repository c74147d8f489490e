"""What a new user stumbles on (issue 16): column options that name nothing, run folders and ablation folders
wherever a run is taken, one convention for list options, progress and unwrapped lines in logs."""

from __future__ import annotations

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
