"""The encoder interface: what every encoder under feat/extract/ implements.

Four kinds, chosen by how the runner must feed them:
- `TextEncoder`: texts in, one vector per text; the runner sorts by token length and pads per batch.
- `ImageEncoder`: PIL images in; `transform()` runs in DataLoader workers, `encode_pixels` on the device.
- `FittedEncoder`: fitted on the train split (TF-IDF); its fitted state is stored with the features.
- `JointEncoder`: sees the text and the image of a row together and returns one vector (BLIP-ITM, FLAVA, ViLT).

An encoder never loads weights in `__init__`: `fingerprint()` must be cheap so that a warm cache is
recognised without loading a model. `load()` loads weights and must refuse missing keys.

Encoders with a network also expose it for fine-tuning (`feat finetune`): `collate` makes a batch's model
inputs, `embed` maps them to vectors with autograd on, and `trainable_module()` wraps both as a torch module.
`encode_*` run the same `collate` + `embed` under inference mode, so live and cached vectors are one code path.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Callable, ClassVar

import numpy as np

from feat import __version__
from feat.errors import FeatError, InputError


@dataclass(frozen=True)
class EncoderOptions:
    """Options of `feat extract` that shape the vectors; each encoder declares which it honours."""

    model: str | None = None  # checkpoint id or local folder; None = the encoder's default
    pooling: str | None = None  # how token states become one vector: cls | mean | pooler
    max_length: int | None = None  # text truncation in tokens
    svd_dim: int | None = None  # TF-IDF only: dense TruncatedSVD view of this size instead of sparse rows


def feature_name(encoder: str, options: EncoderOptions) -> str:
    """The default feature-set name, the same in every command: the encoder's, suffixed where an option makes
    another kind of vector (TF-IDF's dense SVD view is `tfidf-svd300`, its sparse rows `tfidf`), so that the
    two views never pass for each other in a cache, a summary or a report."""
    return f"{encoder}-svd{options.svd_dim}" if options.svd_dim else encoder


@dataclass(frozen=True)
class Runtime:
    """Where and how the forward pass runs (never part of the fingerprint, except the compute dtype)."""

    device: str = "cpu"
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16


class Encoder(ABC):
    name: ClassVar[str]
    modality: ClassVar[str]  # "text" | "image"
    default_model: ClassVar[str | None] = None
    accepts: ClassVar[frozenset[str]] = frozenset()  # EncoderOptions fields besides `model` it honours
    pooling_choices: ClassVar[tuple[str, ...]] = ()
    default_pooling: ClassVar[str | None] = None
    default_max_length: ClassVar[int | None] = None

    def __init__(self, options: EncoderOptions = EncoderOptions()):
        given = {f.name for f in fields(options) if getattr(options, f.name) is not None} - {"model"}
        refused = sorted(given - self.accepts)
        if refused:
            raise InputError(f"encoder '{self.name}' does not take --{refused[0].replace('_', '-')}")
        if options.model is not None and self.default_model is None:
            raise InputError(f"encoder '{self.name}' does not take --model")
        self.options = options
        self.model_id = options.model or self.default_model
        self.model_label = self.model_id  # what the fingerprint records; packaged models use a portable name
        self.pooling = options.pooling or self.default_pooling
        if self.pooling_choices and self.pooling not in self.pooling_choices:
            raise InputError(f"encoder '{self.name}': --pooling must be one of {', '.join(self.pooling_choices)}")
        self.max_length = options.max_length or self.default_max_length
        self.runtime = Runtime()

    @abstractmethod
    def preprocessing(self) -> dict:
        """Everything besides weights that changes the vectors (sizes, normalisation, pooling, lengths)."""

    def weights_identity(self) -> str:
        """A string that changes whenever the weights change; cheap (no model load)."""
        from feat.extract.weights import weights_identity

        return weights_identity(self.model_id)

    def fingerprint(self, runtime: Runtime, store_dtype: str) -> dict:
        """JSON-normalised (tuples become lists) so that it compares equal to the stored copy."""
        return json.loads(json.dumps({"encoder": self.name, "model": self.model_label, "weights": self.weights_identity(),
                "preprocessing": self.preprocessing(), "compute_dtype": runtime.dtype,
                "store_dtype": store_dtype, "feat_version": __version__}, sort_keys=True))

    @abstractmethod
    def load(self, runtime: Runtime) -> None:
        """Load weights on `runtime.device`; raise FeatError if any weight would be random."""

    def release(self) -> None:
        """Drop the loaded network (kept: tokenizer, processor, fit). Between the encoders of one extract, so
        that the next one has the GPU's memory; `load()` brings it back."""
        if getattr(self, "model", None) is not None:
            self.model = None

    def row_hash(self, text: str | None, image_digest: str | None) -> str:
        """The per-row content hash: a row is re-encoded when this changes."""
        source = text if self.modality == "text" else image_digest
        return hashlib.sha256((source or "").encode("utf-8", "surrogatepass")).hexdigest()

    def collate(self, texts: list[str] | None, pixels=None) -> dict:
        """A batch's model inputs on the device: texts tokenised (padded to this batch's longest) and/or the
        (B, C, H, W) pixels of `transform()`. Implemented once per kind of network."""
        raise FeatError(f"encoder '{self.name}' has no network to fine-tune")

    def embed(self, inputs: dict):
        """(B, dim) tensor from `collate`'s inputs with autograd on (needs `load()` first)."""
        raise FeatError(f"encoder '{self.name}' has no network to fine-tune")

    def trainable_module(self):
        """The loaded network as a torch module: `module(collate(...))` is `embed`, its parameters are the
        encoder's (trainable once `requires_grad_` is set), its state dict is the network's."""
        from feat.extract.trainable import TrainableEncoder

        if getattr(self, "model", None) is None:
            raise FeatError(f"encoder '{self.name}': load() it before asking for its network")
        return TrainableEncoder(self)


class TextEncoder(Encoder):
    modality = "text"

    @abstractmethod
    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token counts (after truncation), used to sort texts into batches of similar length."""

    def load_tokenizer(self) -> None:
        """Make `token_lengths` work where the network is not needed (the ray backend plans batches in the
        driver and runs the network on actors). Default: a full `load`, for encoders without a lighter one."""
        self.load(self.runtime)

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, padded to the longest text of this batch only."""


class ImageEncoder(Encoder):
    modality = "image"

    @abstractmethod
    def transform(self) -> Callable:
        """A picklable function PIL.Image (RGB) -> float tensor (C, H, W); runs in DataLoader workers."""

    @abstractmethod
    def encode_pixels(self, pixels) -> np.ndarray:
        """A (B, C, H, W) float tensor on the device -> (B, dim) float32 array."""

    def collate(self, texts: list[str] | None, pixels=None) -> dict:
        from feat.extract.device import to_device

        return {"pixel_values": to_device(pixels, self.runtime.device, self.runtime.dtype)}


class FittedEncoder(Encoder):
    """An encoder whose parameters come from the train split; the fit is part of every row's hash."""

    modality = "text"
    fit_digest: str = ""  # set by `fit_key`; mixed into every row hash so a new train split re-encodes all
    frozen: bool = False  # set by `use_state`: a stored fit transforms new rows and is never refitted on them

    def use_state(self, state: dict[str, np.ndarray]) -> None:
        """Fix the encoder to a stored fit (`feat predict`): new rows are transformed as the train rows were,
        whatever split they are in, and their row hashes carry the stored fit's digest."""
        if not state:
            raise FeatError(f"encoder '{self.name}': no fitted state stored with the features")
        self.load_state(state)
        self.frozen = True

    def weights_identity(self) -> str:
        return "fitted-on-train"

    def row_hash(self, text: str | None, image_digest: str | None) -> str:
        return hashlib.sha256(f"{self.fit_digest}\x1f{text or ''}".encode("utf-8", "surrogatepass")).hexdigest()

    def load(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @abstractmethod
    def fit_key(self, train_texts: list[str]) -> str:
        """A digest of what the fit would see; cheap, so that a warm cache needs no fit."""

    @abstractmethod
    def fit(self, train_texts: list[str]) -> None: ...

    @abstractmethod
    def transform_texts(self, texts: list[str]):
        """(len(texts), dim) float32 array or scipy CSR matrix."""

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that let `load_state` rebuild the fitted encoder (stored in the cache, never pickled)."""

    @abstractmethod
    def load_state(self, state: dict[str, np.ndarray]) -> None: ...


class JointEncoder(Encoder):
    """Sees the text and the image of a row together and returns one vector (BLIP-ITM, FLAVA, ViLT).

    Fed like an ImageEncoder (images decoded in DataLoader workers by `transform()`, batches in input order),
    with each row's text beside its image; texts are padded per batch. A row is encoded again when either its
    text or its image bytes change.
    """

    modality = "text+image"

    def row_hash(self, text: str | None, image_digest: str | None) -> str:
        text_digest = hashlib.sha256((text or "").encode("utf-8", "surrogatepass")).hexdigest()
        return hashlib.sha256(f"{text_digest}:{image_digest or ''}".encode()).hexdigest()

    @abstractmethod
    def transform(self) -> Callable:
        """A picklable function PIL.Image (RGB) -> float tensor (C, H, W) of one fixed shape per encoder."""

    @abstractmethod
    def encode_pairs(self, texts: list[str], pixels) -> np.ndarray:
        """texts[i] with image pixels[i] ((B, C, H, W) float tensor) -> (B, dim) float32 array."""
