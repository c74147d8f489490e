"""The encoder registry: one line per encoder, `name: "module:Class"`.

Entries are import strings so that listing encoders (and `feat --help`) never imports torch.
"""

from __future__ import annotations

import importlib

from feat.errors import InputError

ENCODERS: dict[str, str] = {
    "deberta": "feat.extract.deberta:DebertaEncoder",
    "blip": "feat.extract.blip:BlipVisionEncoder",
    "align": "feat.extract.align:AlignVisionEncoder",
    "tfidf": "feat.extract.tfidf:TfidfEncoder",
    "minilm": "feat.extract.minilm:MiniLMEncoder",
    "effnet": "feat.extract.effnet:EfficientNetLite0Encoder",
    "hf-text": "feat.extract.hf_text:HFTextEncoder",
    "hf-vision": "feat.extract.hf_vision:HFVisionEncoder",
    "clip-text": "feat.extract.clip_text:ClipTextEncoder",
    "clip-image": "feat.extract.clip_image:ClipImageEncoder",
    "blip-itm": "feat.extract.blip_itm:BlipItmEncoder",
    "flava": "feat.extract.flava:FlavaEncoder",
    "vilt": "feat.extract.vilt:ViltEncoder",
}


def encoder_class(name: str):
    if name not in ENCODERS:
        raise InputError(f"unknown encoder '{name}' (known: {', '.join(ENCODERS)})")
    module, cls = ENCODERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_encoder(name: str, options=None):
    from feat.extract.base import EncoderOptions

    return encoder_class(name)(options or EncoderOptions())
