"""Crash safety: `kill -9` at random moments and at chosen points inside cache writes, then a re-run.

Checked after every kill: each HDF5 file in the cache opens and reads in full. Checked at the end: committed
rows were never encoded again, and the cache is bit-identical to an uninterrupted run. The probe encoder's
vectors depend on the exact members of their batch, so bit-identity also proves that a resumed run forms
the same batches (texts sorted by length) as the uninterrupted one.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from feat.cache import FeatureCache
from feat.extract.runner import ExtractConfig, extract
from helpers import cli, files_under, finish, register_test_encoders, spawn, text_table, wait_for

SUMMARY = re.compile(r"(\d+) rows \((?:(\d+) encoded in (\d+) batches|no forward pass[^;]*); (\d+) reused")


def summary(output: str, name: str) -> tuple[int, int, int]:
    """(encoded, batches, reused) from the run's summary line of feature set `name`."""
    match = next(SUMMARY.search(line) for line in output.splitlines()
                 if line.startswith(f"{name}: ") and SUMMARY.search(line))
    rows, encoded, batches, reused = match.groups()
    return int(encoded or 0), int(batches or 0), int(reused)


def check_readable(cache: Path) -> None:
    """Every HDF5 file visible under its real name opens and reads in full (temporary files aside)."""
    for relative in files_under(cache):
        path = cache / relative
        if path.suffix != ".h5" or path.name.startswith("."):
            continue
        with h5py.File(path, "r") as f:
            f.visit(lambda key: f[key][()] if isinstance(f[key], h5py.Dataset) else None)
            assert "fingerprint" in f.attrs or relative == "items.h5"


def committed_ids(cache: Path, name: str) -> set[str]:
    fs = FeatureCache(cache)
    fingerprint = fs.fingerprint(name)
    rows = fs.committed(name, fingerprint, matrix=False) if fingerprint else None
    return set(rows.ids) if rows is not None else set()


def logged_ids(log: Path) -> list[str]:
    """Ids the probe encoder encoded (texts start with 'row<i>'), one entry per encoded text."""
    if not log.exists():
        return []
    return [f"r{int(word[3:]):05d}" for line in log.read_text().splitlines() for word in line.split()]


def assert_same_cache(cache: Path, reference: Path, name: str) -> None:
    got, want = FeatureCache(cache).read(name), FeatureCache(reference).read(name)
    assert list(got.rows.ids) == list(want.rows.ids)
    assert list(got.rows.content_hash) == list(want.rows.content_hash)
    assert np.array_equal(got.rows.valid, want.rows.valid) and list(got.rows.reason) == list(want.rows.reason)
    assert got.rows.matrix.dtype == want.rows.matrix.dtype
    differ = np.flatnonzero((got.rows.matrix != want.rows.matrix).any(axis=1))
    assert differ.size == 0, f"{differ.size} rows differ from the uninterrupted run, e.g. {got.rows.ids[differ[:5]]}"
    assert got.fingerprint == want.fingerprint and got.state.keys() == want.state.keys()
    assert not FeatureCache(cache).parts_dir(name).exists()
    assert not [p for p in files_under(cache) if ".tmp" in p], "temporary files were cleaned up"


def resume_in_process(monkeypatch, args: list, log: Path) -> str:
    """The run after the kills, in this process (no interpreter start-up to pay for)."""
    register_test_encoders(monkeypatch)
    monkeypatch.setenv("FEAT_TEST_ENCODE_LOG", str(log))
    return cli(*args).output


def kill_and_resume(monkeypatch, data: Path, cache: Path, reference: Path, tmp: Path, kills: int, seed: int,
                    args: list, delay: float, window: float) -> None:
    """`kills` runs killed at random moments after they started encoding, then one run to the end."""
    print(f"FEAT_TEST_SEED={seed} reproduces this kill schedule")  # pytest shows it when the test fails
    rng = random.Random(seed)
    name = "probe-text"
    in_encoding = 0  # kills that landed after the run had encoded a batch
    for k in range(kills):
        log = tmp / f"log{k}"
        before = committed_ids(cache, name)
        process = spawn(["extract", data, "-e", name, "-c", cache, *args], log=log, delay=delay)
        # A random moment: some kills land before the first batch (imports, table, lock), most in encoding,
        # some of them inside a commit. At least one lands in encoding, whatever the draws.
        if rng.random() < 0.2 and (in_encoding or k < kills - 1):
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            assert wait_for(lambda: log.exists(), 600, process), f"seed {seed}: run {k} never encoded a batch"
            time.sleep(rng.uniform(0.0, window))
        assert process.poll() is None, f"seed {seed}: run {k} finished before its kill; make the data bigger"
        in_encoding += log.exists()
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, f"seed {seed}: run {k} ended by itself"
        check_readable(cache)
        again = [item for item in logged_ids(log) if item in before]
        assert not again, f"seed {seed}: run {k} re-encoded committed rows {again[:5]}"
    before = committed_ids(cache, name)
    log = tmp / "log_final"
    output = resume_in_process(monkeypatch, ["extract", data, "-e", name, "-c", cache, *args], log)
    encoded, _, reused = summary(output, name)
    assert reused == len(before) and not set(logged_ids(log)) & before, f"seed {seed}"
    assert encoded == len(logged_ids(log))
    assert in_encoding >= 1, f"seed {seed}: no kill landed while encoding"
    assert_same_cache(cache, reference, name)


def test_three_random_kills_resume_bit_identical(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 600, max_words=40)
    args = ["--batch-size", "8", "--commit-every", "16"]
    extract(ExtractConfig(data=data, cache=tmp_path / "reference", encoders=["probe-text"], batch_size=8,
                          commit_every=16))
    seed = int(os.environ.get("FEAT_TEST_SEED", random.randrange(1 << 30)))
    kill_and_resume(monkeypatch, data, tmp_path / "c", tmp_path / "reference", tmp_path, kills=3, seed=seed,
                    args=args, delay=0.02, window=0.4)


@pytest.mark.parametrize("kill_in, committed_rows", [
    ("write_rows:3", 32),  # the third part half-written: two parts (32 rows) committed
    ("write_rows:5", 64),  # the merged file half-written: every row committed as parts
    ("unlink_parts:2", 64),  # the merged file in place, one part removed, three left
])
def test_kill_inside_a_cache_write(tmp_path, monkeypatch, kill_in, committed_rows):
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 64)
    args = ["--batch-size", "8", "--commit-every", "16"]
    cache, reference = tmp_path / "c", tmp_path / "reference"
    extract(ExtractConfig(data=data, cache=reference, encoders=["probe-text"], batch_size=8, commit_every=16))
    process = spawn(["extract", data, "-e", "probe-text", "-c", cache, *args], kill_in=kill_in)
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    check_readable(cache)
    if kill_in.startswith("write_rows"):
        leftovers = [p for p in files_under(cache) if ".tmp" in p]
        assert leftovers, "the half-written file is where the kill left it"
        assert FeatureCache(cache).feature_names() == [] or kill_in == "unlink_parts:2"
    assert len(committed_ids(cache, "probe-text")) == committed_rows
    log = tmp_path / "log"
    output = resume_in_process(monkeypatch, ["extract", data, "-e", "probe-text", "-c", cache, *args], log)
    assert summary(output, "probe-text")[0] == 64 - committed_rows == len(logged_ids(log))
    assert_same_cache(cache, reference, "probe-text")


def test_concurrent_extracts_and_a_reader(tmp_path, monkeypatch):
    """A second extract on a busy cache fails fast with a clear message; a reader meanwhile always sees a
    whole file (the old or the new one), never a half-written one."""
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 300)
    cache = tmp_path / "c"
    extract(ExtractConfig(data=data, cache=cache, encoders=["probe-text"]))
    old_ids = list(FeatureCache(cache).read("probe-text").rows.ids)
    text_table(tmp_path / "d.csv", 600)
    log, gate = tmp_path / "log", tmp_path / "gate"
    # It encodes one batch, then holds the cache until the gate opens.
    first = spawn(["extract", data, "-e", "probe-text", "-c", cache, "--batch-size", "8", "--commit-every", "8"],
                  log=log, gate=gate)
    try:
        assert wait_for(lambda: log.exists(), 60, first)
        second = spawn(["extract", data, "-e", "probe-text", "-c", cache])
        output, _ = second.communicate(timeout=600)
        assert second.returncode == 1 and "is in use by another feat process" in output, output
        assert first.poll() is None, "refused while the first run holds the cache (the gate is still shut)"
        new_ids = [f"r{i:05d}" for i in range(600)]
        seen = set()

        def read_whole_file():
            rows = FeatureCache(cache).read("probe-text").rows
            assert list(rows.ids) in (old_ids, new_ids) and rows.matrix.shape == (len(rows), 8)
            seen.add(len(rows))

        read_whole_file()  # while the first run holds the cache, the old file is whole and readable
        gate.touch()
        while first.poll() is None:
            read_whole_file()
            time.sleep(0.005)
        assert first.returncode == 0 and seen >= {300}
    finally:
        first.kill()
        first.wait()
    final = FeatureCache(cache).read("probe-text").rows
    assert len(final) == 600 and final.valid.all()


@pytest.mark.slow
def test_twenty_random_kills_with_minilm(tmp_path):
    """20 kills of the real MiniLM at random moments (most after a commit, so every run makes progress)."""
    data = text_table(tmp_path / "d.csv", 3000, max_words=60)
    args = ["--batch-size", "16", "--commit-every", "32"]
    cache, reference = tmp_path / "c", tmp_path / "reference"
    cli("extract", data, "-e", "minilm", "-c", reference, *args)
    seed = int(os.environ.get("FEAT_TEST_SEED", random.randrange(1 << 30)))
    print(f"FEAT_TEST_SEED={seed} reproduces this kill schedule")  # pytest shows it when the test fails
    rng = random.Random(seed)
    parts = FeatureCache(cache).parts_dir("minilm")
    for k in range(20):
        count = len(list(parts.glob("part-*.h5"))) if parts.exists() else 0
        before = committed_ids(cache, "minilm")
        process = spawn(["extract", data, "-e", "minilm", "-c", cache, *args])
        if k % 5 == 4:
            time.sleep(rng.uniform(0.0, 3.0))  # now and then during start-up
        else:
            wait_for(lambda: parts.exists() and len(list(parts.glob("part-*.h5"))) > count, 120, process)
            time.sleep(rng.uniform(0.0, 1.0))
        assert process.poll() is None, f"seed {seed}: run {k} finished before its kill"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        check_readable(cache)
        assert before <= committed_ids(cache, "minilm"), f"seed {seed}: committed rows lost"
    before = committed_ids(cache, "minilm")
    output = finish(spawn(["extract", data, "-e", "minilm", "-c", cache, *args]), timeout=900)
    encoded, _, reused = summary(output, "minilm")
    assert (encoded, reused) == (3000 - len(before), len(before)), f"seed {seed}"
    assert_same_cache(cache, reference, "minilm")
