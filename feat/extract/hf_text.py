"""`hf-text`: any Hugging Face text encoder (BERT, RoBERTa, BETO, XLM-R, DeBERTa, ...) by id or folder."""

from __future__ import annotations

import numpy as np

from feat.extract.base import EncoderOptions, Runtime, TextEncoder
from feat.errors import InputError
from feat.extract.hf import from_pretrained_checked, load_tokenizer, require_model_type, tokenizer_identity


class HFTextEncoder(TextEncoder):
    name = "hf-text"
    default_model = "bert-base-uncased"
    accepts = frozenset({"pooling", "max_length"})
    pooling_choices = ("cls", "mean", "pooler")
    default_pooling = "cls"
    default_max_length = 128
    normalize = False  # L2-normalise the pooled vector (sentence-transformers models do)
    model_types: tuple[str, ...] = ()  # config.model_type values this encoder promises; () = any

    def __init__(self, options: EncoderOptions = EncoderOptions()):
        super().__init__(options)
        self.model = None
        self.tokenizer = None

    def preprocessing(self) -> dict:
        return {"pooling": self.pooling, "max_length": self.max_length, "normalize": self.normalize,
                "padding": "dynamic", "tokenizer": tokenizer_identity(self.model_id)}

    def load(self, runtime: Runtime) -> None:
        from transformers import AutoModel

        from feat.extract.device import torch_dtype

        self.runtime = runtime
        self.tokenizer = load_tokenizer(self.model_id)
        self._check_max_length()
        model = from_pretrained_checked(AutoModel, self.model_id, dtype=torch_dtype(runtime.dtype))
        if self.model_types:
            require_model_type(model, self.model_types, self.name, self.model_id)
        if hasattr(model, "get_image_features"):  # its forward wants pixels too: it would fail in the first batch
            raise InputError(f"'{self.model_id}' is a text-image model ({model.config.model_type}); use --encoder "
                             "clip-text for its text tower")
        if self.pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise InputError(f"{self.model_id} has no pooler (e.g. DeBERTa-v3); use --pooling cls or mean")
        self.model = model.to(runtime.device)

    def load_tokenizer(self) -> None:
        self.tokenizer = load_tokenizer(self.model_id)
        self._check_max_length()

    def _check_max_length(self) -> None:
        """Longer inputs than the model was trained on would index past its position table (a crash deep in
        a batch) or, for relative positions, silently give vectors the model never learned."""
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and limit < 100_000 and self.max_length > limit:
            raise InputError(f"--max-length {self.max_length} exceeds what {self.model_id} takes ({limit} tokens)")

    def token_lengths(self, texts: list[str]) -> list[int]:
        # In chunks, token ids only: tokenising every text at once held ids, attention masks and token types
        # of all rows as Python lists at the same time (~3 KiB a short text), the largest per-row memory cost.
        lengths: list[int] = []
        for start in range(0, len(texts), 1024):
            encoded = self.tokenizer(texts[start:start + 1024], truncation=True, max_length=self.max_length,
                                     return_attention_mask=False, return_token_type_ids=False)
            lengths += [len(ids) for ids in encoded["input_ids"]]
        return lengths

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.embed(self.collate(texts)).float().cpu().numpy()

    def collate(self, texts: list[str] | None, pixels=None) -> dict:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.runtime.device)

    def embed(self, inputs: dict):
        import torch

        out = self.model(**inputs)
        pooled = pool(out, inputs["attention_mask"], self.pooling)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled


def pool(out, attention_mask, pooling: str):
    """One vector per sequence: the [CLS] state, the masked mean of token states, or the model's pooler."""
    if pooling == "pooler":
        return out.pooler_output
    hidden = out.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    # Sum in float32: bf16 sums over long sequences lose precision.
    summed = (hidden.float() * mask.float()).sum(1)
    return summed / mask.float().sum(1).clamp(min=1e-9)
