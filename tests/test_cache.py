"""Cache behaviour: reuse, incremental rows, stale fingerprints, store dtype, TF-IDF fit, `feat info`,
locking and write failures."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from feat.cache import FeatureCache
from feat.extract.runner import ExtractConfig, extract
from feat.synthetic import make_synthetic_dataset
from helpers import REPO, cli, files_under, register_test_encoders, text_table, write_csv


def run(data, cache, encoders, **kwargs):
    return extract(ExtractConfig(data=data, cache=cache, encoders=list(encoders), **kwargs))


def by_name(report):
    return {r.name: r for r in report.encoders}


def snapshot(folder):
    return {p: (folder / p).read_bytes() for p in files_under(folder) if (folder / p).is_file()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), rows=40, image_size=48)


@pytest.fixture
def tiny(monkeypatch):
    register_test_encoders(monkeypatch)


# ----- reuse and incremental work -------------------------------------------------------------------
def test_real_encoders_second_run_does_no_forward_pass(synthetic, tmp_path):
    cache = tmp_path / "c"
    first = cli("extract", synthetic, "-e", "tfidf", "-e", "minilm", "-e", "effnet", "-c", cache,
                "--batch-size", "16")
    assert "40 encoded" in first.output
    fs = FeatureCache(cache)
    ids = fs.read_items()["id"].tolist()
    for name, dim in (("minilm", 384), ("effnet", 1280)):
        rows = fs.read(name).rows
        assert list(rows.ids) == ids and rows.matrix.shape == (40, dim) and np.isfinite(rows.matrix).all()
        assert rows.matrix.dtype == np.float32 and rows.valid.all()
    before = snapshot(cache / "features")
    report = run(synthetic, cache, ["tfidf", "minilm", "effnet"])
    for r in report.encoders:
        assert (r.batches, r.encoded, r.reused) == (0, 0, 40), r
        assert r.line().startswith(f"{r.name}: 40 rows (no forward pass, all rows reused from cache; 40 reused")
    assert snapshot(cache / "features") == before
    said = cli("extract", synthetic, "-e", "minilm", "-c", cache)
    assert "minilm: 40 rows (no forward pass, all rows reused from cache; 40 reused, 0 invalid), dim 384" \
        in said.output


def test_adding_rows_encodes_only_the_new_rows(synthetic, tmp_path):
    data = tmp_path / "d.csv"
    frame = pd.read_csv(synthetic, dtype=str, keep_default_na=False)
    frame["image"] = [str(synthetic.parent / p) for p in frame["image"]]
    frame.iloc[:30].to_csv(data, index=False)
    cache = tmp_path / "c"
    run(data, cache, ["minilm"], allow_outside_root=True)
    run(synthetic, tmp_path / "c_all", ["minilm"])
    frame.to_csv(data, index=False)
    report = by_name(run(data, cache, ["minilm"], allow_outside_root=True))["minilm"]
    assert (report.encoded, report.reused, report.rows) == (10, 30, 40)
    rows, reference = FeatureCache(cache).read("minilm").rows, FeatureCache(tmp_path / "c_all").read("minilm").rows
    assert list(rows.ids) == list(reference.ids)
    # Other batches, other padding: equal up to float32 rounding, not necessarily bit for bit.
    np.testing.assert_allclose(rows.matrix, reference.matrix, atol=1e-5)


def test_changed_text_re_encodes_only_that_row(tmp_path, tiny):
    data = text_table(tmp_path / "d.csv", 30)
    cache = tmp_path / "c"
    run(data, cache, ["probe-text"], batch_size=4)
    before = FeatureCache(cache).read("probe-text").rows
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    frame.loc[7, "text"] = "row7 an edited text"
    frame.to_csv(data, index=False)
    report = by_name(run(data, cache, ["probe-text"], batch_size=4))["probe-text"]
    assert (report.encoded, report.batches, report.reused) == (1, 1, 29)
    after = FeatureCache(cache).read("probe-text").rows
    changed = [i for i in range(30) if not np.array_equal(after.matrix[i], before.matrix[i])]
    assert changed == [7]
    assert after.content_hash[7] != before.content_hash[7]


def test_changed_image_re_encodes_only_that_row(tmp_path, tiny):
    folder = tmp_path / "syn"
    data = make_synthetic_dataset(folder, rows=12, image_size=32)
    cache = tmp_path / "c"
    run(data, cache, ["tiny-image"])
    from PIL import Image

    Image.new("RGB", (32, 32), (0, 0, 0)).save(folder / "images" / "00003.png")
    report = by_name(run(data, cache, ["tiny-image"]))["tiny-image"]
    assert (report.encoded, report.reused) == (1, 11)
    rows = FeatureCache(cache).read("tiny-image").rows
    assert np.allclose(rows.matrix[3], 1.0)  # black thumbnail + 1


def test_removed_and_reordered_rows_need_no_forward_pass(tmp_path, tiny):
    data = text_table(tmp_path / "d.csv", 20)
    cache = tmp_path / "c"
    run(data, cache, ["probe-text"])
    full = FeatureCache(cache).read("probe-text").rows
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    frame.iloc[::-1].iloc[:15].to_csv(data, index=False)
    report = by_name(run(data, cache, ["probe-text"]))["probe-text"]
    assert (report.batches, report.reused, report.rows) == (0, 15, 15)
    rows = FeatureCache(cache).read("probe-text").rows
    assert list(rows.ids) == frame["id"].tolist()[::-1][:15]
    position = {item: i for i, item in enumerate(full.ids)}
    assert np.array_equal(rows.matrix, full.matrix[[position[i] for i in rows.ids]])
    assert FeatureCache(cache).read_items()["id"].tolist() == list(rows.ids)


def test_read_matrix_trusts_given_ids_only_when_the_stored_digest_matches(tmp_path, tiny):
    data = text_table(tmp_path / "d.csv", 12)
    cache = FeatureCache(tmp_path / "c")
    run(data, cache.root, ["probe-text"])
    full = cache.read("probe-text").rows
    same = cache.read_matrix("probe-text", expected_ids=full.ids.copy())
    assert list(same.rows.ids) == list(full.ids) and np.array_equal(same.rows.matrix, full.matrix)
    # Other ids (reordered, or from another table) must not be taken on trust: the stored ones come back.
    reordered = cache.read_matrix("probe-text", expected_ids=full.ids[::-1].copy())
    assert list(reordered.rows.ids) == list(full.ids)
    with h5py.File(cache.feature_path("probe-text"), "r+") as f:  # a file written before the digest existed
        del f.attrs["ids_sha256"]
    assert list(cache.read_matrix("probe-text", expected_ids=full.ids[::-1].copy()).rows.ids) == list(full.ids)


# ----- stale fingerprints -----------------------------------------------------------------------------
@pytest.mark.parametrize("change, diff", [
    (["--max-length", "32"], "preprocessing"),
    (["--store-dtype", "float16"], "store_dtype"),
])
def test_changed_preprocessing_is_refused_unless_force(tmp_path, tiny, change, diff):
    data = text_table(tmp_path / "d.csv", 12)
    cache = tmp_path / "c"
    cli("extract", data, "-e", "probe-text", "-c", cache)
    before = snapshot(cache)
    old_id = FeatureCache(cache).read("probe-text", rows=False).attrs["fingerprint_id"]
    # Rows added as well: a refused run must not even update items.h5, which the old features describe.
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    pd.concat([frame, frame.assign(id=frame["id"] + "b")]).to_csv(data, index=False)
    result = cli("extract", data, "-e", "probe-text", "-c", cache, *change, expect=2)
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "different fingerprint" in line and diff in line and "--force" in line
    assert snapshot(cache) == before
    forced = cli("extract", data, "-e", "probe-text", "-c", cache, *change, "--force")
    assert "fingerprint changed" in forced.output and "24 encoded" in forced.output
    fs = FeatureCache(cache).read("probe-text")
    assert len(fs.rows) == 24 and fs.attrs["fingerprint_id"] != old_id
    cli("extract", data, "-e", "probe-text", "-c", cache, *change)  # the new fingerprint is now the stored one


def test_changed_pooling_of_a_real_model_is_refused(tmp_path):
    from feat.extract.minilm import packaged_model_path

    records = [{"id": i, "text": f"text number {i}", "split": "train"} for i in range(6)]
    data = write_csv(tmp_path / "d.csv", records)
    cache = tmp_path / "c"
    model = packaged_model_path()
    cli("extract", data, "-e", "hf-text", "--model", model, "--pooling", "mean", "-c", cache)
    mean = FeatureCache(cache).read("hf-text").rows.matrix
    result = cli("extract", data, "-e", "hf-text", "--model", model, "--pooling", "cls", "-c", cache, expect=2)
    assert "'pooling': 'mean'" in result.output and "'pooling': 'cls'" in result.output
    cli("extract", data, "-e", "hf-text", "--model", model, "--pooling", "cls", "-c", cache, "--force")
    cls = FeatureCache(cache).read("hf-text").rows.matrix
    assert not np.allclose(mean, cls)


def test_tfidf_without_train_rows_is_refused_before_writing(tmp_path, tiny):
    records = [{"id": i, "text": f"text {i}", "split": ["dev", "test"][i % 2]} for i in range(4)]
    cache = tmp_path / "c"
    result = cli("extract", write_csv(tmp_path / "d.csv", records), "-e", "probe-text", "-e", "tfidf", "-c", cache,
                 expect=2)
    assert "fitted on the train split, and it has no rows (splits: dev, test)" in result.output
    assert not cache.exists()


def test_feat_version_change_is_refused(tmp_path, tiny, monkeypatch):
    data = text_table(tmp_path / "d.csv", 6)
    run(data, tmp_path / "c", ["probe-text"])
    import feat.extract.base as base

    monkeypatch.setattr(base, "__version__", "99.0")
    result = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", expect=2)
    assert "feat_version" in result.output


def test_fingerprints_are_never_mixed(tmp_path, tiny, monkeypatch):
    """Parts committed under one fingerprint are not reused under another, even with --force."""
    data = text_table(tmp_path / "d.csv", 40)
    cache = tmp_path / "c"
    from feat.cache import store

    real_finalize = store.FeatureCache.finalize

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after committing every part, before merging them

    monkeypatch.setattr(store.FeatureCache, "finalize", crash)
    with pytest.raises(KeyboardInterrupt):
        run(data, cache, ["probe-text"], commit_every=8, batch_size=8)
    fs = FeatureCache(cache)
    assert len(list(fs.parts_dir("probe-text").glob("part-*.h5"))) == 5
    monkeypatch.setattr(store.FeatureCache, "finalize", real_finalize)
    with pytest.raises(Exception, match="different fingerprint"):
        run(data, cache, ["probe-text"], options=_options(max_length=8))
    report = by_name(run(data, cache, ["probe-text"], options=_options(max_length=8), force=True))["probe-text"]
    assert (report.encoded, report.reused) == (40, 0)
    with h5py.File(fs.feature_path("probe-text")) as f:
        assert json.loads(f.attrs["fingerprint"])["preprocessing"]["max_length"] == 8
    assert not fs.parts_dir("probe-text").exists()
    assert fs.committed("probe-text", fs.fingerprint("probe-text")).matrix[:, 6].max() <= 8 / 64


def _options(**kwargs):
    from feat.extract.base import EncoderOptions

    return EncoderOptions(**kwargs)


def test_store_dtype_float16(tmp_path, tiny):
    data = text_table(tmp_path / "d.csv", 10)
    run(data, tmp_path / "c32", ["probe-text"])
    run(data, tmp_path / "c16", ["probe-text"], store_dtype="float16")
    with h5py.File(tmp_path / "c16" / "features" / "probe-text.h5") as f:
        # String attributes are fixed-length UTF-8 (under HDF5's checksum): h5py returns bytes
        assert f["X"].dtype == np.float16 and f.attrs["dtype"] == b"float16"
    x16 = FeatureCache(tmp_path / "c16").read("probe-text").rows.matrix
    x32 = FeatureCache(tmp_path / "c32").read("probe-text").rows.matrix
    assert x16.dtype == np.float16 and x32.dtype == np.float32
    np.testing.assert_allclose(x16.astype(np.float32), x32, rtol=1e-3, atol=1e-3)
    assert "float16" in cli("info", tmp_path / "c16").output


# ----- TF-IDF -----------------------------------------------------------------------------------------
def _tfidf_records():
    records = [{"id": f"tr{i}", "text": f"common words here train{i % 3} shared", "split": "train"}
               for i in range(8)]
    records += [{"id": "dv", "text": "common devonlyword", "split": "dev"},
                {"id": "te", "text": "testonlyword zebra", "split": "test"}]
    return records


def test_tfidf_is_fitted_on_train_only(tmp_path):
    data = write_csv(tmp_path / "d.csv", _tfidf_records())
    run(data, tmp_path / "c", ["tfidf"])
    fs = FeatureCache(tmp_path / "c").read("tfidf")
    vocabulary = set(fs.state["vocabulary"])
    assert "common" in vocabulary and "train1" in vocabulary
    assert not {"testonlyword", "zebra", "devonlyword"} & vocabulary
    position = list(fs.rows.ids).index("te")
    assert fs.rows.matrix[position].nnz == 0  # only unseen words: an empty row, still valid
    assert fs.rows.valid.all()


def test_tfidf_re_encodes_everything_when_train_changes(tmp_path):
    records = _tfidf_records()
    data = write_csv(tmp_path / "d.csv", records)
    cache = tmp_path / "c"
    run(data, cache, ["tfidf"])
    records[-1]["text"] = "testonlyword giraffe"  # a test row: only it is re-encoded
    write_csv(data, records)
    report = by_name(run(data, cache, ["tfidf"]))["tfidf"]
    assert (report.encoded, report.reused) == (1, 9)
    records[0]["text"] = "common words here newtrainword"  # the fit changes: every row
    write_csv(data, records)
    report = by_name(run(data, cache, ["tfidf"]))["tfidf"]
    assert (report.encoded, report.reused) == (10, 0)
    fs = FeatureCache(cache).read("tfidf")
    assert "newtrainword" in set(fs.state["vocabulary"])
    run(data, tmp_path / "fresh", ["tfidf"])
    reference = FeatureCache(tmp_path / "fresh").read("tfidf")
    assert (fs.rows.matrix != reference.rows.matrix).nnz == 0
    assert list(fs.state["vocabulary"]) == list(reference.state["vocabulary"])


def test_tfidf_state_matches_rows_after_a_crash_before_merge(tmp_path, monkeypatch):
    """The rows of a new fit were committed, then the run died before the merge: the stored state must be
    the new fit, not the old complete file's."""
    records = _tfidf_records()
    data = write_csv(tmp_path / "d.csv", records)
    cache = tmp_path / "c"
    run(data, cache, ["tfidf"])
    records[0]["text"] = "common words here newtrainword"
    write_csv(data, records)
    from feat.cache import store

    real_finalize = store.FeatureCache.finalize
    monkeypatch.setattr(store.FeatureCache, "finalize", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run(data, cache, ["tfidf"])
    monkeypatch.setattr(store.FeatureCache, "finalize", real_finalize)
    report = by_name(run(data, cache, ["tfidf"]))["tfidf"]
    assert report.encoded == 0 and report.reused == 10
    fs = FeatureCache(cache).read("tfidf")
    assert "newtrainword" in set(fs.state["vocabulary"])
    run(data, tmp_path / "fresh", ["tfidf"])
    assert list(fs.state["vocabulary"]) == list(FeatureCache(tmp_path / "fresh").read("tfidf").state["vocabulary"])


# ----- feat info ----------------------------------------------------------------------------------------
def test_feat_info(tmp_path, tiny, monkeypatch):
    data = text_table(tmp_path / "d.csv", 10)
    cache = tmp_path / "c"
    cli("extract", data, "-e", "probe-text", "-e", "tfidf", "-c", cache)
    out = cli("info", cache).output
    assert "10 items (train 6, dev 2, test 2)" in out
    fs = FeatureCache(cache)
    for name in ("probe-text", "tfidf"):
        attrs = fs.read(name, rows=False).attrs
        assert f"{name}: 10 rows, 10 valid, dim {attrs['dim']}, float32" in out
        assert f"fingerprint {attrs['fingerprint_id']}" in out and f"created {attrs['created']}" in out
    assert "csr" in out and "MiB" in out
    assert "unfinished" not in out
    cli("info", tmp_path / "nothing", expect=2)


def test_feat_info_shows_an_unfinished_run_and_a_feature_set_behind_the_table(tmp_path, tiny, monkeypatch):
    data = text_table(tmp_path / "d.csv", 10)
    cache = tmp_path / "c"
    run(data, cache, ["probe-text", "tfidf"])
    text_table(tmp_path / "d.csv", 12)  # two rows more, extracted with one encoder only
    run(data, cache, ["probe-text"])
    out = cli("info", cache).output
    assert "12 items" in out
    assert "tfidf: 10 rows" in out and "behind the table" in out
    from feat.cache import store

    monkeypatch.setattr(store.FeatureCache, "finalize", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    text_table(tmp_path / "d.csv", 14)
    with pytest.raises(KeyboardInterrupt):
        run(data, cache, ["probe-text"])
    assert "unfinished extraction" in cli("info", cache).output
    with pytest.raises(KeyboardInterrupt):  # a first extraction killed before its merge
        run(data, cache, ["tfidf"], name="tfidf2")
    assert "tfidf2: unfinished, 14 rows committed, no complete file yet" in cli("info", cache).output


# ----- lock -------------------------------------------------------------------------------------------
def _hold_lock(cache):
    """A process holding the cache lock until its stdin closes."""
    code = ("import sys\nfrom feat.cache import FeatureCache\n"
            f"with FeatureCache({str(cache)!r}).lock():\n    print('locked', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_extract_fails_fast_or_waits(tmp_path, tiny):
    """Without --wait the second run is refused while the lock is held (it returns at all: it did not wait);
    with --wait it is still waiting when the holder lets go, and then finishes."""
    from helpers import spawn

    data = text_table(tmp_path / "d.csv", 6)
    cache = tmp_path / "c"
    holder = _hold_lock(cache)
    try:
        result = cli("extract", data, "-e", "probe-text", "-c", cache, expect=1)
        assert holder.poll() is None, "refused while the lock is held"
        assert "is in use by another feat process" in result.output and "--wait" in result.output
        assert not (cache / "items.h5").exists()
        waiter = spawn(["extract", data, "-e", "probe-text", "-c", cache, "--wait", "600"])
        said = ""
        for line in waiter.stdout:  # blocks until the waiter reports that it waits (or ends)
            said += line
            if "waiting for it" in line:
                break
        assert "is in use by another feat process: waiting for it (up to 600 s)" in said, said
        assert not (cache / "items.h5").exists()
        holder.stdin.close()  # the holder releases the lock now, not before
        output, _ = waiter.communicate(timeout=600)
        assert waiter.returncode == 0 and "6 encoded" in output, said + output
    finally:
        holder.kill()
        holder.wait()


# ----- write failures ----------------------------------------------------------------------------------
def _fail_nth_write(monkeypatch, n, error):
    from feat.cache import store

    real = store._write_rows
    calls = {"n": 0}

    def write_rows(f, rows):
        calls["n"] += 1
        if calls["n"] == n:
            f.create_dataset("ids", data=np.zeros(10))  # half a file exists when the disk fills up
            raise error
        return real(f, rows)

    monkeypatch.setattr(store, "_write_rows", write_rows)
    return calls


@pytest.mark.parametrize("n, stage", [(2, "a part"), (4, "the merge")])
def test_a_write_that_fails_half_way_leaves_nothing_half_written(tmp_path, tiny, monkeypatch, n, stage):
    data = text_table(tmp_path / "d.csv", 24)
    cache = tmp_path / "c"
    run(data, cache, ["probe-text"], batch_size=8, commit_every=8)
    complete = (cache / "features" / "probe-text.h5").read_bytes()
    text_table(tmp_path / "d.csv", 48)  # 24 new rows: three parts, then the merge (the 4th write)
    _fail_nth_write(monkeypatch, n, OSError(errno.ENOSPC, "No space left on device"))
    result = cli("extract", data, "-e", "probe-text", "-c", cache, "--batch-size", "8", "--commit-every", "8",
                 expect=2)
    line = result.output.strip().splitlines()[-1]  # after the progress line
    assert line.startswith("error: could not write") and "No space left on device" in line
    assert not [p for p in files_under(cache) if ".tmp" in p], "no temporary file left behind"
    assert (cache / "features" / "probe-text.h5").read_bytes() == complete, "the valid file is untouched"
    for part in FeatureCache(cache).parts_dir("probe-text").glob("part-*.h5"):
        with h5py.File(part) as f:
            assert len(f["ids"]) == 8 and f["X"].shape == (8, 8)
    monkeypatch.undo()
    register_test_encoders(monkeypatch)
    report = by_name(run(data, cache, ["probe-text"], batch_size=8, commit_every=8))["probe-text"]
    committed_before = 8 * (n - 1) if n < 4 else 24
    assert report.encoded == 24 - committed_before and report.reused == 24 + committed_before
    assert len(FeatureCache(cache).read("probe-text").rows) == 48


def test_parts_are_ordered_by_number_not_by_name(tmp_path):
    """The newest commit of an id wins; part-1000000 is newer than part-999999 although it sorts first."""
    from feat.cache import FeatureRows

    fs = FeatureCache(tmp_path)
    fingerprint = {"encoder": "x"}

    def block(value):
        return FeatureRows(np.array(["a"], dtype=object), np.array([f"h{value}"], dtype=object), np.array([True]),
                           np.array([""], dtype=object), np.full((1, 2), value, dtype=np.float32))

    old = fs.commit_part("x", block(1.0), fingerprint)
    old.rename(old.with_name("part-999999.h5"))
    new = fs.commit_part("x", block(2.0), fingerprint)
    assert new.name == "part-1000000.h5"
    rows = fs.committed("x", fingerprint)
    assert list(rows.content_hash) == ["h2.0"] and rows.matrix.tolist() == [[2.0, 2.0]]
    fs.finalize("x", ["a"], ["h2.0"], fingerprint, {}, "x")
    assert fs.read("x").rows.matrix.tolist() == [[2.0, 2.0]] and not fs.parts_dir("x").exists()


@pytest.mark.parametrize("block_bytes", [1, 3 * 4 * 3, 32 * 2**20])  # 1 row, 3 rows, everything at once
def test_merge_copies_block_by_block_to_the_right_rows(tmp_path, monkeypatch, block_bytes):
    """A complete file, parts that re-commit some ids with new content, a table in another order: each id
    gets the vector of its newest commit of the wanted content, whatever the copy's block size."""
    import feat.cache.store as store
    from feat.cache import FeatureRows

    monkeypatch.setattr(store, "COPY_BLOCK_BYTES", block_bytes)
    fs = FeatureCache(tmp_path)
    fingerprint = {"encoder": "x"}
    rng = np.random.default_rng(0)

    def rows(items, version):
        ids = np.array(items, dtype=object)
        vectors = np.array([[int(i[1:]), version, rng.random()] for i in items], dtype=np.float32)
        return FeatureRows(ids, np.array([f"{i}v{version}" for i in items], dtype=object),
                           np.ones(len(ids), dtype=bool), np.full(len(ids), "", dtype=object), vectors)

    everything = [f"r{i}" for i in range(40)]
    first = rows(everything, 1)
    fs.commit_part("x", first, fingerprint)
    fs.finalize("x", everything, list(first.content_hash), fingerprint, {}, "x")  # the complete file
    newer = [rows(list(rng.permutation(everything)[:15]), 2), rows(list(rng.permutation(everything)[:10]), 3)]
    for block in newer:
        fs.commit_part("x", block, fingerprint)
    newest = {item: (1, v) for item, v in zip(first.ids, first.matrix)}
    for version, block in zip((2, 3), newer):
        newest.update({item: (version, v) for item, v in zip(block.ids, block.matrix)})
    table = list(rng.permutation(everything)[:33])  # 7 rows left the table; the rest in a new order
    fs.finalize("x", table, [f"{i}v{newest[i][0]}" for i in table], fingerprint, {}, "x")
    stored = fs.read("x").rows
    assert list(stored.ids) == table and not fs.parts_dir("x").exists()
    assert np.array_equal(stored.matrix, np.stack([newest[i][1] for i in table]))
    assert list(stored.content_hash) == [f"{i}v{newest[i][0]}" for i in table]


def test_rows_of_another_width_are_refused_only_where_vectors_are_read(tmp_path):
    """A killed TF-IDF run can leave rows of an older fit (another vocabulary width) under one fingerprint:
    planning reads only the bookkeeping and must not trip over them; merging rows of two widths is refused;
    a merge that does not want the old rows ignores them."""
    from feat.cache import FeatureRows
    from feat.errors import FeatError

    fs = FeatureCache(tmp_path)
    fingerprint = {"encoder": "x"}

    def block(items, width, tag):
        ids = np.array(items, dtype=object)
        return FeatureRows(ids, np.array([f"{i}{tag}" for i in items], dtype=object), np.ones(len(ids), dtype=bool),
                           np.full(len(ids), "", dtype=object), np.ones((len(ids), width), dtype=np.float32))

    fs.commit_part("x", block(["a", "b"], 3, "old"), fingerprint)
    fs.commit_part("x", block(["b", "c"], 5, "new"), fingerprint)
    planned = fs.committed("x", fingerprint, matrix=False)
    assert sorted(planned.ids) == ["a", "b", "c"]
    with pytest.raises(FeatError, match=r"different widths .*\[3, 5\]"):
        fs.finalize("x", ["a", "b", "c"], ["aold", "bnew", "cnew"], fingerprint, {}, "x")
    fs.finalize("x", ["b", "c"], ["bnew", "cnew"], fingerprint, {}, "x")
    assert fs.read("x").rows.matrix.shape == (2, 5)


def test_cache_path_that_is_a_file(tmp_path, tiny):
    data = text_table(tmp_path / "d.csv", 4)
    (tmp_path / "c").write_text("not a folder")
    result = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", expect=2)
    assert "is a file, not a folder" in result.output and (tmp_path / "c").read_text() == "not a folder"
