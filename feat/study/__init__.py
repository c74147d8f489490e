"""`feat study`: extract + ablate + one report answering "does the image help, and is it worth the cost?".

One concept per file: `preset` (which encoders play which role), `config` (what a study run is), `extraction`
(each encoder extracted alone: available, or skipped with the reason), `costs` (seconds per 1,000 items,
kept across warm runs), `grid` (the ablation's feature sets and the group of each configuration), `answers`
(best per group, paired test), `report` and `figure` (what a reader pastes into a paper), `run` (the order).
"""

from feat.study.config import StudyConfig
from feat.study.run import run_study

__all__ = ["StudyConfig", "run_study"]
