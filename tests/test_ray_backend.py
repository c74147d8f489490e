"""`--backend ray`: the same encoders as a Ray Data pipeline, on a local Ray instance with 2 CPUs.

The cache must equal the local backend's: ids, content hashes, valid flags and reasons, fingerprints, fitted
state. Vectors of text encoders are bit-identical (the driver forms the same batches as a local run, one
dataset row per batch). Image batches are formed by Ray and may hold other rows than a local run's: the
real network's vectors must agree within 1e-5 (float noise of another batch shape, on entries of ~0.1 to 5);
row-only encoders (tiny thumbnails) exactly.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import scipy.sparse as sp

from feat.cache import FeatureCache
from feat.extract.runner import ExtractConfig, extract
from feat.synthetic import make_synthetic_dataset
from helpers import TESTS_DIR, register_test_encoders

pytest.importorskip("ray.data", reason="ray is not installed (pip install 'feat[ray]'): the ray backend is optional")
pytestmark = pytest.mark.slow

TEXT = ["minilm", "tfidf", "probe-text"]
IMAGE = ["effnet", "probe-joint"]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # The test encoders live in tests/helpers.py: Ray's worker processes import them from there.
    path = os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture
def data(tmp_path):
    csv = make_synthetic_dataset(tmp_path / "syn", rows=40, image_size=64)
    (csv.parent / "images" / "00003.png").write_bytes(b"not a png at all")
    (csv.parent / "images" / "00005.png").unlink()
    return csv


def test_ray_cache_equals_the_local_cache(local_ray, data, tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    options = dict(encoders=TEXT + IMAGE, batch_size=8, commit_every=16)
    local = extract(ExtractConfig(data=data, cache=tmp_path / "local", **options))
    remote = extract(ExtractConfig(data=data, cache=tmp_path / "ray", backend="ray", **options))
    for name in TEXT + IMAGE:
        got, want = FeatureCache(tmp_path / "ray").read(name), FeatureCache(tmp_path / "local").read(name)
        assert list(got.rows.ids) == list(want.rows.ids)
        assert list(got.rows.content_hash) == list(want.rows.content_hash)
        assert np.array_equal(got.rows.valid, want.rows.valid) and list(got.rows.reason) == list(want.rows.reason)
        assert got.fingerprint == want.fingerprint, name
        assert got.state.keys() == want.state.keys()
        assert all(np.array_equal(got.state[key], want.state[key]) for key in want.state)
        if sp.issparse(want.rows.matrix):
            assert (got.rows.matrix != want.rows.matrix).nnz == 0
        else:
            atol = 1e-5 if name == "effnet" else 0
            np.testing.assert_allclose(got.rows.matrix, want.rows.matrix, rtol=0, atol=atol, err_msg=name)
    assert [r.batches for r in remote.encoders[:3]] == [r.batches for r in local.encoders[:3]], "same text batches"
    assert remote.bad_rows == local.bad_rows == 4  # rows 3 and 5, for each image encoder
    notes = {note.split(":")[0]: note for note in remote.notes if "ray stages" in note}
    # Decoding ran as its own stage of CPU tasks, not fused into the encoder actors.
    assert "Map(_decode_row) -> StreamingRepartition -> MapBatches(_ImageActor)" in notes["effnet"], notes
    assert "MapBatches(_TextActor)" in notes["minilm"]


def test_a_local_run_reuses_a_ray_built_cache(local_ray, data, tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    options = dict(encoders=["probe-text", "probe-joint"], batch_size=8)
    extract(ExtractConfig(data=data, cache=tmp_path / "c", backend="ray", **options))
    again = extract(ExtractConfig(data=data, cache=tmp_path / "c", **options))
    assert [(r.batches, r.reused) for r in again.encoders] == [(0, 40), (0, 40)]
