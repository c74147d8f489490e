"""`blip`: the vision tower of BLIP (image-text retrieval checkpoint), pooler output at 384 px; 768-d."""

from feat.extract.hf_vision import HFVisionEncoder


class BlipVisionEncoder(HFVisionEncoder):
    name = "blip"
    default_model = "Salesforce/blip-itm-base-coco"
    accepts = frozenset()
    pooling_choices = ("pooler",)

    def load_vision_model(self, runtime):
        from transformers import BlipForImageTextRetrieval

        from feat.extract.device import torch_dtype
        from feat.extract.hf import from_pretrained_checked

        # The full model, so that every vision weight is checked as loaded; then keep the tower only.
        full = from_pretrained_checked(BlipForImageTextRetrieval, self.model_id, dtype=torch_dtype(runtime.dtype))
        return full.vision_model
