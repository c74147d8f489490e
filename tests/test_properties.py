"""Property-based: for generated tables (ids, texts, labels, splits, image states), every input row is
encoded or reported, ids and order are preserved, and a re-run changes nothing."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feat.cache import FeatureCache
from feat.extract.runner import ExtractConfig, extract
from helpers import png_bytes, register_test_encoders

# Printable or not, any character a scraped CSV may hold, except lone surrogates (not encodable in a file).
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
ID_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=10)
# A path outside the image root is not a bad row but an input error for the whole table (test_data.py).
IMAGE_STATES = ("good", "good", "missing", "garbage", "empty_file", "no_path")
BAD_REASON = {"missing": "not found", "garbage": "not an image", "empty_file": "0 bytes", "no_path": "no image path"}

row = st.fixed_dictionaries({
    "id": ID_TEXT,
    "text": ANY_TEXT,
    "label": st.sampled_from(["pos", "neg", "", "NaN", "1", "é"]),
    "split": st.sampled_from(["train", "dev", "test", "val", " Test", "TRAIN"]),
    "image": st.sampled_from(IMAGE_STATES),
})
tables = st.lists(row, min_size=1, max_size=10, unique_by=lambda r: r["id"].strip())


def _write(folder: Path, rows: list[dict], with_ids: bool) -> Path:
    (folder / "img").mkdir(parents=True)
    records = []
    for i, r in enumerate(rows):
        state = r["image"]
        image = f"img/{i}.png"
        if state == "good":
            (folder / image).write_bytes(png_bytes(size=(8, 8), colour=(i * 20 % 256, 10, 200)))
        elif state == "garbage":
            (folder / image).write_bytes(os.urandom(50) + b"junk")
        elif state == "empty_file":
            (folder / image).write_bytes(b"")
        elif state == "no_path":
            image = ""
        # The first row: a train text with a word, so that TF-IDF has something to fit on.
        text = f"alpha {r['text']}" if i == 0 else r["text"]
        split = "train" if i == 0 else r["split"]
        record = {"id": r["id"], "text": text, "image": image, "label": r["label"], "split": split}
        records.append(record if with_ids else {k: v for k, v in record.items() if k != "id"})
    (folder.parent / "elsewhere.png").write_bytes(png_bytes())
    path = folder / "data.csv"
    # Quoted: pandas leaves a bare "\r" unquoted, which any reader (rightly) takes for a line break.
    pd.DataFrame.from_records(records).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    return path


def _snapshot(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


# Small for the default suite; FEAT_HYPOTHESIS_EXAMPLES=500 for a deeper search.
EXAMPLES = int(os.environ.get("FEAT_HYPOTHESIS_EXAMPLES", "25"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables, with_ids=st.booleans(), batch_size=st.integers(1, 4), commit_every=st.integers(1, 5))
def test_every_row_encoded_or_reported_and_a_rerun_changes_nothing(monkeypatch, rows, with_ids, batch_size,
                                                                   commit_every):
    register_test_encoders(monkeypatch)
    with tempfile.TemporaryDirectory() as tmp:
        data = _write(Path(tmp) / "data", rows, with_ids)
        cache = Path(tmp) / "cache"
        config = ExtractConfig(data=data, cache=cache, encoders=["probe-text", "tiny-image", "tfidf"],
                               batch_size=batch_size, commit_every=commit_every)
        report = extract(config)
        fs = FeatureCache(cache)
        items = fs.read_items()
        if with_ids:
            assert items["id"].tolist() == [r["id"].strip() for r in rows]  # order and ids preserved
        texts = [(f"alpha {r['text']}" if i == 0 else r["text"]).replace("\x00", "\ufffd") for i, r in enumerate(rows)]
        assert items["text"].tolist() == texts
        bad = pd.read_csv(cache / "bad_rows.csv", keep_default_na=False, dtype=str)
        for name in ("probe-text", "tiny-image", "tfidf"):
            stored = fs.read(name).rows
            assert list(stored.ids) == items["id"].tolist()
            assert stored.matrix.shape[0] == len(rows)
            if name != "tiny-image":
                assert stored.valid.all() and (stored.reason == "").all()
                continue
            for i, r in enumerate(rows):
                state, valid, reason = r["image"], bool(stored.valid[i]), stored.reason[i]
                if state == "good":
                    assert valid and reason == "" and stored.matrix[i].min() >= 1.0
                else:
                    # Reported: invalid, with its reason, in bad_rows.csv under its id.
                    assert not valid and BAD_REASON[state] in reason and not stored.matrix[i].any()
                    listed = bad[(bad["feature"] == name) & (bad["id"] == stored.ids[i])]
                    assert listed["reason"].tolist() == [reason]
        n_bad = sum(r["image"] != "good" for r in rows)
        assert report.bad_rows == n_bad == len(bad)
        before = _snapshot(cache)
        again = extract(config)
        assert all(r.batches == 0 and r.encoded == 0 and r.reused == len(rows) for r in again.encoders)
        assert _snapshot(cache) == before
        assert np.array_equal(FeatureCache(cache).read("probe-text").rows.valid, np.ones(len(rows), bool))


def _rows_of(cache: Path, name: str):
    return FeatureCache(cache).read(name).rows


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables, batch_size=st.integers(1, 4), commit_every=st.integers(1, 5), interrupt_at=st.integers(1, 12))
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(monkeypatch, rows, batch_size, commit_every,
                                                                 interrupt_at):
    """Stopped inside its n-th HDF5 write (a part or a merge, of any encoder), then run again: the same cache
    as one uninterrupted run, and no committed row encoded twice."""
    from feat.cache import store

    register_test_encoders(monkeypatch)
    encoders = ["probe-text", "tiny-image", "tfidf"]
    with tempfile.TemporaryDirectory() as tmp:
        data = _write(Path(tmp) / "data", rows, with_ids=True)
        config = dict(data=data, encoders=encoders, batch_size=batch_size, commit_every=commit_every)
        extract(ExtractConfig(cache=Path(tmp) / "reference", **config))
        cache = Path(tmp) / "cache"
        real_write_rows, calls = store._write_rows, []

        def interrupted(f, block):
            calls.append(1)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            return real_write_rows(f, block)

        monkeypatch.setattr(store, "_write_rows", interrupted)
        try:
            extract(ExtractConfig(cache=cache, **config))
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(store, "_write_rows", real_write_rows)
        fs = FeatureCache(cache)
        before = {name: fs.committed(name, fs.fingerprint(name), matrix=False) if fs.fingerprint(name) else None
                  for name in encoders}
        report = extract(ExtractConfig(cache=cache, **config))
        for r in report.encoders:
            done = before[r.name]
            committed = 0 if done is None else len(done)
            committed_invalid = 0 if done is None else int((~done.valid).sum())
            assert r.reused == committed, r
            # Each row left is processed exactly once: encoded, or found bad (for the tiny image encoder).
            assert r.encoded + (r.invalid - committed_invalid) == len(rows) - committed, r
        for name in encoders:
            got, want = _rows_of(cache, name), _rows_of(Path(tmp) / "reference", name)
            assert list(got.ids) == list(want.ids) and list(got.content_hash) == list(want.content_hash)
            assert list(got.reason) == list(want.reason) and np.array_equal(got.valid, want.valid)
            if name == "tfidf":
                assert (got.matrix != want.matrix).nnz == 0
            else:
                assert np.array_equal(got.matrix, want.matrix), name
        assert not [p for p in cache.rglob("*") if ".tmp" in p.name or p.name.endswith(".parts")]
