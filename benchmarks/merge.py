"""Merge memory: peak RSS of the final merge of a large feature set ÷ the size of its matrix.

The merge (`FeatureCache.finalize`, run by the last step of `feat extract` and by `feat merge`) joins the
committed parts into features/<name>.h5 in table order. Here `--rows` random float32 rows of `--dim` columns
are committed as parts of 1,024 rows (what `feat extract` commits), in two orders:
- table order: the parts hold consecutive rows (image encoders, which keep the table's order);
- scattered: rows in a random order (text encoders sort by length, so a part's rows land anywhere).
Each merge runs in a fresh child process; its peak RSS (ru_maxrss) minus that of a child that only imports
the same modules and reads the bookkeeping is what the merge itself needed. The stored matrix is checked
against the rows committed.  Run: python benchmarks/merge.py [--rows 200000] [--dim 768]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import _common as C

PART_ROWS = 1024

# The child: open the cache, finalize (or, as the baseline, only decide which rows to take).
CHILD = """
import sys
from feat.cache import FeatureCache
cache, order, mode = FeatureCache(sys.argv[1]), sys.argv[2], sys.argv[3]
ids = [f"item{i:07d}" for i in range(int(sys.argv[4]))]
fingerprint = {"encoder": "bench", "order": order}
if mode == "merge":
    cache.finalize(order, ids, ids, fingerprint, {}, "bench")
else:
    cache.committed(order, fingerprint, matrix=False, want=dict(zip(ids, ids)))
"""


def commit(cache_dir: Path, name: str, rows: int, dim: int, scattered: bool) -> np.ndarray:
    """Commit the rows as parts; returns the matrix in table order (for the check)."""
    from feat.cache import FeatureCache, FeatureRows

    cache = FeatureCache(cache_dir)
    rng = np.random.default_rng(0)
    order = rng.permutation(rows) if scattered else np.arange(rows)
    matrix = np.empty((rows, dim), dtype=np.float32)
    fingerprint = {"encoder": "bench", "order": name}
    for start in range(0, rows, PART_ROWS):
        index = order[start:start + PART_ROWS]
        block = rng.standard_normal((len(index), dim), dtype=np.float32)
        matrix[index] = block
        ids = np.array([f"item{i:07d}" for i in index], dtype=object)
        cache.commit_part(name, FeatureRows(ids, ids.copy(), np.ones(len(ids), dtype=bool),
                                            np.full(len(ids), "", dtype=object), block), fingerprint)
    return matrix


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], rows=200_000, rounds=None)
    p.add_argument("--dim", type=int, default=768)
    args = C.start(p)
    from feat.cache import FeatureCache

    rows = []
    with C.scratch(args) as folder:
        for name, scattered in (("table-order", False), ("scattered", True)):
            cache = folder / f"cache-{name}"
            expected = commit(cache, name, args.rows, args.dim, scattered)  # held here, not in the children
            mib = expected.nbytes / 2**20
            child = [sys.executable, "-c", CHILD, str(cache), name]
            _, base = C.child_peak_rss_mib([*child, "plan", str(args.rows)])
            seconds, peak = C.child_peak_rss_mib([*child, "merge", str(args.rows)])
            started = time.perf_counter()
            stored = FeatureCache(cache).read_matrix(name).rows.matrix
            read_seconds = time.perf_counter() - started
            ok = np.array_equal(stored, expected)
            rows.append([name, f"{args.rows} x {args.dim}", f"{mib:.0f}", f"{seconds:.1f}", f"{base:.0f}",
                         f"{peak:.0f}", f"**{(peak - base) / mib:.2f}**", f"{read_seconds:.2f}", C.verdict(ok)])
            del stored, expected
    headers = ["parts in", "rows x dim", "matrix MiB", "merge s (child)", "baseline peak RSS MiB",
               "merge peak RSS MiB", "(merge - baseline) ÷ matrix", "read back s", "stored = committed"]
    C.report(f"Merge memory ({PART_ROWS}-row parts, float32, fresh child process per merge)",
             C.table(headers, rows))


if __name__ == "__main__":
    main()
