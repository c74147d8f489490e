"""The data contract (`feat.data.load_table`) and its errors as the user sees them through `feat extract`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feat.data import Columns, load_table
from feat.errors import InputError
from helpers import cli, files_under, png_bytes, register_test_encoders, write_csv

RECORDS = [
    {"id": "a1", "text": "first text", "label": "pos", "split": "train"},
    {"id": "a2", "text": "second text", "label": "neg", "split": "val"},
    {"id": "a3", "text": "third text", "label": "pos", "split": "test"},
    {"id": "a4", "text": "fourth text", "label": "neg", "split": "Train "},
]


def expected_frame() -> pd.DataFrame:
    frame = pd.DataFrame.from_records(RECORDS)[["id", "split", "text", "label"]]
    frame["split"] = ["train", "dev", "test", "train"]
    return frame


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_csv_tsv_parquet_read_alike(tmp_path, fmt):
    frame = pd.DataFrame.from_records(RECORDS)
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    else:
        frame.to_parquet(path)
    table = load_table(path)
    pd.testing.assert_frame_equal(table.frame, expected_frame())
    assert table.extra_columns() == ["label"]
    assert table.source == path.resolve()


def test_parquet_missing_values_become_empty_text(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"id": [1, 2], "text": ["x", None], "split": ["train", "test"]}).to_parquet(path)
    table = load_table(path)
    assert table.ids == ["1", "2"]
    assert table.frame["text"].tolist() == ["x", ""]


@pytest.mark.parametrize("dev_name", ["dev.csv", "val_set.csv", "validation.tsv"])
def test_folder_of_split_files(tmp_path, dev_name):
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train_2024.csv", RECORDS[:2])
    sep = "\t" if dev_name.endswith(".tsv") else ","
    pd.DataFrame.from_records(RECORDS[2:3]).drop(columns="split").to_csv(folder / dev_name, index=False, sep=sep)
    write_csv(folder / "test.csv", RECORDS[3:])
    (folder / "notes.txt").write_text("not a table")
    (folder / "README.csv").write_text("id,text\nx,y\n")  # no split prefix: ignored
    table = load_table(folder)
    # The file decides the split, whatever a split column inside says.
    assert dict(zip(table.ids, table.frame["split"])) == {"a1": "train", "a2": "train", "a3": "dev", "a4": "test"}
    assert any(dev_name in note and "split dev" in note for note in table.notes)


def test_folder_without_split_files_is_an_input_error(tmp_path):
    (tmp_path / "d").mkdir()
    write_csv(tmp_path / "d" / "everything.csv", RECORDS)
    with pytest.raises(InputError, match="no train"):
        load_table(tmp_path / "d")


def test_column_options(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"key": "k1", "tweet": "hello", "part": "train", "pic": ""}])
    table = load_table(path, Columns(id="key", text="tweet", image="pic", split="part"))
    assert table.ids == ["k1"]
    assert table.frame["text"].tolist() == ["hello"]
    assert table.frame["image_error"].tolist() == ["no image path"]


def test_derived_ids_are_stable_and_unique(tmp_path):
    records = [{"text": "same", "image": "x.png", "split": "train"},
               {"text": "other", "image": "y.png", "split": "test"},
               {"text": "same", "image": "x.png", "split": "train"}]
    first = load_table(write_csv(tmp_path / "a.csv", records))
    assert len(set(first.ids)) == 3
    assert first.ids[2] == first.ids[0] + "#2"
    assert any("ids derived" in note for note in first.notes)
    # Content ids survive appending rows and a different row order, unlike row numbers.
    again = load_table(write_csv(tmp_path / "b.csv", [records[1], records[0], {"text": "new", "split": "dev"}]))
    assert again.ids[1] == first.ids[0] and again.ids[0] == first.ids[1]


def test_derived_id_note_is_printed(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    path = write_csv(tmp_path / "d.csv", [{"text": f"t {i}", "split": "train"} for i in range(3)])
    result = cli("extract", path, "-e", "probe-text", "-c", tmp_path / "c")
    assert "ids derived as sha1(text, image)" in result.output


def test_bom_and_quoted_newlines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeffid,text,split\n1,"line one\nline two, with comma",train\n2,"say ""hi""",test\n'
                     .encode("utf-8"))
    table = load_table(path)
    assert list(table.frame.columns[:3]) == ["id", "split", "text"]  # not "\ufeffid"
    assert table.frame["text"].tolist() == ["line one\nline two, with comma", 'say "hi"']


def test_non_utf8_file_is_read_and_said(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("id,text,split\n1,café crème naïve,train\n".encode("cp1252"))
    table = load_table(path)
    assert table.frame["text"].tolist() == ["café crème naïve"]
    assert any("not valid UTF-8" in note for note in table.notes)


def test_unicode_text_survives_cache_round_trip(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    texts = ["emoji 😀🎉👍🏽 family 👨‍👩‍👧", "مرحبا بالعالم", "שלום עולם", "混合 text ٣٤٥", "\u200f\u202e reversed"]
    records = [{"id": f"u{i}", "text": t, "split": "train"} for i, t in enumerate(texts)]
    path = write_csv(tmp_path / "d.csv", records)
    cli("extract", path, "-e", "probe-text", "-e", "tfidf", "-c", tmp_path / "c")
    from feat.cache import FeatureCache

    cache = FeatureCache(tmp_path / "c")
    assert cache.read_items()["text"].tolist() == texts
    assert cache.read("probe-text").rows.valid.all()


def test_nul_characters_are_replaced_and_said(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    path = tmp_path / "d.csv"
    path.write_bytes(b"id,text,split\nn1,a\x00b,train\nn2,clean,test\n")  # binary junk in a scraped text
    result = cli("extract", path, "-e", "probe-text", "-c", tmp_path / "c")
    from feat.cache import FeatureCache

    assert FeatureCache(tmp_path / "c").read_items()["text"].tolist() == ["a\ufffdb", "clean"]
    assert "1 value(s) of column 'text' contain NUL characters, replaced by U+FFFD (ids n1)" in result.output


def test_empty_nan_and_whitespace_text_are_encoded_and_said(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    records = [{"id": "full", "text": "a real text", "split": "train"},
               {"id": "empty", "text": "", "split": "train"},
               {"id": "spaces", "text": "   \t ", "split": "dev"},
               {"id": "nan", "text": "NaN", "split": "test"}]
    path = write_csv(tmp_path / "d.csv", records)
    result = cli("extract", path, "-e", "probe-text", "-e", "tfidf", "-c", tmp_path / "c")
    from feat.cache import FeatureCache

    cache = FeatureCache(tmp_path / "c")
    assert cache.read_items()["text"].tolist() == ["a real text", "", "   \t ", "NaN"]  # "NaN" is a text
    for name in ("probe-text", "tfidf"):
        rows = cache.read(name).rows
        assert rows.valid.all() and list(rows.ids) == ["full", "empty", "spaces", "nan"]
    # An empty text is legitimate (an image-only post) but never silent.
    assert "2 row(s) with empty or whitespace-only text, encoded as empty text" in result.output
    assert "(ids empty, spaces)" in result.output


def test_long_texts_are_truncated_and_said(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    records = [{"id": "long", "text": "word " * 500, "split": "train"}, {"id": "short", "text": "hi", "split": "test"}]
    result = cli("extract", write_csv(tmp_path / "d.csv", records), "-e", "probe-text", "--max-length", "16",
                 "-c", tmp_path / "c")
    assert "probe-text: 1 text(s) reached --max-length 16 tokens and were truncated (e.g. long)" in result.output


# ----- input errors: one line, exit 2, nothing written ----------------------------------------------
BAD_TABLES = {
    "duplicate ids": ("id,text,split\n1,a,train\n2,b,dev\n1,c,test\n", "duplicate id"),
    "missing split column": ("id,text\n1,a\n", "missing split column 'split'"),
    "missing text and image": ("id,caption,split\n1,a,train\n", "neither a text column"),
    "header only": ("id,text,split\n", "no rows"),
    "zero bytes": ("", "empty"),
    "unknown split": ("id,text,split\n1,a,train\n2,b,holdout\n", "unknown split value(s) ['holdout']"),
    "empty split": ("id,text,split\n1,a,train\n2,b,\n", "unknown split value(s) ['']"),
    "empty id": ("id,text,split\n1,a,train\n,b,test\n", "empty id"),
    "unclosed quote": ('id,text,split\n1,"a,train\n2,b,test\n', "not a readable table"),
    "row longer than header": ("id,text,split\n1,a,b,c,train\n", "more fields than the header"),
    "markup-like value": ("id,text,split\n1,a,[bold]x[/bold]\n", "['[bold]x[/bold]']"),
}


@pytest.mark.parametrize("case", BAD_TABLES)
def test_bad_table_one_line_exit_2_nothing_written(tmp_path, monkeypatch, case):
    register_test_encoders(monkeypatch)
    content, message = BAD_TABLES[case]
    path = tmp_path / "d.csv"
    path.write_text(content)
    cache = tmp_path / "cache"
    result = cli("extract", path, "-e", "probe-text", "-c", cache, expect=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:") and message in lines[0], lines[0]
    assert "d.csv" in lines[0]
    assert not cache.exists()


def test_input_error_leaves_an_existing_cache_untouched(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    path = write_csv(tmp_path / "d.csv", RECORDS)
    cache = tmp_path / "cache"
    cli("extract", path, "-e", "probe-text", "-c", cache)
    before = {p: (cache / p).stat().st_mtime_ns for p in files_under(cache)}
    write_csv(path, [*RECORDS, RECORDS[0]])
    cli("extract", path, "-e", "probe-text", "-c", cache, expect=2)
    assert {p: (cache / p).stat().st_mtime_ns for p in files_under(cache)} == before


def test_missing_data_file(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    result = cli("extract", tmp_path / "nope.csv", "-e", "probe-text", "-c", tmp_path / "c", expect=2)
    assert "data not found" in result.output and not (tmp_path / "c").exists()


def test_encoder_needs_its_column(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    path = write_csv(tmp_path / "d.csv", [{"id": 1, "text": "x", "split": "train"}])
    result = cli("extract", path, "-e", "tiny-image", "-c", tmp_path / "c", expect=2)
    assert "needs an image column 'image'" in result.output and not (tmp_path / "c").exists()


# ----- image paths ----------------------------------------------------------------------------------
@pytest.fixture
def path_tree(tmp_path):
    """root/data.csv, root/images/ok.png, outside/secret.png, and symlinks in and out of the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (root / "images" / "ok.png").write_bytes(png_bytes())
    (outside / "secret.png").write_bytes(png_bytes(colour=(0, 0, 0)))
    os.symlink(outside / "secret.png", root / "images" / "escape.png")
    os.symlink(root / "images" / "ok.png", root / "images" / "alias.png")
    os.symlink(outside, root / "images" / "linkdir")
    return root, outside


PATH_ROWS = {
    "ok": ("images/ok.png", ""),
    "dotdot": ("../outside/secret.png", "outside image root"),
    "dotdot_inside": ("images/../images/ok.png", ""),
    "absolute_outside": (None, "outside image root"),
    "absolute_inside": ("ROOT/images/ok.png", ""),
    "symlink_escape": ("images/escape.png", "outside image root"),
    "symlink_dir_escape": ("images/linkdir/secret.png", "outside image root"),
    "symlink_inside": ("images/alias.png", ""),
    "empty": ("", "no image path"),
    "nul_byte": ("images/ok\x00.png", "invalid image path"),
}


def _path_records(root: Path, outside: Path) -> list[dict]:
    records = []
    for key, (value, _) in PATH_ROWS.items():
        value = str(outside / "secret.png") if value is None else value.replace("ROOT", str(root))
        records.append({"id": key, "text": key, "image": value, "split": "train"})
    return records


def test_paths_outside_root_are_refused_with_reason(path_tree):
    root, outside = path_tree
    table = load_table(write_csv(root / "data.csv", _path_records(root, outside)))
    errors = dict(zip(table.ids, table.frame["image_error"]))
    paths = dict(zip(table.ids, table.frame["image_path"]))
    for key, (_, reason) in PATH_ROWS.items():
        if reason:
            assert reason in errors[key], (key, errors[key])
            assert paths[key] == ""
        else:
            assert errors[key] == "" and paths[key] == str((root / "images" / "ok.png").resolve()), key


def test_allow_outside_root(path_tree):
    root, outside = path_tree
    table = load_table(write_csv(root / "data.csv", _path_records(root, outside)), allow_outside_root=True)
    errors = dict(zip(table.ids, table.frame["image_error"]))
    assert {k for k, e in errors.items() if e} == {"empty", "nul_byte"}
    assert dict(zip(table.ids, table.frame["image_path"]))["symlink_escape"] == str(outside / "secret.png")


def test_image_root_option(path_tree):
    root, outside = path_tree
    records = [{"id": "x", "text": "x", "image": "secret.png", "split": "train"}]
    path = write_csv(root / "data.csv", records)
    # Resolution does not read the file: a missing image is reported later, at decoding.
    assert load_table(path).frame["image_path"].tolist() == [str(root.resolve() / "secret.png")]
    table = load_table(path, image_root=outside)
    assert table.frame["image_path"].tolist() == [str(outside / "secret.png")]


def test_paths_outside_the_root_are_an_input_error_with_nothing_written(path_tree, monkeypatch):
    """A path outside the image root is a setup mistake, refused before any write (README, "What feat
    guarantees"); rows without a usable path of their own (empty, NUL byte) stay bad rows."""
    register_test_encoders(monkeypatch)
    root, outside = path_tree
    cache = root / "cache"
    data = write_csv(root / "data.csv", _path_records(root, outside))
    result = cli("extract", data, "-e", "tiny-image", "-c", cache, expect=2)
    refused = {k for k, (_, reason) in PATH_ROWS.items() if reason == "outside image root"}
    assert f"{len(refused)} of {len(PATH_ROWS)} image path(s) resolve outside the image root" in result.output
    assert "nothing was written" in result.output and "Traceback" not in result.output
    assert not cache.exists()
    # A text-only extraction does not read images: their paths are not its business.
    cli("extract", data, "-e", "probe-text", "-c", cache)
    # Allowed explicitly: those rows are encoded; the rows with no usable path are bad rows with a reason.
    result = cli("extract", data, "-e", "tiny-image", "-c", cache, "--allow-outside-root")
    assert "2 bad row(s)" in result.output
    bad = pd.read_csv(cache / "bad_rows.csv", keep_default_na=False)
    assert dict(zip(bad["id"], bad["reason"])) == {"empty": "no image path",
                                                   "nul_byte": "invalid image path (contains a NUL byte)"}
    from feat.cache import FeatureCache

    rows = FeatureCache(cache).read("tiny-image").rows
    assert {k for k, v in zip(rows.ids, rows.valid) if not v} == {"empty", "nul_byte"}
