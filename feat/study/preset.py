"""Study presets: which encoders a study tries, and the role each plays in the comparison.

Roles decide how an encoder enters the ablation and in which group of the report its configurations land:
- a text or image *tower* runs alone (text-only / image-only) and, when `paired`, crossed with every tower of
  the other modality under each fusion strategy ("fusion in the head");
- a *joint* encoder sees text and image together and runs alone ("fusion inside the encoder");
- a *dual* encoder (CLIP) is two towers trained together into one space: their pair, fused by the heads,
  counts as a joint model, each tower alone as a unimodal one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from feat.errors import InputError
from feat.extract.base import EncoderOptions, feature_name

TEXT, IMAGE, JOINT = "text", "image", "joint"


@dataclass(frozen=True)
class Preset:
    name: str
    text: tuple[str, ...]  # text towers, each alone and crossed with every image tower
    image: tuple[str, ...]  # image towers, each alone and crossed with every text tower
    joint: tuple[str, ...]  # encoders of text and image together, one vector per item, each alone
    dual: tuple[tuple[str, str], ...]  # (text, image) towers of one dual encoder, fused as a joint model
    strategies: tuple[str, ...]  # fusion heads of every multi-input set (unimodal baselines run anyway)
    seeds: int  # seeds per configuration
    options: dict[str, EncoderOptions] = field(default_factory=dict)  # per encoder; changes its feature name
    why: dict[str, str] = field(default_factory=dict)  # per encoder with options: why (printed in the report)
    note: str = ""  # what the preset compares (printed in the report, with the encoders that ran)


REFERENCE = Preset(
    name="reference",
    text=("deberta", "hf-text", "minilm", "tfidf"),
    image=("clip-image", "blip", "align", "hf-vision", "effnet"),
    joint=("blip-itm", "flava", "vilt"),
    dual=(("clip-text", "clip-image"),),
    # Early fusion (concat), the reference's gated head, and late fusion (mean of per-modality logits):
    # three families, not all five reference heads, so that every tower pair stays affordable on a CPU.
    strategies=("concat", "gated", "late_mean"),
    seeds=3,
    # A head on 7,608 sparse TF-IDF dims (MVSA-Single) costs ~75 s per run on 2 CPU cores, 300 SVD dims ~6 s
    # (and reached a higher dev macro-F1 there); the sparse view stays one `feat extract -e tfidf` away.
    options={"tfidf": EncoderOptions(svd_dim=300)},
    why={"tfidf": "a head on MVSA-Single's 7,608 sparse TF-IDF dims took ~75 s per run on 2 CPU cores, on 300 "
                  "SVD dims ~6 s, with a higher dev macro-F1 there"},
    note="text towers and image towers, each alone and crossed under each fusion strategy, against joint "
         "encoders",
)

PRESETS = {REFERENCE.name: REFERENCE}


@dataclass(frozen=True)
class StudyEncoder:
    encoder: str  # registry name
    feature: str  # feature-set name in the cache (the encoder name, suffixed when the preset sets options)
    role: str  # text | image | joint
    paired: bool  # crossed with the towers of the other modality
    options: EncoderOptions  # what `feat extract` is given for this encoder (model included)


@dataclass(frozen=True)
class Lineup:
    encoders: list[StudyEncoder]  # in extraction order
    duals: list[tuple[str, str]]  # feature names of dual pairs whose both towers are in the study

    def by_feature(self) -> dict[str, StudyEncoder]:
        return {e.feature: e for e in self.encoders}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown study preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def lineup(preset: Preset, only: list[str] | None = None, models: dict[str, str] | None = None) -> Lineup:
    """The study's encoders: the preset's, or `only` (registry names) with the preset's roles where it has
    them and roles by modality otherwise. `models` points encoders at other checkpoints or local folders."""
    from feat.extract.registry import encoder_class

    models = models or {}
    listed = list(dict.fromkeys([*preset.text, *preset.image, *(n for pair in preset.dual for n in pair),
                                 *preset.joint]))
    names = listed if only is None else list(dict.fromkeys(only))
    for name in names:
        encoder_class(name)  # refuses unknown names before anything runs
    unknown = sorted(set(models) - set(names))
    if unknown:
        raise InputError(f"--model names encoder(s) not in this study: {', '.join(unknown)} "
                         f"(study encoders: {', '.join(names)})")
    duals = [pair for pair in preset.dual if set(pair) <= set(names)]
    in_dual = {n for pair in duals for n in pair}
    encoders = []
    for name in names:
        role, paired = _role(preset, name, in_dual, encoder_class(name).modality)
        options = replace(preset.options.get(name, EncoderOptions()), model=models.get(name))
        encoders.append(StudyEncoder(name, feature_name(name, options), role, paired, options))
    features = {e.encoder: e.feature for e in encoders}
    return Lineup(encoders, [(features[t], features[i]) for t, i in duals])


def _role(preset: Preset, name: str, in_dual: set[str], modality: str) -> tuple[str, bool]:
    if name in preset.text:
        return TEXT, True
    if name in preset.image:
        return IMAGE, True
    if name in preset.joint:
        return JOINT, False
    by_modality = {"text": TEXT, "image": IMAGE}.get(modality, JOINT)
    # A dual tower outside the preset's tower lists runs alone and in its pair, not crossed with others:
    # CLIP's text tower is the multimodal model's half, not one more text baseline to pair with every image.
    return by_modality, by_modality != JOINT and name not in in_dual


