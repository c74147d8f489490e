"""Cache checksums: reading a verified float32 matrix, feat's xxh3-128 block digests against HDF5's fletcher32.

For each shape, the same random matrix is stored four ways and read whole (warm page cache, interleaved
`--rounds` times):
- npy: `np.load` from /dev/shm (the reference of benchmarks/training_input.py);
- bare: a contiguous HDF5 dataset without any checksum, `read_direct` (feat before checksums);
- xxh3: feat's format (`integrity.create` + `reserve` + `seal`) read by `Reader.matrix`: pread a few MiB at a
  time, hash each 256 KiB block (what training reads through `read_matrix`);
- fletcher32: a chunked dataset (256 KiB chunks) with HDF5's fletcher32 filter, `read_direct` (HDF5 verifies
  every chunk).
It also times the hashes alone on the matrix's bytes (xxh3-128, crc32, sha256). Run: python
benchmarks/checksums.py [--rounds 15]
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

import _common as C

SHAPES = [(4511, 384), (4511, 1280), (50_000, 768)]  # MVSA-Single minilm, effnet; a larger text set


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=None, rounds=15)
    args = C.start(p)
    import h5py
    import xxhash

    from feat.cache.integrity import BLOCK_BYTES, create, opened, reserve, seal

    ram = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    rows, hashes = [], []
    with C.scratch(args) as folder, tempfile.TemporaryDirectory(dir=ram) as shm:
        for n, dim in SHAPES:
            matrix = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
            npy, bare, feat, fletcher = (Path(shm) / "m.npy", folder / "bare.h5", folder / "feat.h5",
                                         folder / "fletcher.h5")
            np.save(npy, matrix)
            with h5py.File(bare, "w") as f:
                f.create_dataset("X", data=matrix)
            with create(feat) as f:
                reserve(f.create_dataset("X", data=matrix))
                seal(f)
            with h5py.File(fletcher, "w") as f:
                f.create_dataset("X", data=matrix, chunks=(max(1, BLOCK_BYTES // (dim * 4)), dim), fletcher32=True)

            def direct(path):
                with h5py.File(path, "r") as f:
                    out = np.empty(matrix.shape, np.float32)
                    f["X"].read_direct(out)
                    return out

            def verified():
                with opened(feat) as r:
                    return r.matrix(r.node("X"))

            variants = {"npy": lambda: np.load(npy), "bare": lambda: direct(bare), "xxh3": verified,
                        "fletcher32": lambda: direct(fletcher)}
            for load in variants.values():
                assert np.array_equal(load(), matrix)
            times, _ = C.interleave(variants, args.rounds)
            ms = {k: C.median(v) * 1e3 for k, v in times.items()}
            rows.append([f"{n} x {dim}", f"{matrix.nbytes / 2**20:.0f}", *(f"{ms[k]:.1f}" for k in variants),
                         f"**{times.ratio('npy', 'xxh3'):.2f}**", f"{times.ratio('npy', 'fletcher32'):.2f}",
                         f"{times.ratio('xxh3', 'bare'):.2f}", f"{times.ratio('fletcher32', 'bare'):.2f}"])
            view = memoryview(matrix).cast("B")
            digests = {"xxh3-128": lambda: xxhash.xxh3_128_digest(view), "crc32": lambda: zlib.crc32(view),
                       "sha256": lambda: hashlib.sha256(view).digest()}
            hash_times, _ = C.interleave(digests, args.rounds)
            hashes.append([f"{n} x {dim}", *(f"{matrix.nbytes / 2**30 / C.median(v):.1f}"
                                              for v in hash_times.values())])
    C.report(f"Reading a float32 matrix whole (medians of {args.rounds} interleaved rounds, warm page cache)",
             C.table(["rows x dim", "MiB", "npy ms", "bare ms", "xxh3 (feat) ms", "fletcher32 ms",
                      "npy ÷ xxh3", "npy ÷ fletcher32", "xxh3 ÷ bare", "fletcher32 ÷ bare"], rows))
    C.report("Hashing the matrix's bytes (GiB/s)", C.table(["rows x dim", "xxh3-128", "crc32", "sha256"], hashes))


if __name__ == "__main__":
    main()
