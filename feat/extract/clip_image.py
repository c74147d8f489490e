"""`clip-image`: CLIP's vision tower projected into the shared image-text space; 512-d for ViT-B/32.

The full dual encoder is loaded (and checked) so that the projection is the trained one: the vision tower
class alone would leave it out, or random.
"""

from __future__ import annotations

from feat.extract.base import Runtime
from feat.extract.hf import load_dual_encoder, projected
from feat.extract.hf_vision import HFVisionEncoder


class ClipImageEncoder(HFVisionEncoder):
    name = "clip-image"
    default_model = "openai/clip-vit-base-patch32"
    accepts = frozenset()
    pooling_choices = ("projected",)
    default_pooling = "projected"

    def load_vision_model(self, runtime: Runtime):
        from feat.extract.device import torch_dtype

        return load_dual_encoder(self.model_id, dtype=torch_dtype(runtime.dtype))

    def embed(self, inputs: dict):
        return projected(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
