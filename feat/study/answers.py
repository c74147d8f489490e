"""The study's answers: the best configuration of each group, and the paired test "does the image help?".

Everything is chosen by the mean DEV metric over seeds (the ablation's ranking, ties by dev loss); test
numbers are reported, never used to choose. The paired test is feat.fuse.stats.paired_bootstrap on the test
predictions the ablation's runs wrote, the same statistic `feat ablate` reports against its best unimodal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feat.errors import FeatError
from feat.fuse.stats import paired_bootstrap
from feat.study.grid import FUSION, GROUPS, IMAGE_ONLY, JOINT_MODEL, TEXT_ONLY
from feat.study.preset import IMAGE, JOINT, TEXT, Lineup


@dataclass
class Comparison:
    multimodal: str  # "features / strategy" of the best multimodal configuration by dev
    text_only: str  # of the best text-only configuration by dev
    delta: float  # seed-averaged test metric, multimodal minus text-only
    p_value: float  # two-sided, paired bootstrap over the test items
    n_test: int  # test items both were scored on
    reason: str = ""  # why the test could not be run ("" when it was)


def best_per_group(table: pd.DataFrame) -> dict[str, pd.Series | None]:
    """`table`: the ablation's summary ranked by dev, with a `group` column."""
    return {g: (table[table["group"] == g].iloc[0] if (table["group"] == g).any() else None) for g in GROUPS}


def name(row: pd.Series) -> str:
    return f"{row['features']} / {row['strategy']}"


@dataclass
class Missing:
    """Why a group has no configuration: the skipped encoders behind it with their reasons, or a note."""

    skipped: list[tuple[str, str]]  # (encoder or pair, reason)
    note: str = ""  # when no skip explains it (e.g. the study had no such encoder)

    def full(self) -> str:
        return "none available: " + ("; ".join(f"{n}: {why}" for n, why in self.skipped) or self.note)

    def short(self) -> str:
        return "none available: " + (f"{', '.join(n for n, _ in self.skipped)} skipped" if self.skipped
                                     else self.note)


def missing_reasons(lineup: Lineup, available: set[str], skipped: dict[str, str],
                    pairs_skipped: list[tuple[str, str]]) -> dict[str, Missing]:
    """Why each group may be empty: its skipped encoders with their reasons, or that the study had none."""
    roles = {e.feature: e.role for e in lineup.encoders}

    def of(role: str) -> list[tuple[str, str]]:
        return [(f, why) for f, why in skipped.items() if roles.get(f) == role]

    sides = []
    for role, what in ((TEXT, "text tower"), (IMAGE, "image tower")):
        if not any(e.role == role and e.paired and e.feature in available for e in lineup.encoders):
            sides += of(role) or [(what, "none in this study")]
    return {TEXT_ONLY: Missing(of(TEXT), "no text encoder in this study"),
            IMAGE_ONLY: Missing(of(IMAGE), "no image encoder in this study"),
            FUSION: Missing(sides, "no text tower x image tower pair in this study"),
            JOINT_MODEL: Missing(of(JOINT) + pairs_skipped, "no joint encoder or dual-encoder pair in this study")}


def best_multimodal(best: dict[str, pd.Series | None]) -> pd.Series | None:
    """The better by dev of the best fusion of towers and the best joint model (the table's rank order)."""
    multimodal = [r for r in (best[FUSION], best[JOINT_MODEL]) if r is not None]
    return min(multimodal, key=lambda r: r["rank"]) if multimodal else None


def compare(ablation: Path, results: pd.DataFrame, best: dict[str, pd.Series | None], metric: str) -> Comparison:
    """Best multimodal (fusion of towers or joint, by dev) against the best text-only, on the test items."""
    top, text = best_multimodal(best), best[TEXT_ONLY]
    if top is None or text is None:
        missing = "multimodal" if top is None else "text-only"
        return Comparison("", "", float("nan"), float("nan"), 0, f"no {missing} configuration to compare")
    return _paired(ablation, results, top, text, metric)


def compare_other_text(ablation: Path, results: pd.DataFrame, table: pd.DataFrame,
                       best: dict[str, pd.Series | None], metric: str) -> list[Comparison]:
    """The best multimodal against every other text-only configuration: which text tower wins dev can be a
    matter of noise, and the answer to "does the image help?" should not silently hinge on it."""
    top, text = best_multimodal(best), best[TEXT_ONLY]
    if top is None or text is None:
        return []
    others = table[(table["group"] == TEXT_ONLY) & (table["rank"] != text["rank"])]
    return [_paired(ablation, results, top, row, metric) for _, row in others.iterrows()]


def close_call(table: pd.DataFrame, group: str, metric: str) -> str:
    """A sentence when a group's best beats its runner-up on dev by less than the larger seed std."""
    members = table[table["group"] == group]
    if len(members) < 2:
        return ""
    first, second = members.iloc[0], members.iloc[1]
    mean, std = f"dev_{metric}_mean", f"dev_{metric}_std"
    if first[mean] - second[mean] >= max(first[std], second[std]):
        return ""
    return (f"The {group} choice by dev is within seed noise: {name(first)} {first[mean]:.3f} ± {first[std]:.3f} "
            f"against {name(second)} {second[mean]:.3f} ± {second[std]:.3f}.")


def _paired(ablation: Path, results: pd.DataFrame, a: pd.Series, b: pd.Series, metric: str) -> Comparison:
    ids, y, preds_a, k = _predictions(ablation, results, a)
    ids_b, _, preds_b, _ = _predictions(ablation, results, b)
    if not np.array_equal(ids, ids_b):
        raise FeatError(f"{ablation}: the runs of {name(a)} and {name(b)} were scored on different test items")
    delta, p = paired_bootstrap(y, preds_a, preds_b, k, metric)
    return Comparison(name(a), name(b), delta, p, len(y))


def _predictions(ablation: Path, results: pd.DataFrame,
                 row: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(test ids, truth, (seeds, n) predicted class indices, number of classes) of a configuration's runs,
    from the files the runs wrote."""
    from feat.fuse import artifacts as art

    runs = results[(results["features"] == row["features"]) & (results["strategy"] == row["strategy"])]["run"]
    truth, preds, ids = None, [], None
    for run in runs:
        classes = art.read_json(ablation / run / art.CONFIG)["classes"]
        position = {c: i for i, c in enumerate(classes)}
        frame = pd.read_csv(ablation / run / "predictions_test.csv", dtype=str, keep_default_na=False)
        if ids is not None and not np.array_equal(frame["id"].to_numpy(), ids):
            raise FeatError(f"{ablation / run}: its test items differ from the other seeds'")
        ids = frame["id"].to_numpy()
        truth = np.array([position[c] for c in frame["true"]], dtype=np.int64)
        preds.append(np.array([position[c] for c in frame["pred"]], dtype=np.int64))
    return ids, truth, np.stack(preds), len(classes)
