"""Sharded extraction: `feat extract --shard i/n` in n processes at once on one cache, then `feat merge`.

The merged cache must equal a single-process one: same ids in the same order, same content hashes, flags,
fingerprints and fitted state. Vectors: bit-identical for encoders whose vector depends on the row alone
(tiny-image, tfidf: tolerance 0). A shard forms its own batches from its own rows, so a vector that depends
on its batch differs: the probe text encoder's two batch columns by design, a real network by float noise of
a different batch shape (measured by `test_real_encoders_three_shards` (slow), not assumed away here).
"""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from feat.cache import FeatureCache
from feat.cache.shard import Shard, shard_of
from feat.extract.runner import ExtractConfig, extract
from feat.synthetic import make_synthetic_dataset
from helpers import cli, files_under, finish, register_test_encoders, spawn, text_table, wait_for

ROW_ONLY = slice(0, 6)  # probe-text columns that depend on the text alone (6 and 7 on its batch)


def assert_same_features(cache, reference, name: str, columns: slice = slice(None), atol: float = 0.0) -> None:
    got, want = FeatureCache(cache).read(name), FeatureCache(reference).read(name)
    assert list(got.rows.ids) == list(want.rows.ids)
    assert list(got.rows.content_hash) == list(want.rows.content_hash)
    assert np.array_equal(got.rows.valid, want.rows.valid) and list(got.rows.reason) == list(want.rows.reason)
    assert got.fingerprint == want.fingerprint and got.attrs["fingerprint_id"] == want.attrs["fingerprint_id"]
    assert got.state.keys() == want.state.keys()
    for key in got.state:
        assert np.array_equal(got.state[key], want.state[key]), key
    a, b = got.rows.matrix, want.rows.matrix
    if sp.issparse(b):
        assert sp.issparse(a) and a.shape == b.shape and (a != b).nnz == 0
    else:
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a[:, columns], b[:, columns], rtol=0, atol=atol)
    assert not FeatureCache(cache).parts_dir(name).exists(), "parts and manifests are gone after the merge"


def shard_command(data, cache, encoders: list[str], shard: str, *options) -> list:
    return ["extract", data, *[a for e in encoders for a in ("-e", e)], "-c", cache, "--shard", shard, *options]


def owned(ids: list[str], count: int) -> list[int]:
    return [sum(shard_of(item, count) == k for item in ids) for k in range(count)]


def test_three_shard_processes_merge_into_the_single_process_cache(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    data = make_synthetic_dataset(tmp_path / "syn", rows=60, image_size=32)
    encoders = ["probe-text", "tiny-image", "tfidf"]  # probe-text first: its gate holds every shard mid-run
    reference = tmp_path / "reference"
    extract(ExtractConfig(data=data, cache=reference, encoders=encoders, batch_size=4, commit_every=4))
    cache, gate = tmp_path / "c", tmp_path / "gate"
    logs = [tmp_path / f"log{i}" for i in range(3)]
    processes = [spawn(shard_command(data, cache, encoders, f"{i}/3", "--batch-size", "4", "--commit-every", "4"),
                       log=logs[i], gate=gate) for i in range(3)]
    try:
        # Each shard commits one text batch, then waits at the gate: all three hold the cache at once.
        for log, process in zip(logs, processes):
            assert wait_for(log.exists, 120, process), process.communicate(timeout=60)[0]
        busy = cli("merge", cache, expect=1).output
        assert "in use by shard(s) 0/3, 1/3, 2/3 of a sharded extract" in busy, busy
        assert "in use by shard(s)" in cli("extract", data, "-e", "tfidf", "-c", cache, expect=1).output
        again = cli(*shard_command(data, cache, ["probe-text"], "1/3"), expect=1).output
        assert "shard 1/3 of cache" in again and "already running" in again
        gate.touch()
        outputs = [finish(process) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    ids = pd.read_csv(data)["id"].tolist()
    for i, output in enumerate(outputs):
        assert f"shard {i}/3: {owned(ids, 3)[i]} of 60 rows" in output, output
    assert FeatureCache(cache).feature_names() == [], "no shard finalizes"
    merged = cli("merge", cache).output
    assert "probe-text: 60 rows from 3 shards" in merged, merged
    assert_same_features(cache, reference, "tiny-image")
    assert_same_features(cache, reference, "tfidf")
    assert_same_features(cache, reference, "probe-text", columns=ROW_ONLY)
    assert (FeatureCache(cache).read_items() == FeatureCache(reference).read_items()).all().all()
    assert not [p for p in files_under(cache) if ".tmp" in p]


def test_merge_names_the_missing_rows_of_each_incomplete_shard(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 90)
    ids = pd.read_csv(data)["id"].tolist()
    counts = owned(ids, 3)
    options = dict(encoders=["probe-text"], batch_size=4, commit_every=8)
    reference = tmp_path / "reference"
    extract(ExtractConfig(data=data, cache=reference, **options))
    cache = tmp_path / "c"
    extract(ExtractConfig(data=data, cache=cache, shard=Shard(0, 3), **options))
    # Shard 1 killed inside its second commit: its first 8 rows are committed, the rest is not.
    process = spawn(shard_command(data, cache, ["probe-text"], "1/3", "--batch-size", "4", "--commit-every", "8"),
                    kill_in="write_rows:2")
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    refused = cli("merge", cache, expect=1).output
    assert f"shard 1/3: {counts[1] - 8} of its {counts[1]} rows missing" in refused, refused
    assert f"shard 2/3 never ran ({counts[2]} rows missing)" in refused, refused
    assert "shard 0/3" not in refused
    assert FeatureCache(cache).feature_names() == [] and "nothing was written" in refused
    resumed = extract(ExtractConfig(data=data, cache=cache, shard=Shard(1, 3), **options)).encoders[0]
    assert (resumed.reused, resumed.encoded) == (8, counts[1] - 8)
    extract(ExtractConfig(data=data, cache=cache, shard=Shard(2, 3), **options))
    cli("merge", cache)
    assert_same_features(cache, reference, "probe-text", columns=ROW_ONLY)
    assert not [p for p in files_under(cache) if ".tmp" in p], "the killed shard's temporary file was removed"


def test_the_next_plain_extract_merges_the_shards_without_a_forward_pass(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    data = make_synthetic_dataset(tmp_path / "syn", rows=30, image_size=32)
    options = dict(encoders=["tiny-image", "tfidf"], batch_size=4)
    extract(ExtractConfig(data=data, cache=tmp_path / "reference", **options))
    for i in range(3):
        extract(ExtractConfig(data=data, cache=tmp_path / "c", shard=Shard(i, 3), **options))
    report = extract(ExtractConfig(data=data, cache=tmp_path / "c", **options))
    assert [(r.batches, r.reused) for r in report.encoders] == [(0, 30), (0, 30)]
    for name in options["encoders"]:
        assert_same_features(tmp_path / "c", tmp_path / "reference", name)


def test_rows_keep_their_shard_when_the_table_grows_and_is_reordered(tmp_path, monkeypatch):
    """The shard is a function of the id: after rows are added and the table is reversed, shard 0 still owns
    every row it encoded before (reused) and encodes only the new rows it owns."""
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 60)
    first = extract(ExtractConfig(data=data, cache=tmp_path / "c", encoders=["probe-text"], shard=Shard(0, 2)))
    text_table(tmp_path / "d.csv", 90)  # the same first 60 rows, 30 more
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    frame.iloc[::-1].to_csv(data, index=False)
    second = extract(ExtractConfig(data=data, cache=tmp_path / "c", encoders=["probe-text"], shard=Shard(0, 2)))
    new = [item for item in frame["id"][60:] if shard_of(item, 2) == 0]
    assert (second.encoders[0].reused, second.encoders[0].encoded) == (first.encoders[0].rows, len(new))
    assert 0 < len(new) < 30


@pytest.mark.parametrize("spec", ["3/3", "-1/3", "1of3", "0/0"])
def test_a_bad_shard_spec_is_an_input_error(tmp_path, monkeypatch, spec):
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 5)
    result = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", f"--shard={spec}", expect=2)
    assert "--shard" in result.output and not (tmp_path / "c").exists()


def test_merge_without_a_sharded_extraction_is_an_input_error(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 5)
    assert "not a feat cache" in cli("merge", tmp_path / "c", expect=2).output
    cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c")
    assert "no sharded extraction to merge" in cli("merge", tmp_path / "c", expect=2).output


@pytest.mark.slow
def test_real_encoders_three_shards(tmp_path):
    """MiniLM and EfficientNet-Lite0 in 3 shards vs one process. A shard's batches hold other rows, so the
    vectors may differ by float rounding of another batch shape (padding length for text, batch size for
    images); equal within 1e-5 (vectors of norm ~1 for MiniLM, entries up to ~5 for EfficientNet)."""
    data = make_synthetic_dataset(tmp_path / "syn", rows=48, image_size=64)
    options = ["--batch-size", "8", "-e", "minilm", "-e", "effnet"]
    cli("extract", data, "-c", tmp_path / "reference", *options)
    processes = [spawn(["extract", data, "-c", tmp_path / "c", *options, "--shard", f"{i}/3"]) for i in range(3)]
    for process in processes:
        finish(process, timeout=600)
    cli("merge", tmp_path / "c")
    for name in ("minilm", "effnet"):
        assert_same_features(tmp_path / "c", tmp_path / "reference", name, atol=1e-5)
