"""`flava`: FLAVA's multimodal encoder over the image and text states, [CLS] (or its pooler); 768-d (joint)."""

from __future__ import annotations

from feat.extract.hf_joint import HFJointEncoder


class FlavaEncoder(HFJointEncoder):
    name = "flava"
    default_model = "facebook/flava-full"
    model_class_name = "FlavaModel"
    accepts = frozenset({"max_length", "pooling"})
    # cls: the multimodal [CLS] state (FLAVA's multimodal embedding); pooler: its dense+tanh, as the ITM head sees it
    pooling_choices = ("cls", "pooler")
    default_pooling = "cls"
    default_max_length = 77

    def forward(self, text, pixels):
        out = self.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                         token_type_ids=text.get("token_type_ids"), pixel_values=pixels,
                         skip_multimodal_encoder=False, output_hidden_states=True)
        if self.pooling == "pooler":
            return out.multimodal_output.pooler_output
        return out.multimodal_embeddings[:, 0]
