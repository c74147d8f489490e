"""Extraction cost per encoder: wall seconds per 1,000 items on this machine, from the extract report.

Only rows that went through a forward pass count. A warm run (every row reused from the cache) measures
nothing, so the study keeps each measurement in `costs.json` of its folder, keyed by feature set and valid
only for the same fingerprint (other weights or preprocessing cost differently). Of two measurements of one
fingerprint the one over more rows is kept: the model load it includes is then spread over more items.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from feat.study.extraction import Outcome

COSTS = "costs.json"


@dataclass
class Cost:
    feature: str  # feature-set name
    encoder: str  # registry name
    model: str  # model recorded in the fingerprint
    fingerprint_id: str  # the measurement is valid for these weights and preprocessing only
    dim: int  # vector size
    rows: int  # rows of the dataset
    encoded: int  # rows through a forward pass in the measured run; 0 = no measurement
    seconds: float  # wall time of the encoder's extract step then: model load, decoding, forward, cache writes
    measured: str  # when (UTC, ISO 8601); "" without a measurement
    load_average: float  # 1-minute load average at the end of it: a busy CPU inflates the figure
    cpus: int  # logical CPUs of the machine
    torch_threads: int  # intra-op threads torch used
    device: str  # cpu | cuda:N
    fresh: bool = False  # measured by this run (not stored: a property of the run that reads it)

    @property
    def per_1000(self) -> float | None:
        return self.seconds / self.encoded * 1000 if self.encoded else None


def update_costs(out: Path, outcomes: list[Outcome], device: str) -> dict[str, Cost]:
    """The cost of every available encoder (fresh or kept from an earlier run); stores the kept ones."""
    path = Path(out) / COSTS
    stored = _read(path)
    costs = {}
    for outcome in (o for o in outcomes if o.available):
        new = _measure(outcome, device)
        old = stored.get(new.feature)
        if old is not None and old.fingerprint_id != new.fingerprint_id:
            old = None
        if new.encoded and (old is None or new.encoded >= old.encoded):
            costs[new.feature] = new
        else:
            # `new` without rows encoded says: no measurement. A kept one takes the current labels (same
            # fingerprint, so only how they are shown can differ) and keeps its numbers.
            costs[new.feature] = replace(old, model=new.model, dim=new.dim) if old else new
    _write(path, {**stored, **{f: c for f, c in costs.items() if c.encoded}})  # kept ones are rewritten as shown
    return costs


def _measure(outcome: Outcome, device: str) -> Cost:
    import torch

    from feat.cache import fingerprint_id

    report, fingerprint = outcome.report, outcome.fingerprint or {}
    return Cost(feature=outcome.encoder.feature, encoder=outcome.encoder.encoder,
                # A fitted encoder (TF-IDF) has no model; its weights entry says where they come from.
                model=str(fingerprint.get("model") or fingerprint.get("weights", "")),
                fingerprint_id=fingerprint_id(fingerprint),
                dim=report.dim, rows=report.rows, encoded=report.encoded, seconds=round(report.seconds, 3),
                measured=outcome.finished if report.encoded else "",
                load_average=round(outcome.load_average, 2), cpus=os.cpu_count() or 0,
                torch_threads=torch.get_num_threads(), device=device, fresh=bool(report.encoded))


def _read(path: Path) -> dict[str, Cost]:
    import json

    if not path.exists():
        return {}
    names = {f.name for f in fields(Cost)} - {"fresh"}
    return {feature: Cost(**{k: v for k, v in entry.items() if k in names})
            for feature, entry in json.loads(path.read_text()).items()}


def _write(path: Path, costs: dict[str, Cost]) -> None:
    from feat.fuse.artifacts import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {f: {k: v for k, v in asdict(c).items() if k != "fresh"} for f, c in sorted(costs.items())})
