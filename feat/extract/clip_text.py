"""`clip-text`: CLIP's text tower projected into the shared image-text space; 512-d for ViT-B/32.

Any CLIP-family dual encoder by --model. Vectors are kept unnormalised (CLIP's similarity normalises them
first; a later stage can, but could not undo it).
"""

from __future__ import annotations

from feat.extract.base import Runtime
from feat.extract.hf import load_dual_encoder, load_tokenizer, projected
from feat.extract.hf_joint import check_text_positions, text_position_limit
from feat.extract.hf_text import HFTextEncoder


class ClipTextEncoder(HFTextEncoder):
    name = "clip-text"
    default_model = "openai/clip-vit-base-patch32"
    accepts = frozenset({"max_length"})
    pooling_choices = ("projected",)
    default_pooling = "projected"
    default_max_length = 77  # CLIP's text position table

    def load(self, runtime: Runtime) -> None:
        from feat.extract.device import torch_dtype

        self.runtime = runtime
        self.tokenizer = load_tokenizer(self.model_id)
        self._check_max_length()
        model = load_dual_encoder(self.model_id, dtype=torch_dtype(runtime.dtype))
        check_text_positions(self.max_length, text_position_limit(model.config), self.model_id)
        self.model = model.to(runtime.device)

    def embed(self, inputs: dict):
        return projected(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                      attention_mask=inputs["attention_mask"]))
