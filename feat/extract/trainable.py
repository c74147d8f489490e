"""An encoder's network as a torch module, for fine-tuning (`Encoder.trainable_module()`)."""

from __future__ import annotations

from torch import nn


class TrainableEncoder(nn.Module):
    """`forward(inputs)` is the encoder's `embed(inputs)` with autograd on.

    `net` is the encoder's own loaded model (not a copy): training it changes what the encoder computes, and
    its state dict is exactly the network's, so a fine-tuned state loads back into a freshly loaded encoder.
    """

    def __init__(self, encoder):
        super().__init__()
        self.net = encoder.model
        self.encoder = [encoder]  # in a list: an attribute holding the encoder must not register as a module

    def forward(self, inputs: dict):
        return self.encoder[0].embed(inputs)

    def collate(self, texts, pixels=None) -> dict:
        return self.encoder[0].collate(texts, pixels)

    @property
    def modality(self) -> str:
        return self.encoder[0].modality
