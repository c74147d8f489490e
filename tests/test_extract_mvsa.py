"""Slow: the real MiniLM and EfficientNet-Lite0 on real tweets and photos (MVSA-Single in ../shared/data)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from feat.cache import FeatureCache
from feat.extract.runner import ExtractConfig, extract
from helpers import MVSA, cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MVSA.exists(), reason=f"MVSA-Single is not at {MVSA} (see ../shared/data/README.md)"),
]


@pytest.fixture(scope="module")
def mvsa_200(tmp_path_factory):
    """The first 200 rows, their images read in place (image root: the real data folder)."""
    frame = pd.read_csv(MVSA, dtype=str, keep_default_na=False).iloc[:200]
    path = tmp_path_factory.mktemp("mvsa") / "data.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_200_rows_minilm_effnet(mvsa_200, tmp_path):
    path, frame = mvsa_200
    cache = tmp_path / "c"
    result = cli("extract", path, "-e", "minilm", "-e", "effnet", "-e", "tfidf", "-c", cache,
                 "--image-root", MVSA.parent)
    fs = FeatureCache(cache)
    for name, dim in (("minilm", 384), ("effnet", 1280)):
        rows = fs.read(name).rows
        assert list(rows.ids) == frame["id"].tolist(), "one row per CSV row, same ids, same order"
        assert rows.matrix.shape == (200, dim) and rows.matrix.dtype == np.float32
        assert np.isfinite(rows.matrix).all() and rows.valid.all()
        assert np.abs(rows.matrix).sum(axis=1).min() > 0
    np.testing.assert_allclose(np.linalg.norm(fs.read("minilm").rows.matrix, axis=1), 1.0, atol=1e-5)
    assert fs.read_items()["label"].tolist() == frame["label"].tolist()
    assert "200 encoded" in result.output
    again = cli("extract", path, "-e", "minilm", "-e", "effnet", "-c", cache, "--image-root", MVSA.parent)
    assert again.output.count("no forward pass, all rows reused from cache") == 2
    info = cli("info", cache).output
    assert "minilm: 200 rows, 200 valid, dim 384, float32" in info and "effnet: 200 rows, 200 valid, dim 1280" in info


def test_damaged_copy_reports_every_bad_row(tmp_path):
    """Garbage, missing and traversal rows in a copy of real data: all reported by id; `fail` exits non-zero
    naming them; `skip` finishes with exactly those rows invalid."""
    frame = pd.read_csv(MVSA, dtype=str, keep_default_na=False).iloc[:60].copy()
    root = tmp_path / "copy"
    (root / "images").mkdir(parents=True)
    for image in frame["image"]:
        shutil.copy(MVSA.parent / image, root / image)
    damaged = {}
    for i in (3, 17, 31):
        (root / frame.at[i, "image"]).write_bytes(b"garbage, not a JPEG" * 10)
        damaged[frame.at[i, "id"]] = "not an image"
    for i in (5, 40):
        (root / frame.at[i, "image"]).unlink()
        damaged[frame.at[i, "id"]] = "not found"
    for i, value in ((9, "../../etc/passwd"), (50, str(MVSA.parent / frame.at[50, "image"]))):
        frame.at[i, "image"] = value
        damaged[frame.at[i, "id"]] = "outside image root"
    data = root / "data.csv"
    frame.to_csv(data, index=False)
    cache = tmp_path / "c"
    failed = cli("extract", data, "-e", "effnet", "-c", cache, "--on-bad-image", "fail", expect=2)
    for item, reason in damaged.items():
        assert f"{item}: " in failed.output and reason in failed.output, item
    report = extract(ExtractConfig(data=data, cache=cache, encoders=["effnet"], on_bad_image="skip"))
    assert report.encoders[0].batches == 0, "the good rows were committed by the failed run"
    rows = FeatureCache(cache).read("effnet").rows
    assert {item for item, valid in zip(rows.ids, rows.valid) if not valid} == set(damaged)
    bad = pd.read_csv(cache / "bad_rows.csv", dtype=str, keep_default_na=False).set_index("id")
    assert set(bad.index) == set(damaged)
    for item, reason in damaged.items():
        assert reason in bad.at[item, "reason"]
