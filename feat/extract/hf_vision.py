"""`hf-vision`: any Hugging Face image model (ResNet, ViT, ConvNeXt, DINOv2, ...) by id or folder.

Subclasses (BLIP, ALIGN) load a full multimodal checkpoint and keep its vision tower, because loading the
tower class on the full checkpoint would silently leave it random (REFERENCE.md section 3).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from feat.errors import InputError
from feat.extract.base import EncoderOptions, ImageEncoder, Runtime
from feat.extract.hf import from_pretrained_checked, load_image_processor, processor_summary


class ProcessorTransform:
    """Picklable PIL -> (C, H, W) tensor through a Hugging Face image processor (runs in workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        import torch

        return torch.from_numpy(np.asarray(self.processor(images=image, return_tensors="np")["pixel_values"][0]))


class HFVisionEncoder(ImageEncoder):
    name = "hf-vision"
    default_model = "microsoft/resnet-50"
    accepts = frozenset({"pooling"})
    pooling_choices = ("pooler", "cls", "mean")
    default_pooling = "pooler"

    def __init__(self, options: EncoderOptions = EncoderOptions()):
        super().__init__(options)
        self.model = None
        self.processor = None

    def preprocessing(self) -> dict:
        return {"pooling": self.pooling, "processor": self._processor_summary()}

    def _processor_summary(self) -> dict:
        """The processor config, read without loading weights."""
        if self.processor is None:
            self.processor = load_image_processor(self.model_id)
        return processor_summary(self.processor)

    def load_vision_model(self, runtime: Runtime):
        from transformers import AutoModel

        from feat.extract.device import torch_dtype

        model = from_pretrained_checked(AutoModel, self.model_id, dtype=torch_dtype(runtime.dtype))
        if hasattr(model, "get_text_features"):  # its forward wants text too: it would fail in the first batch
            raise InputError(f"'{self.model_id}' is a text-image model ({model.config.model_type}); use --encoder "
                             "clip-image, blip or align for its vision tower")
        return model

    def load(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.processor = load_image_processor(self.model_id)
        self.model = self.load_vision_model(runtime).to(runtime.device)

    def transform(self) -> Callable:
        if self.processor is None:
            self.processor = load_image_processor(self.model_id)
        return ProcessorTransform(self.processor)

    def encode_pixels(self, pixels) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.embed(self.collate(None, pixels)).float().cpu().numpy()

    def embed(self, inputs: dict):
        return self.pool(self.model(pixel_values=inputs["pixel_values"]))

    def pool(self, out):
        if self.pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise InputError(f"{self.model_id} has no pooler output; use --pooling cls or mean")
            return out.pooler_output.flatten(1)  # CNN poolers are (B, C, 1, 1)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # CNN feature map (B, C, H, W)
            return hidden.mean((2, 3)) if self.pooling == "mean" else _no_cls(self.model_id)
        return hidden[:, 0] if self.pooling == "cls" else hidden.mean(1)


def _no_cls(model_id: str):
    raise InputError(f"{model_id} is a convolutional model without a [CLS] token; use --pooling pooler or mean")
