"""`align`: the EfficientNet vision tower of ALIGN, pooler output at 289 px; 640-d."""

from feat.extract.hf_vision import HFVisionEncoder


class AlignVisionEncoder(HFVisionEncoder):
    name = "align"
    default_model = "kakaobrain/align-base"
    accepts = frozenset()
    pooling_choices = ("pooler",)

    def load_vision_model(self, runtime):
        from transformers import AlignModel

        from feat.extract.device import torch_dtype
        from feat.extract.hf import from_pretrained_checked

        full = from_pretrained_checked(AlignModel, self.model_id, dtype=torch_dtype(runtime.dtype))
        return full.vision_model
