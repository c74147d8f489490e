"""Joint (text + image) encoders through the runner: each row's own text beside its own image, bad images
reported like for image encoders, and a row re-encoded when either half changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feat.cache import FeatureCache
from feat.extract.runner import ExtractConfig, extract
from feat.synthetic import make_synthetic_dataset
from helpers import register_test_encoders, text_code


@pytest.fixture
def data(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    path = make_synthetic_dataset(tmp_path / "syn", rows=10, image_size=32)
    (tmp_path / "syn" / "images" / "00004.png").write_bytes(b"not a png")
    return path


def run(data, cache, **kwargs):
    return extract(ExtractConfig(data=data, cache=cache, encoders=["probe-joint", "tiny-image"], batch_size=3,
                                 **kwargs)).encoders


def test_each_row_pairs_its_own_text_and_image(data, tmp_path):
    joint, image = run(data, tmp_path / "c")
    assert (joint.encoded, joint.invalid, image.encoded, image.invalid) == (9, 1, 9, 1)
    fs = FeatureCache(tmp_path / "c")
    pairs, pictures = fs.read("probe-joint").rows, fs.read("tiny-image").rows
    texts = fs.read_items()["text"].tolist()
    good = [i for i in range(10) if i != 4]
    assert np.array_equal(pairs.matrix[good, :48], pictures.matrix[good])
    assert np.array_equal(pairs.matrix[good, 48:], text_code([texts[i] for i in good]))
    assert not pairs.valid[4] and "not an image" in pairs.reason[4] and not pairs.matrix[4].any()
    bad = pd.read_csv(tmp_path / "c" / "bad_rows.csv")
    assert sorted(bad["feature"]) == ["probe-joint", "tiny-image"] and set(bad["id"]) == {"item00004"}


@pytest.mark.parametrize("change", ["text", "image"])
def test_either_half_changing_re_encodes_only_that_row(data, tmp_path, change):
    run(data, tmp_path / "c")
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    if change == "text":
        frame.loc[2, "text"] = "a completely new caption"
        frame.to_csv(data, index=False)
    else:
        from PIL import Image

        Image.new("RGB", (32, 32), (0, 0, 0)).save(data.parent / frame.loc[2, "image"])
    joint, image = run(data, tmp_path / "c")
    assert (joint.encoded, joint.batches, joint.reused) == (1, 1, 9)
    assert image.encoded == (1 if change == "image" else 0)
    again = run(data, tmp_path / "c")
    assert all(r.batches == 0 and r.reused == 10 for r in again)
