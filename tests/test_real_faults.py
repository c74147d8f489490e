"""A full disk and a read-only folder for real, at every place feat writes: a small tmpfs filled to a chosen
level, a read-only mount, a folder root cannot write once its overriding capabilities are dropped.

The promise (README, "What feat guarantees"): one line, exit 2, no traceback and no crash; what was committed
is intact, and the next run with space finishes with the vectors of a run on a normal disk. Before the fix a
full disk in the middle of an HDF5 write crashed feat with a segfault (exit 139) or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from faults import (WITHOUT_ROOT_OVERRIDES, Mounts, assert_clean_refusal, feat_process, leave_free, pages)
from feat.cache import FeatureCache
from feat.extract.runner import ExtractConfig, extract
from helpers import REPO, TESTS_DIR, cli, files_under, register_test_encoders, text_table

NAME = "probe-wide"
ROWS, BATCH, COMMIT = 300, 50, 100  # three parts, then the merge
OPTIONS = ["--batch-size", str(BATCH), "--commit-every", str(COMMIT)]
MiB = 2**20


@pytest.fixture
def mounts():
    made = Mounts()
    yield made
    made.undo()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An extraction on a normal disk, and what its files take on a tmpfs: items.h5, the parts, the merge."""
    root = tmp_path_factory.mktemp("reference")
    data = text_table(root / "d.csv", ROWS)
    cache = root / "c"
    sizes = {}
    real_finalize = FeatureCache.finalize

    def measuring(self, name, *args, **kwargs):
        sizes["parts"] = sum(pages(p) for p in self.parts_dir(name).glob("part-*.h5"))
        return real_finalize(self, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        register_test_encoders(patch)
        patch.setattr(FeatureCache, "finalize", measuring)
        extract(ExtractConfig(data=data, cache=cache, encoders=[NAME], batch_size=BATCH, commit_every=COMMIT))
    sizes["items"] = pages(cache / "items.h5")
    sizes["merged"] = pages(FeatureCache(cache).feature_path(NAME))
    return data, cache, sizes


def vectors(cache) -> tuple[list, np.ndarray]:
    rows = FeatureCache(cache).read(NAME).rows
    return list(rows.ids), rows.matrix


def check_committed_files(cache) -> None:
    assert not [p for p in files_under(cache) if ".tmp" in p], "a temporary file was left behind"
    for path in cache.rglob("*.h5"):
        with h5py.File(path, "r") as f:  # every file under its real name is whole
            assert "schema" in f.attrs or "fingerprint" in f.attrs


# The free space left when the extraction starts, as a function of the reference's file sizes: the disk
# fills while writing items.h5, in the middle of the parts, or during the merge.
LEVELS = {
    "items": lambda s: s["items"] // 2,
    "a part": lambda s: s["items"] + s["parts"] // 2,
    "the merge": lambda s: s["items"] + s["parts"] + s["merged"] // 2,
}


@pytest.mark.parametrize("stage", list(LEVELS))
def test_a_full_disk_is_one_line_and_the_next_run_with_space_finishes(tmp_path, mounts, reference, monkeypatch,
                                                                       stage):
    data, ref_cache, sizes = reference
    mount = mounts.tmpfs(tmp_path / "disk", 8 * MiB)
    leave_free(mount, LEVELS[stage](sizes))
    cache = mount / "c"
    done = feat_process(["extract", data, "-e", NAME, "-c", cache, *OPTIONS])
    line = assert_clean_refusal(done, "No space left on device")
    assert {"items": "items.h5", "a part": "part-", "the merge": f"{NAME}.h5"}[stage] in line
    check_committed_files(cache)
    committed = sum(1 for _ in FeatureCache(cache).parts_dir(NAME).glob("part-*.h5")) if cache.exists() else 0
    assert committed == {"items": 0, "a part": 1, "the merge": 3}[stage]

    mounts.grow(mount, 16 * MiB)
    register_test_encoders(monkeypatch)
    output = " ".join(cli("extract", data, "-e", NAME, "-c", cache, *OPTIONS).output.split())
    assert f"{committed * COMMIT} reused" in output, output
    got, want = vectors(cache), vectors(ref_cache)
    assert got[0] == want[0] and np.array_equal(got[1], want[1]), "vectors differ from the normal-disk run"


SWEEP = r"""
import shutil, sys
import numpy as np, pandas as pd
from faults import leave_free
from feat.cache.store import FeatureCache, FeatureRows
from feat.errors import FeatError

mount, rows, levels = sys.argv[1], int(sys.argv[2]), [int(v) for v in sys.argv[3:]]
rng = np.random.default_rng(0)
ids = np.array([f"item{i:05d}" for i in range(rows)], dtype=object)
hashes = np.array([f"{i:064d}" for i in range(rows)], dtype=object)
matrix = rng.standard_normal((rows, 384)).astype(np.float32)
fingerprint, half = {"encoder": "x"}, rows // 2


def write_all(cache):
    with cache.lock():
        cache.write_items(pd.DataFrame({"id": ids, "split": "train", "text": [f"text {i}" for i in ids]}), {})
        done = cache.committed("x", fingerprint, matrix=False)
        for part in (slice(0, half), slice(half, rows)):
            if done is None or not set(ids[part]) <= set(done.ids):
                cache.commit_part("x", FeatureRows(ids[part], hashes[part], np.ones(rows - half, bool),
                                                   np.full(rows - half, "", dtype=object), matrix[part]), fingerprint)
        cache.finalize("x", list(ids), list(hashes), fingerprint, {}, "x")
        cache.write_bad_rows()


for level in levels:
    cache = FeatureCache(f"{mount}/c")
    leave_free(cache.root.parent, level)
    try:
        write_all(cache)
        outcome = "complete"
    except FeatError as exc:
        outcome = f"exit {exc.exit_code}: {exc}"
    (cache.root.parent / "filler").unlink()
    write_all(cache)  # with space: the job finishes from what was committed
    assert np.array_equal(cache.read("x").rows.matrix, matrix), f"{level}: other vectors"
    shutil.rmtree(cache.root)
    print(level, outcome, flush=True)
"""


def test_every_fill_level_of_the_cache_writes_is_a_clean_error(tmp_path, mounts):
    """items.h5, two parts, the merge and bad_rows.csv written by the cache API on a disk filled to 14 levels
    from nothing free to 1.6 MB free: each ends in one clean error or completes, then completes on a grown
    disk. HDF5 fails differently by where the disk fills (a data write, a dataset close, the final flush):
    the segfault needed the disk to fill as a small dataset was closed. One process for every level: after a
    failure HDF5 must be fit for the next file, and a crash names the level it died at."""
    mount = mounts.tmpfs(tmp_path / "disk", 8 * MiB)
    rows = 400  # about 0.65 MB of vectors: items.h5 ~0.1 MB, the parts and the merge ~0.65 MB each
    levels = np.linspace(0, 1.6 * MiB, 14).astype(int)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", SWEEP, str(mount), str(rows), *map(str, levels)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and "Traceback" not in output and "Exception ignored" not in output, \
        f"exit {done.returncode} (-11: a segfault) after the levels printed:\n{output}"
    outcomes = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert len(outcomes) == len(levels)
    for level, outcome in outcomes.items():
        assert outcome == "complete" or (outcome.startswith("exit 2: could not write") and
                                         outcome.endswith("(free some space and run again: what was committed "
                                                          "is kept)")), f"{level} bytes free: {outcome}"
    # The levels reached every write: items.h5, the first and the second part, the merge
    failed = " ".join(outcomes.values())
    assert all(name in failed for name in ("items.h5", "part-000000", "part-000001", "x.h5")), outcomes


def test_a_full_disk_when_bad_rows_csv_is_rewritten(tmp_path, mounts, reference, monkeypatch):
    data = reference[0]
    mount = mounts.tmpfs(tmp_path / "disk", 8 * MiB)
    cache = mount / "c"
    register_test_encoders(monkeypatch)
    cli("extract", data, "-e", NAME, "-c", cache, *OPTIONS)
    before = (cache / "bad_rows.csv").read_bytes()
    leave_free(mount, 0)
    done = feat_process(["extract", data, "-e", NAME, "-c", cache, *OPTIONS])  # warm: only bad_rows.csv
    assert "bad_rows.csv" in assert_clean_refusal(done, "No space left on device")
    assert (cache / "bad_rows.csv").read_bytes() == before
    check_committed_files(cache)


def test_a_read_only_mount_is_one_line_and_changes_nothing(tmp_path, mounts, reference, monkeypatch):
    data = reference[0]
    cache = tmp_path / "c"
    register_test_encoders(monkeypatch)
    cli("extract", data, "-e", NAME, "-c", cache, *OPTIONS)
    before = {p: (cache / p).read_bytes() for p in files_under(cache) if (cache / p).is_file()}
    more = text_table(tmp_path / "more.csv", ROWS + 40)  # 40 new rows to encode
    mounts.read_only(cache)
    done = feat_process(["extract", more, "-e", NAME, "-c", cache, *OPTIONS])
    assert_clean_refusal(done, "Read-only file system")
    assert {p: (cache / p).read_bytes() for p in files_under(cache) if (cache / p).is_file()} == before


def _without_overrides(tmp_path) -> list[str]:
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    done = subprocess.run([*WITHOUT_ROOT_OVERRIDES, "touch", str(probe / "x")], capture_output=True, text=True)
    if "Permission denied" not in done.stderr:
        pytest.skip("dropping root's permission overrides is not permitted here (setpriv --bounding-set: "
                    f"{done.stderr.strip() or 'the write went through'}); as another user a 0555 folder is "
                    "read-only without it")
    return WITHOUT_ROOT_OVERRIDES if os.geteuid() == 0 else []


@pytest.mark.parametrize("where", ["the cache folder", "its features folder"])
def test_a_read_only_folder_is_one_line_and_changes_nothing(tmp_path, reference, monkeypatch, where):
    prefix = _without_overrides(tmp_path)
    data = reference[0]
    cache = tmp_path / "c"
    register_test_encoders(monkeypatch)
    cli("extract", data, "-e", NAME, "-c", cache, *OPTIONS)
    before = {p: (cache / p).read_bytes() for p in files_under(cache) if (cache / p).is_file()}
    more = text_table(tmp_path / "more.csv", ROWS + 40)
    folder = cache if where == "the cache folder" else cache / "features"
    folder.chmod(0o555)
    try:
        done = feat_process(["extract", more, "-e", NAME, "-c", cache, *OPTIONS], prefix)
    finally:
        folder.chmod(0o755)
    assert_clean_refusal(done, "Permission denied")
    after = {p: (cache / p).read_bytes() for p in files_under(cache) if (cache / p).is_file()}
    if where == "its features folder":  # items.h5 holds the new table, as after a kill before the first commit
        after.pop("items.h5"), before.pop("items.h5")
    assert after == before
    output = " ".join(cli("extract", more, "-e", NAME, "-c", cache, *OPTIONS).output.split())
    assert "40 encoded" in output and f"{ROWS} reused" in output, output


def test_a_new_cache_in_a_read_only_folder(tmp_path):
    prefix = _without_overrides(tmp_path)
    data = text_table(tmp_path / "d.csv", 6)
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        done = feat_process(["extract", data, "-e", "probe-text", "-c", parent / "c"], prefix)
    finally:
        parent.chmod(0o755)
    assert_clean_refusal(done, "Permission denied")
    assert not any(parent.iterdir())


# ----- run folders, ablation, predict cache ------------------------------------------------------------
@pytest.fixture(scope="module")
def fused(tmp_path_factory, reference):
    """A fuse run on the reference cache (label pos/neg)."""
    data, cache, _ = reference
    run = tmp_path_factory.mktemp("fused") / "run"
    cli("fuse", "--cache", cache, "--features", NAME, "--strategy", "single", "--label", "label", "--out", run,
        "--epochs", "2", "--batch-size", "64")
    return data, cache, run


@pytest.mark.parametrize("free", [0, 12 * 1024])  # nothing, or the first small files of the run
def test_a_full_disk_under_a_fuse_run_folder(tmp_path, mounts, fused, free):
    _, cache, _ = fused
    mount = mounts.tmpfs(tmp_path / "disk", 2 * MiB)
    leave_free(mount, free)
    done = feat_process(["fuse", "--cache", cache, "--features", NAME, "--strategy", "single", "--label", "label",
                         "--out", mount / "run", "--epochs", "2", "--batch-size", "64"])
    assert_clean_refusal(done, "No space left on device", progress_only=False)
    assert not (mount / "run" / "metrics.json").exists(), "metrics.json marks a complete run: never written"
    assert not [p for p in files_under(mount) if ".tmp" in p]


def test_a_full_disk_under_an_ablation(tmp_path, mounts, fused):
    _, cache, _ = fused
    mount = mounts.tmpfs(tmp_path / "disk", 2 * MiB)
    leave_free(mount, 8 * 1024)
    done = feat_process(["ablate", "--cache", cache, "--features", NAME, "--strategies", "single", "--seeds", "1",
                         "--label", "label", "--out", mount / "abl", "--workers", "1", "--no-curves",
                         "--epochs", "2", "--batch-size", "64"])
    assert_clean_refusal(done, "No space left on device", progress_only=False)
    assert not [p for p in files_under(mount) if ".tmp" in p]


def test_a_full_disk_under_the_predict_cache(tmp_path, mounts, fused, monkeypatch):
    data, _, run = fused
    register_test_encoders(monkeypatch)
    normal = tmp_path / "normal.csv"
    cli("predict", run, data, "--out", normal, "--cache", tmp_path / "pc")
    mount = mounts.tmpfs(tmp_path / "disk", 4 * MiB)
    leave_free(mount, 200 * 1024)  # items.h5 fits, the vectors (~0.46 MB) do not
    out = tmp_path / "p.csv"
    done = feat_process(["predict", run, data, "--out", out, "--cache", mount / "pc"])
    assert_clean_refusal(done, "No space left on device", progress_only=False)
    assert not out.exists()
    mounts.grow(mount, 16 * MiB)
    done = feat_process(["predict", run, data, "--out", out, "--cache", mount / "pc"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_bytes() == normal.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("megabytes", [1.1, 1.6, 1.9, 2.3])
def test_minilm_on_a_tmpfs_of_one_to_two_megabytes(tmp_path_factory, tmp_path, mounts, megabytes):
    """The audit's case: `feat extract DATA.csv -e minilm` (742 rows) on a tmpfs of 1.1 to 2.3 MB died with
    exit 139 (and 91 lines) or exit 1 (a message over 2 lines). Now: exit 2, one line; with the mount grown,
    the run completes with the vectors of an extraction on a normal disk."""
    from feat.synthetic import make_synthetic_dataset

    root = tmp_path_factory.getbasetemp() / "minilm-742"
    data = root / "data" / "data.csv"
    if not (root / "reference" / "features" / "minilm.h5").exists():
        make_synthetic_dataset(root / "data", rows=742, image_size=32)
        cli("extract", data, "-e", "minilm", "-c", root / "reference")
    mount = mounts.tmpfs(tmp_path / "disk", int(megabytes * 1e6))
    cache = mount / "c"
    assert_clean_refusal(feat_process(["extract", data, "-e", "minilm", "-c", cache]), "No space left on device")
    mounts.grow(mount, 16 * MiB)
    cli("extract", data, "-e", "minilm", "-c", cache)
    got, want = FeatureCache(cache).read("minilm").rows, FeatureCache(root / "reference").read("minilm").rows
    assert list(got.ids) == list(want.ids) and np.array_equal(got.matrix, want.matrix)
