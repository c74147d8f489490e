"""The study's answers: the best configuration of each group, and the paired test "does the image help?".

Everything is chosen by the mean DEV metric over seeds (the ablation's ranking, ties by dev loss); test
numbers are reported, never used to choose. The paired test is the ablation's paired bootstrap over the test
items (the same resampled scores `feat ablate` compares with), on the configurations' test probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from feat.fuse import stats
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


def compare(evaluation, best: dict[str, pd.Series | None]) -> Comparison:
    """Best multimodal (fusion of towers or joint, by dev) against the best text-only, on the test items."""
    top, text = best_multimodal(best), best[TEXT_ONLY]
    if top is None or text is None:
        missing = "multimodal" if top is None else "text-only"
        return Comparison("", "", float("nan"), float("nan"), 0, f"no {missing} configuration to compare")
    return _paired(evaluation, top, text)


def compare_other_text(evaluation, table: pd.DataFrame, best: dict[str, pd.Series | None]) -> list[Comparison]:
    """The best multimodal against every other text-only configuration: which text tower wins dev can be a
    matter of noise, and the answer to "does the image help?" should not silently hinge on it."""
    top, text = best_multimodal(best), best[TEXT_ONLY]
    if top is None or text is None:
        return []
    others = table[(table["group"] == TEXT_ONLY) & (table["rank"] != text["rank"])]
    return [_paired(evaluation, top, row) for _, row in others.iterrows()]


def close_call(table: pd.DataFrame, group: str, metric: str) -> str:
    """A sentence when a group's best beats its runner-up on validation by less than the larger std over runs."""
    members = table[table["group"] == group]
    if len(members) < 2:
        return ""
    first, second = members.iloc[0], members.iloc[1]
    mean, std = f"val_{metric}_mean", f"val_{metric}_std"
    if first[mean] - second[mean] >= max(first[std], second[std]):
        return ""
    return (f"The {group} choice by validation score is within run-to-run noise: {name(first)} {first[mean]:.3f} ± {first[std]:.3f} "
            f"against {name(second)} {second[mean]:.3f} ± {second[std]:.3f}.")


def _paired(evaluation, a: pd.Series, b: pd.Series) -> Comparison:
    found = {(c.features, c.strategy): c for c in evaluation.configurations}
    ca, cb = found[(a["features"], a["strategy"])], found[(b["features"], b["strategy"])]
    y = evaluation.y_test
    delta = stats.observed(evaluation.metric, y, ca.test_prob) - stats.observed(evaluation.metric, y, cb.test_prob)
    paired = stats.paired_summary(delta, ca.resampled - cb.resampled)
    return Comparison(name(a), name(b), paired["delta"], paired["p"], len(y))
