"""`vilt`: ViLT's single transformer over text tokens and image patches, pooled output; 768-d (joint).

ViLT keeps each image's aspect ratio (shorter side 384, longer at most 640, multiples of 32) and pads a batch
with a pixel mask. So that every image tensor has one shape (the runner stacks them), the transform pads to
the largest size the processor can produce and carries the mask as a fourth channel; padded patches are
masked out exactly as in a batch padded by the processor.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from feat.errors import InputError
from feat.extract.hf_joint import HFJointEncoder

# transformers' ViltImageProcessor bounds the longer side by this ratio of the shorter one (800 x 1333 in ViLT).
LONGER_OVER_SHORTER = 1333 / 800


class MaskedCanvasTransform:
    """Picklable PIL -> (4, L, L): the processed image top-left on a zero canvas, then its pixel mask."""

    def __init__(self, processor, canvas: int):
        self.processor, self.canvas = processor, canvas

    def __call__(self, image):
        import torch

        pixels = np.asarray(self.processor(images=image, return_tensors="np")["pixel_values"][0], dtype=np.float32)
        _, height, width = pixels.shape
        if height > self.canvas or width > self.canvas:
            raise ValueError(f"processed image {height}x{width} exceeds the {self.canvas} px canvas")
        out = np.zeros((4, self.canvas, self.canvas), dtype=np.float32)
        out[:3, :height, :width] = pixels
        out[3, :height, :width] = 1.0
        return torch.from_numpy(out)


def canvas_size(processor) -> int:
    """The longest side a ViLT processor can output (its resize rounds down to the size divisor)."""
    size = processor.size
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    if not processor.do_resize or not shortest:
        raise InputError("vilt: the image processor must resize to a shortest_edge (images would have any size)")
    divisor = processor.size_divisor or 1
    return int(LONGER_OVER_SHORTER * shortest) // divisor * divisor


class ViltEncoder(HFJointEncoder):
    name = "vilt"
    default_model = "dandelin/vilt-b32-mlm"
    model_class_name = "ViltModel"
    pooling_choices = ("pooler",)
    default_pooling = "pooler"
    default_max_length = 40  # ViLT's text position table

    def transform(self) -> Callable:
        from feat.extract.hf import load_image_processor

        if self.processor is None:
            self.processor = load_image_processor(self.model_id)
        return MaskedCanvasTransform(self.processor, canvas_size(self.processor))

    def forward(self, text, pixels):
        import torch

        # ViLT draws the order of image patches with torch.multinomial; a fixed generator state makes the
        # stored bytes reproducible (the pooled output does not depend on that order beyond float rounding).
        # Only the generator of the pixels' device is seeded, and it is restored: torch.manual_seed would
        # reseed every GPU's generator for good, and each fine-tuning step would replay seed 0's dropout.
        generator = torch.cuda.default_generators[pixels.device.index] if pixels.is_cuda \
            else torch.default_generator
        state = generator.get_state()
        generator.manual_seed(0)
        try:
            out = self.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                             token_type_ids=text.get("token_type_ids"), pixel_values=pixels[:, :3],
                             pixel_mask=pixels[:, 3].round().long())
        finally:
            generator.set_state(state)
        return out.pooler_output
