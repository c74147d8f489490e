"""Cache integrity (issue 13): damage is found and named, never read as valid, and `feat extract` repairs it.

The fuzz cases are seeded: FEAT_FUZZ_SEED (default 0) and FEAT_FUZZ_CASES (cases per file kind and kind of
damage, default 12) reproduce a failure, whose message names the seed, the file kind and the damage.
Every case must end either in one clear error (exit 2, no traceback) or in results identical to those of
the undamaged files; never in other numbers with exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from feat.cache import FeatureCache
from feat.synthetic import make_synthetic_dataset
from helpers import TEST_ENCODERS, cli

SEED = int(os.environ.get("FEAT_FUZZ_SEED", "0"))
CASES = int(os.environ.get("FEAT_FUZZ_CASES", "12"))
SVD = ["-e", "tfidf", "--svd-dim", "8"]  # dense TF-IDF rows: each row's vector depends on it alone


@pytest.fixture(scope="module", autouse=True)
def command_built_once():
    """typer rebuilds the click command on every CliRunner.invoke (~0.1 s); the fuzz runs hundreds."""
    import typer.testing

    built = {}
    original = typer.testing._get_command
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.testing, "_get_command", lambda app: built.setdefault(id(app), original(app)))
        yield


@pytest.fixture(scope="module")
def encoders():
    from feat.extract import registry

    with pytest.MonkeyPatch.context() as patch:
        for name, target in TEST_ENCODERS.items():
            patch.setitem(registry.ENCODERS, name, target)
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, encoders):
    """A cache (TF-IDF sparse, probe-text and tiny-image dense), a run on it, and a sharded TF-IDF extraction
    left unmerged (parts and manifests)."""
    root = tmp_path_factory.mktemp("integrity")
    data = make_synthetic_dataset(root / "syn", rows=60, image_size=32)
    cache, run, sharded = root / "C", root / "R", root / "S"
    cli("extract", data, "-e", "tfidf", "-e", "probe-text", "-e", "tiny-image", "-c", cache, "--batch-size", "8")
    cli("fuse", "--cache", cache, "--features", "tfidf,probe-text", "--strategy", "concat", "--label", "label",
        "--out", run, "--epochs", "2", "--common-dim", "8", "--batch-size", "16")
    for shard in ("0/2", "1/2"):
        cli("extract", data, *SVD, "-c", sharded, "--shard", shard, "--commit-every", "8", "--batch-size", "8")
    return {"data": data, "cache": cache, "run": run, "sharded": sharded}


# ----- damage ------------------------------------------------------------------------------------------
def damaged_bytes(original: bytes, how: str, rng: np.random.Generator, values: tuple[int, int] | None = None) -> bytes:
    """`values`: (offset, size) of the stored vectors, where "flip values" flips bytes (random offsets in a
    small file mostly hit its metadata and strings, which HDF5's own checksums already guard)."""
    if how == "truncate":
        return original[: int(rng.integers(0, len(original)))]
    data = bytearray(original)
    start, stop = (values[0], values[0] + values[1]) if how == "flip values" else (0, len(data))
    for position in rng.integers(start, stop, int(rng.integers(1, 9))):
        data[position] ^= int(rng.integers(1, 256))
    return bytes(data)


def value_region(path: Path) -> tuple[int, int] | None:
    if path.suffix != ".h5":
        return None
    with h5py.File(path, "r") as f:
        node = f["X"]["data"] if isinstance(f["X"], h5py.Group) else f["X"]
        return node.id.get_offset(), node.id.get_storage_size()


def cases(kind: str, modes=("truncate", "flip")):
    for how in modes:
        for case in range(CASES):
            yield how, case, np.random.default_rng([SEED, case, how == "flip", sum(map(ord, kind))])


def assert_clear_error(result, path: Path, label: str) -> None:
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, \
        f"{label}: not a clean exit\n{result.output}\n{result.exception!r}"
    lines = result.output.strip().splitlines()
    assert lines and lines[-1].startswith("error:") and path.name in lines[-1], f"{label}: {result.output}"


def matrices(cache: Path) -> dict:
    store = FeatureCache(cache)
    out = {}
    for name in store.feature_names():
        rows = store.read(name).rows
        matrix = rows.matrix.toarray() if hasattr(rows.matrix, "toarray") else rows.matrix
        out[name] = (list(rows.ids), matrix.tobytes(), rows.valid.tobytes(), list(rows.reason))
    return out


# ----- fuzz: files read by training and evaluation -----------------------------------------------------
READ_KINDS = {"items.h5": "C/items.h5", "dense feature file": "C/features/probe-text.h5",
              "sparse feature file": "C/features/tfidf.h5", "model.safetensors": "R/model.safetensors",
              "config.json": "R/config.json"}


@pytest.mark.parametrize("kind", READ_KINDS)
def test_fuzz_damaged_files_read_by_evaluate_and_info(world, kind):
    folder, name = READ_KINDS[kind].split("/", 1)
    path = world["cache" if folder == "C" else "run"] / name
    evaluate = ["evaluate", world["run"], "--split", "test", "--cache", world["cache"]]
    reference = cli(*evaluate).output
    info = cli("info", world["cache"]).output
    original = path.read_bytes()
    values = value_region(path) if "feature" in kind else None
    try:
        for how, case, rng in cases(kind, ("truncate", "flip", "flip values") if values else ("truncate", "flip")):
            label = f"FEAT_FUZZ_SEED={SEED} {kind} {how} case {case}"
            path.write_bytes(damaged_bytes(original, how, rng, values))
            result = cli(*evaluate, expect=None)
            if result.exit_code == 0:
                assert result.output == reference, f"{label}: other results with exit 0\n{result.output}"
            else:
                assert result.exit_code == 2, f"{label}: exit {result.exit_code}\n{result.output}"
                assert_clear_error(result, path, label)
            if folder == "C":
                result = cli("info", world["cache"], expect=None)
                if result.exit_code == 0:
                    assert result.output == info, f"{label}: feat info says other things with exit 0"
                else:
                    assert_clear_error(result, path, label)
                verdict = cli("verify", world["cache"], expect=None)
                assert verdict.exit_code in (0, 1) and "Traceback" not in verdict.output, label
                if result.exit_code:
                    assert verdict.exit_code == 1 and f"damaged: {path}" in verdict.output, label
    finally:
        path.write_bytes(original)
    assert cli(*evaluate).output == reference


# ----- fuzz: files read by a resumed extraction and a merge ---------------------------------------------
@pytest.mark.parametrize("kind", ["part", "shard manifest"])
def test_fuzz_damaged_parts_and_manifests(world, tmp_path, kind):
    """A damaged part: the next plain extract sets it aside and re-encodes its rows. A damaged manifest:
    the merge refuses it with one line. Either way, never other vectors."""
    sharded = world["sharded"]
    (folder,) = (sharded / "features").glob("*.parts")  # tfidf-svd8.parts
    target = sorted(folder.glob("part-*.h5" if kind == "part" else "shard-*.h5"))[1]
    command = (["extract", world["data"], *SVD, "-c"] if kind == "part" else ["merge"])
    pristine = tmp_path / "pristine"
    shutil.copytree(sharded, pristine)
    cli(*command, pristine)
    reference = matrices(pristine)
    original = target.read_bytes()
    for how, case, rng in cases(kind):
        label = f"FEAT_FUZZ_SEED={SEED} {kind} {how} case {case}"
        copy = tmp_path / f"{how}-{case}"
        shutil.copytree(sharded, copy)
        damaged = copy / target.relative_to(sharded)
        damaged.write_bytes(damaged_bytes(original, how, rng))
        result = cli(*command, copy, expect=None)
        if result.exit_code == 0:
            assert matrices(copy) == reference, f"{label}: other vectors with exit 0\n{result.output}"
        else:
            assert result.exit_code == 2, f"{label}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
            assert_clear_error(result, damaged, label)
        shutil.rmtree(copy)


# ----- repair ------------------------------------------------------------------------------------------
def flip_inside(path: Path, dataset: str, fraction: float, count: int = 40) -> None:
    """Flip bits in the stored bytes of a contiguous dataset, around `fraction` of the way through it."""
    with h5py.File(path, "r") as f:
        node = f[dataset]
        offset, size = node.id.get_offset(), node.id.get_storage_size()
    data = bytearray(path.read_bytes())
    start = offset + int(size * fraction)
    for position in range(start, min(start + count, offset + size)):
        data[position] ^= 0x10
    path.write_bytes(bytes(data))


def truncate_inside(path: Path, dataset: str, fraction: float) -> None:
    with h5py.File(path, "r") as f:
        node = f[dataset]
        offset, size = node.id.get_offset(), node.id.get_storage_size()
    path.write_bytes(path.read_bytes()[: offset + int(size * fraction)])


def test_repair_re_encodes_only_lost_rows_and_equals_an_uninterrupted_extraction(world, tmp_path, monkeypatch):
    """Small checksum blocks (16 probe-text rows) so that one block of 60 rows is lost: probe-text's vectors
    depend on their batch, so they equal the uninterrupted run's only if the lost rows are re-encoded in
    the very batches that run formed."""
    import feat.cache.integrity as integrity

    monkeypatch.setattr(integrity, "BLOCK_BYTES", 512)
    cache = tmp_path / "C"
    extract = ["extract", world["data"], "-e", "tfidf", "-e", "probe-text", "-e", "tiny-image", "-c", cache,
               "--batch-size", "8"]
    cli(*extract)
    reference = matrices(cache)
    features = cache / "features"
    flip_inside(features / "probe-text.h5", "X", 0.4)
    truncate_inside(features / "tiny-image.h5", "X", 0.6)
    assert cli("verify", cache, expect=1).output.count("damaged:") == 2
    result = cli(*extract)
    assert matrices(cache) == reference
    assert "damaged file probe-text.h5" in result.output and "damaged file tiny-image.h5" in result.output
    lines = {line.split(":")[0]: line for line in result.output.splitlines() if " rows (" in line}
    encoded = {name: int(line.split("(")[1].split()[0]) if "encoded" in line else 0 for name, line in lines.items()}
    # probe-text lost rows 16-31, spread by length over 7 of its 8 batches; tiny-image (batches in table
    # order) lost rows 36-59, which lie in the batches of rows 32-59
    assert "16 row(s) lost" in result.output and encoded["probe-text"] == 52, result.output
    assert "36 verified row(s), 24 row(s) lost" in result.output and encoded["tiny-image"] == 28, result.output
    assert encoded["tfidf"] == 0
    assert len(list(features.glob("probe-text.h5.damaged-*"))) == 1  # set aside, never deleted
    assert len(list(features.glob("tiny-image.h5.damaged-*"))) == 1
    verdict = cli("verify", cache)
    assert "damaged:" not in verdict.output and "note:" in verdict.output  # the copies set aside


def test_a_damaged_items_file_is_rebuilt_from_the_data_file(world, tmp_path):
    cache = tmp_path / "C"
    shutil.copytree(world["cache"], cache)
    items = cache / "items.h5"
    items.write_bytes(items.read_bytes()[:-100])
    assert "items.h5" in cli("fuse", "--cache", cache, "--features", "probe-text", "--strategy", "single", "--out", tmp_path / "r",
                             expect=2).output
    cli("extract", world["data"], "-e", "tfidf", "-e", "probe-text", "-e", "tiny-image", "-c", cache,
        "--batch-size", "8")
    assert cli("verify", cache).exit_code == 0
    assert matrices(cache) == matrices(world["cache"])


def test_salvage_keeps_the_verified_blocks_of_a_truncated_file(tmp_path):
    """A matrix of 742 x 1280 (effnet on 742 rows): truncated to half, the rows of its first half survive."""
    from feat.cache import FeatureRows
    from feat.cache.repair import salvage

    n, dim = 742, 1280
    matrix = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    ids = np.array([f"item{i:05d}" for i in range(n)], dtype=object)
    store = FeatureCache(tmp_path / "c")
    fingerprint = {"encoder": "x"}
    store.commit_part("x", FeatureRows(ids, ids, np.ones(n, bool), np.array([""] * n, dtype=object), matrix),
                      fingerprint)
    store.finalize("x", list(ids), list(ids), fingerprint, {}, "x")
    path = store.feature_path("x")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rows, good, stored = salvage(path)
    assert stored == fingerprint and list(rows.ids) == list(ids)
    kept = np.flatnonzero(good)
    assert 200 < len(kept) < n // 2 + 1 and kept[0] == 0 and (np.diff(kept) == 1).all()
    assert np.array_equal(rows.matrix[kept], matrix[kept])


# ----- run folders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated weights", "edited weights", "edited config", "missing weights"])
def test_damaged_run_folders_are_one_clear_line(world, tmp_path, damage):
    run = tmp_path / "R"
    shutil.copytree(world["run"], run)
    weights, config = run / "model.safetensors", run / "config.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif damage == "edited weights":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0x01  # the last float's low bits: a silently different head without a checksum
        weights.write_bytes(bytes(data))
    elif damage == "edited config":
        edited = json.loads(config.read_text())
        edited["classes"] = list(reversed(edited["classes"]))  # valid JSON, valid shapes, wrong labels
        config.write_text(json.dumps(edited, indent=2))
    else:
        weights.unlink()
    named = config if damage == "edited config" else weights
    for command in (["evaluate", run, "--split", "test", "--cache", world["cache"]],
                    ["predict", run, world["data"], "--out", tmp_path / "p.csv"],
                    ["finetune", run, "--data", world["data"], "--out", tmp_path / "ft", "--max-steps", "1"]):
        result = cli(*command, expect=2)
        assert_clear_error(result, named, f"{damage}: feat {command[0]}")
    verdict = cli("verify", world["cache"], "--runs", run, expect=1)
    assert f"damaged: {named}" in verdict.output


# ----- the sequence, at the command line ---------------------------------------------------------
def test_must_work_sequence(tmp_path, tiny_model):
    """extract; flip bits inside one feature file and truncate another to half; verify exit 1 naming both;
    fuse exit 2 in one line; extract repairs (vectors equal the originals); verify exit 0."""
    data = make_synthetic_dataset(tmp_path / "syn", rows=48, image_size=32)
    cache = tmp_path / "C"
    extracts = [["-e", "tfidf"], ["-e", "hf-text", "--model", tiny_model("bert")],
                ["-e", "hf-vision", "--model", tiny_model("resnet")]]
    for args in extracts:
        cli("extract", data, *args, "-c", cache, "--batch-size", "8")
    before = matrices(cache)
    features = cache / "features"
    flip_inside(features / "hf-text.h5", "X", 0.5, count=570)
    half = (features / "hf-vision.h5").stat().st_size // 2
    (features / "hf-vision.h5").write_bytes((features / "hf-vision.h5").read_bytes()[:half])
    verdict = cli("verify", cache, expect=1).output
    assert "hf-text.h5" in verdict and "hf-vision.h5" in verdict
    fused = cli("fuse", "--cache", cache, "--features", "hf-text,hf-vision", "--strategy", "concat", "--label",
                "label", "--out", tmp_path / "R", expect=2)
    assert len(fused.output.strip().splitlines()) == 1 and "Traceback" not in fused.output
    for args in extracts:
        cli("extract", data, *args, "-c", cache, "--batch-size", "8")
    assert matrices(cache) == before
    assert cli("verify", cache).exit_code == 0
