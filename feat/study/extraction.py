"""Each study encoder extracted on its own: available (with its extract report), or skipped with the reason.

One `extract` call per encoder, so that an encoder whose weights cannot be loaded (offline machine, no local
folder) costs only its own attempt, its failure names it, and its report times only its own rows. Any
failure of one encoder skips it with the message as the reason (the preset's TF-IDF SVD size on a tiny
vocabulary, a feature set made with another fingerprint and no --force: the reason says what to do), except
an input error (a folder that does not exist, a checkpoint of another family) of an encoder the user pointed
at with --model: that stops the study, since the user asked for that model by name. Table-wide problems are
checked before any encoder runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feat.console import console
from feat.errors import FeatError, InputError
from feat.study.config import StudyConfig
from feat.study.preset import StudyEncoder

if TYPE_CHECKING:  # the runner imports h5py and the cache: only when extracting
    from feat.extract.runner import EncoderReport


@dataclass
class Outcome:
    encoder: StudyEncoder
    report: EncoderReport | None = None  # None when skipped
    reason: str = ""  # why the encoder was skipped ("" when available)
    fingerprint: dict | None = None  # of the stored feature set
    load_average: float = float("nan")  # 1-minute load average when the encoder finished (was the CPU busy?)
    finished: str = ""  # when the encoder finished (UTC, ISO 8601)

    @property
    def available(self) -> bool:
        return self.report is not None


def extract_all(config: StudyConfig, encoders: list[StudyEncoder]) -> list[Outcome]:
    outcomes = []
    for encoder in encoders:
        outcomes.append(extract_one(config, encoder))
        done = outcomes[-1]
        what = done.report.line() if done.available else f"{encoder.feature}: SKIPPED ({done.reason})"
        console.print(what, markup=False, soft_wrap=True)
    return outcomes


def extract_one(config: StudyConfig, encoder: StudyEncoder) -> Outcome:
    from feat.cache import FeatureCache
    from feat.extract.runner import ExtractConfig, extract

    settings = ExtractConfig(data=config.data, cache=config.cache_dir, encoders=[encoder.encoder],
                             columns=config.columns, image_root=config.image_root, options=encoder.options,
                             name=encoder.feature, device=config.device, batch_size=config.batch_size,
                             num_workers=config.num_workers, force=config.force)
    try:
        report = extract(settings)
    except FeatError as exc:
        if isinstance(exc, InputError) and encoder.options.model is not None:
            raise
        return Outcome(encoder, reason=str(exc))
    return Outcome(encoder, report.encoders[0], fingerprint=FeatureCache(config.cache_dir).fingerprint(encoder.feature),
                   load_average=os.getloadavg()[0], finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def skipped_pairs(duals: list[tuple[str, str]], outcomes: list[Outcome]) -> list[tuple[str, str]]:
    """(pair name, reason) of each dual pair with a skipped tower: the pair is skipped with it."""
    reasons = {o.encoder.feature: o.reason for o in outcomes if not o.available}
    return [("+".join(pair), "; ".join(f"{f} skipped" for f in pair if f in reasons))
            for pair in duals if any(f in reasons for f in pair)]


def available(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.available]

