"""`feat info`: a human summary of a cache folder."""

from __future__ import annotations

import json
from pathlib import Path

from feat.cache.integrity import opened
from feat.cache.store import FeatureCache


def describe(root: Path) -> str:
    """Every file described is read whole against its checksums first: a damaged one is an error naming it
    (a summary of bookkeeping alone would call a bit-rotted matrix fine)."""
    cache = FeatureCache(root)
    items = cache.read_items()
    for path in [cache.items_path, *(cache.feature_path(name) for name in cache.feature_names())]:
        with opened(path) as r:
            r.verify_all()
    lines = [f"cache {root}: {len(items)} items "
             f"({', '.join(f'{s} {n}' for s, n in items['split'].value_counts().items())})"]
    item_ids = items["id"].to_numpy(dtype=object)
    names = cache.feature_names()
    sharded = {name: cache.shard_manifests(name) for name in cache.sharded_names()}
    unfinished = [n for n in cache.unfinished_names() if n not in names and n not in sharded]
    if not names and not unfinished and not sharded:
        lines.append("  no feature sets yet")
    for name in unfinished:
        rows = cache.committed(name, cache.fingerprint(name), matrix=False)
        lines.append(f"  {name}: unfinished, {len(rows) if rows is not None else 0} rows committed, no complete "
                     "file yet (the next extract resumes it)")
    for name, manifests in sharded.items():
        started = ", ".join(m.shard.label for m in sorted(manifests, key=lambda m: m.shard.index))
        lines.append(f"  {name}: sharded extraction (shards started: {started}); `feat merge {root}` joins it "
                     "once every shard is done")
    for name in names:
        fs = cache.read(name, rows=False)
        a = fs.attrs
        fp = fs.fingerprint
        lines.append(f"  {name}: {a['n_rows']} rows, {a['n_valid']} valid, dim {a['dim']}, {a['dtype']} "
                     f"{a['format']}, created {a['created']}, {cache.size_on_disk(name) / 2**20:.1f} MiB")
        lines.append(f"    fingerprint {a['fingerprint_id']}: encoder {fp['encoder']}, model {fp['model']}, "
                     f"weights {fp['weights'][:40]}, compute {fp['compute_dtype']}, feat {fp['feat_version']}")
        lines.append(f"    preprocessing {json.dumps(fp['preprocessing'], sort_keys=True)[:200]}")
        ids = cache.read_flags(name).ids
        if len(ids) != len(item_ids) or not (ids == item_ids).all():
            # items.h5 follows the latest extract; a feature set not in it keeps the table it was made from.
            missing = len(set(item_ids) - set(ids))
            lines.append(f"    behind the table: {missing} of the {len(item_ids)} items have no row here, "
                         f"{len(set(ids) - set(item_ids))} rows are of items no longer in it, or the order "
                         f"differs; re-run `feat extract` with encoder {fp['encoder']} to align it")
        if cache.parts_dir(name).exists():
            lines.append("    (an unfinished extraction left committed parts: the next extract resumes them)")
    return "\n".join(lines)
