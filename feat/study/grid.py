"""The study's ablation grid, and the group of each of its configurations in the report."""

from __future__ import annotations

from feat.study.preset import IMAGE, JOINT, TEXT, Lineup

TEXT_ONLY, IMAGE_ONLY, FUSION, JOINT_MODEL = "text-only", "image-only", "fusion of towers", "joint encoder"
GROUPS = (TEXT_ONLY, IMAGE_ONLY, FUSION, JOINT_MODEL)


def feature_sets(lineup: Lineup, available: set[str]) -> list[list[str]]:
    """Every available encoder alone, every available text tower x image tower pair (of the paired ones) and
    every dual pair with both towers available."""
    encoders = [e for e in lineup.encoders if e.feature in available]
    singles = [[e.feature] for e in encoders]
    texts = [e.feature for e in encoders if e.role == TEXT and e.paired]
    images = [e.feature for e in encoders if e.role == IMAGE and e.paired]
    pairs = [[t, i] for t in texts for i in images]
    duals = [list(pair) for pair in lineup.duals if set(pair) <= available]
    unique = dict.fromkeys(tuple(fs) for fs in [*singles, *pairs, *duals])
    return [list(fs) for fs in unique]


def group_of(features: str, lineup: Lineup) -> str:
    """`features` as the ablation writes them ('a' or 'a+b')."""
    names = features.split("+")
    if len(names) > 1:
        return JOINT_MODEL if tuple(names) in {tuple(p) for p in lineup.duals} else FUSION
    role = lineup.by_feature()[names[0]].role
    return {TEXT: TEXT_ONLY, IMAGE: IMAGE_ONLY, JOINT: JOINT_MODEL}[role]
