"""`blip-itm`: BLIP's image-grounded text encoder, [CLS] state of the multimodal pass; 768-d (joint).

The pass of `BlipForImageTextRetrieval(use_itm_head=True)` up to, not including, the ITM head: the text
encoder cross-attends to every vision token; its [CLS] state is what the ITM head classifies.
"""

from __future__ import annotations

from feat.extract.hf_joint import HFJointEncoder


class BlipItmEncoder(HFJointEncoder):
    name = "blip-itm"
    default_model = "Salesforce/blip-itm-base-coco"
    model_class_name = "BlipForImageTextRetrieval"
    pooling_choices = ("cls",)
    default_pooling = "cls"
    default_max_length = 128

    def forward(self, text, pixels):
        import torch

        image_states = self.model.vision_model(pixel_values=pixels).last_hidden_state
        # Built on the device: transformers' own forward makes this mask on the CPU (fails on CUDA).
        image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=image_states.device)
        states = self.model.text_encoder(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                         encoder_hidden_states=image_states, encoder_attention_mask=image_mask)
        return states.last_hidden_state[:, 0]
