"""`deberta`: DeBERTa-v3 text encoder, [CLS] state (the reference) or masked mean; 768-d for the base model.

DeBERTa-v3 has no pooler, so only cls and mean are offered. Its tokenizer needs sentencepiece and protobuf.
"""

from feat.extract.hf_text import HFTextEncoder


class DebertaEncoder(HFTextEncoder):
    name = "deberta"
    default_model = "microsoft/deberta-v3-base"
    pooling_choices = ("cls", "mean")
    default_pooling = "cls"
    default_max_length = 128
    model_types = ("deberta-v2", "deberta")  # other text models: --encoder hf-text
