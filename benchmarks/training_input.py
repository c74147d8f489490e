"""Training input: loading a feature matrix from the HDF5 cache ÷ from a .npy file in RAM, target >= 0.8.

For each shape, a feature set of random float32 vectors is written through feat's own cache module
(`commit_part` + `finalize`, exactly as `feat extract` stores them) and the same matrix with np.save to
/dev/shm (RAM). Then, interleaved `--rounds` times (files in the page cache after the first read):
- hdf5: `FeatureCache(dir).read_matrix(name, expected_ids=ids)`, what training calls per feature set: it holds
  the items' ids (read once from items.h5, as a .npy pipeline would need them too), so a file whose stored
  id digest matches is not asked to decode the same strings; matrix, valid flags and fingerprint are read;
- hdf5 decoding ids: `read_matrix(name)`, the same with the stored ids decoded (a caller without the ids);
- hdf5 X only: h5py `f["X"][()]`, to split the matrix read from the rest;
- npy: `np.load(path)`.
Ratio = npy seconds ÷ hdf5 seconds (1.0 = as fast as .npy). Run: python benchmarks/training_input.py [--rounds 15]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

import _common as C

TARGET = 0.8
SHAPES = [(4511, 384), (4511, 1280), (50_000, 768)]  # MVSA-Single minilm, effnet; a larger text set


def write_feature_set(cache_dir: Path, name: str, matrix: np.ndarray) -> None:
    from feat.cache import FeatureCache, FeatureRows

    n = len(matrix)
    ids = np.array([f"item{i:06d}" for i in range(n)], dtype=object)
    hashes = np.array([f"{i:064x}" for i in range(n)], dtype=object)
    rows = FeatureRows(ids, hashes, np.ones(n, dtype=bool), np.array([""] * n, dtype=object), matrix)
    cache = FeatureCache(cache_dir)
    fingerprint = {"encoder": name, "benchmark": True}
    cache.commit_part(name, rows, fingerprint)
    cache.finalize(name, list(ids), hashes=list(hashes), fingerprint=fingerprint, state={}, encoder=name)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=None, rounds=15)
    args = C.start(p)
    import h5py

    from feat.cache import FeatureCache

    ram = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    rows = []
    with C.scratch(args) as folder, tempfile.TemporaryDirectory(dir=ram) as shm:
        for n, dim in SHAPES:
            name = f"f{n}x{dim}"
            matrix = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
            write_feature_set(folder / "cache", name, matrix)
            npy = Path(shm) / f"{name}.npy"
            np.save(npy, matrix)
            cache = FeatureCache(folder / "cache")
            path = cache.feature_path(name)

            def x_only():
                with h5py.File(path, "r") as f:
                    return f["X"][()]

            ids = np.array([f"item{i:06d}" for i in range(n)], dtype=object)
            variants = {"hdf5": lambda: cache.read_matrix(name, expected_ids=ids).rows.matrix,
                        "hdf5 decoding ids": lambda: cache.read_matrix(name).rows.matrix, "hdf5 X only": x_only,
                        "npy": lambda: np.load(npy)}
            for load in variants.values():  # page cache warm, first-use costs paid
                assert np.array_equal(load(), matrix)
            times, _ = C.interleave(variants, args.rounds)
            ratio = times.ratio("npy", "hdf5")
            mib = matrix.nbytes / 2**20
            rows.append([f"{n} x {dim}", f"{mib:.0f}", f"{C.median(times['npy']) * 1e3:.1f}",
                         f"{C.median(times['hdf5']) * 1e3:.1f}", f"{C.median(times['hdf5 X only']) * 1e3:.1f}",
                         f"{mib / C.median(times['hdf5']):.0f}", f"**{ratio:.2f}**",
                         C.verdict(ratio >= TARGET), f"{C.median(times['hdf5 decoding ids']) * 1e3:.1f}",
                         f"{times.ratio('npy', 'hdf5 decoding ids'):.2f}", f"{times.ratio('npy', 'hdf5 X only'):.2f}"])
    headers = ["rows x dim", "MiB", "npy ms", "hdf5 read_matrix() ms", "hdf5 X only ms", "hdf5 read_matrix() MiB/s",
               "npy ÷ hdf5 read_matrix()", f"≥ {TARGET}", "decoding ids ms", "npy ÷ decoding ids",
               "npy ÷ hdf5 X only"]
    C.report(f"Training input (float32 features, medians of {args.rounds} interleaved rounds, warm page cache; "
             f".npy in {'/dev/shm' if ram else 'the temp folder'})", C.table(headers, rows))


if __name__ == "__main__":
    main()
