"""`feat info`: a human summary of a cache folder."""

from __future__ import annotations

import json
from pathlib import Path

from feat.cache.store import FeatureCache


def describe(root: Path) -> str:
    cache = FeatureCache(root)
    items = cache.read_items()
    lines = [f"cache {root}: {len(items)} items "
             f"({', '.join(f'{s} {n}' for s, n in items['split'].value_counts().items())})"]
    names = cache.feature_names()
    if not names:
        lines.append("  no feature sets yet")
    for name in names:
        fs = cache.read(name, rows=False)
        a = fs.attrs
        fp = fs.fingerprint
        lines.append(f"  {name}: {a['n_rows']} rows, {a['n_valid']} valid, dim {a['dim']}, {a['dtype']} "
                     f"{a['format']}, created {a['created']}, {cache.size_on_disk(name) / 2**20:.1f} MiB")
        lines.append(f"    fingerprint {a['fingerprint_id']}: encoder {fp['encoder']}, model {fp['model']}, "
                     f"weights {fp['weights'][:40]}, compute {fp['compute_dtype']}, feat {fp['feat_version']}")
        lines.append(f"    preprocessing {json.dumps(fp['preprocessing'], sort_keys=True)[:200]}")
        if cache.parts_dir(name).exists():
            lines.append("    (an unfinished extraction left committed parts: the next extract resumes them)")
    return "\n".join(lines)
