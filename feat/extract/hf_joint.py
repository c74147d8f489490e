"""The shared part of the Hugging Face joint (text + image) encoders: blip-itm, flava, vilt.

Each subclass names its model class and implements `forward(model, text_batch, pixels)` -> (B, dim) tensor;
this base loads tokenizer, image processor and weights (refusing missing keys), pads texts per batch and
keeps the preprocessing in the fingerprint.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Callable

import numpy as np

from feat.errors import InputError
from feat.extract.base import EncoderOptions, JointEncoder, Runtime
from feat.extract.hf import (from_pretrained_checked, load_image_processor, load_tokenizer, processor_summary,
                             tokenizer_identity)


class HFJointEncoder(JointEncoder):
    accepts = frozenset({"max_length"})
    model_class_name: str  # a transformers class that holds every weight the forward pass uses

    def __init__(self, options: EncoderOptions = EncoderOptions()):
        super().__init__(options)
        self.model = None
        self.tokenizer = None
        self.processor = None

    def preprocessing(self) -> dict:
        if self.processor is None:
            self.processor = load_image_processor(self.model_id)
        return {"pooling": self.pooling, "max_length": self.max_length, "padding": "dynamic",
                "tokenizer": tokenizer_identity(self.model_id), "processor": processor_summary(self.processor)}

    def load(self, runtime: Runtime) -> None:
        import transformers

        from feat.extract.device import torch_dtype

        self.runtime = runtime
        self.tokenizer = load_tokenizer(self.model_id)
        self.processor = self.processor or load_image_processor(self.model_id)
        model_class = getattr(transformers, self.model_class_name)
        model = from_pretrained_checked(model_class, self.model_id, dtype=torch_dtype(runtime.dtype))
        check_text_positions(self.max_length, text_position_limit(model.config), self.model_id)
        self.model = model.to(runtime.device)

    def transform(self) -> Callable:
        from feat.extract.hf_vision import ProcessorTransform

        if self.processor is None:
            self.processor = load_image_processor(self.model_id)
        return ProcessorTransform(self.processor)

    def tokenize(self, texts: list[str]):
        return self.tokenizer([t or "" for t in texts], padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.runtime.device)

    def encode_pairs(self, texts: list[str], pixels) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.embed(self.collate(texts, pixels)).float().cpu().numpy()

    def collate(self, texts: list[str] | None, pixels=None) -> dict:
        from feat.extract.device import to_device

        if len(texts) != len(pixels):
            raise ValueError(f"{len(texts)} texts for {len(pixels)} images")
        return {"text": self.tokenize(texts), "pixels": to_device(pixels, self.runtime.device, self.runtime.dtype)}

    def embed(self, inputs: dict):
        return self.forward(inputs["text"], inputs["pixels"])

    @abstractmethod
    def forward(self, text, pixels):
        """(B, dim) tensor for a tokenised batch and its (B, C, H, W) pixels, on the device."""


def text_position_limit(config) -> int | None:
    """The longest text the model's (absolute) position table holds, from its text config."""
    text_config = getattr(config, "text_config", None) or config
    return getattr(text_config, "max_position_embeddings", None)


def check_text_positions(max_length: int, limit: int | None, model_id: str) -> None:
    """A longer --max-length would index past the position table: a crash in the middle of a run."""
    if limit is not None and max_length > limit:
        raise InputError(f"--max-length {max_length} exceeds the {limit} text positions of {model_id}")
