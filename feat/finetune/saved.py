"""A trained run folder (`feat fuse` or `feat finetune`) as the objects that use it: the head with its
weights, the train-only standardisation, and encoders that compute exactly the features the head was
trained on (rebuilt from the fingerprints, with a fine-tuned run's weights and the cache's TF-IDF fit).

model.safetensors of a fuse run: the head's tensors and `__stats__/<feature>/{mean,scale}`. Of a finetune
run: `head.<key>`, `encoders.<feature>.<key>` (the fine-tuned networks, whole) and the same statistics.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from feat.errors import FeatError, InputError
from feat.fuse import artifacts as art

STATS = "__stats__"  # as in feat/fuse/run.py
HEAD, ENCODERS = "head.", "encoders."
FUSE, FINETUNE = "fuse", "finetune"


@dataclass
class SavedRun:
    path: Path
    config: dict  # config.json
    tensors: dict = field(repr=False)  # model.safetensors

    @property
    def kind(self) -> str:
        return self.config.get("kind", FUSE)

    @property
    def features(self) -> list[str]:
        return list(self.config["features"])

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def cache(self) -> Path:
        return Path(self.config["cache"])

    def fingerprint(self, feature: str) -> dict:
        return self.config["fingerprints"][feature]["fingerprint"]

    def base_fingerprint(self, feature: str) -> dict:
        """The fingerprint of the cached features the encoder started from (a fuse run: its own)."""
        return self.config.get("base_fingerprints", self.config["fingerprints"])[feature]["fingerprint"]

    @property
    def tuned(self) -> list[str]:
        """Features whose encoder weights this run holds (fine-tuned)."""
        return list(self.config.get("tuned", []))

    def head_config(self):
        from feat.fuse.config import HeadConfig, from_dict

        return from_dict(HeadConfig, self.config["head"])

    def train_config(self):
        from feat.fuse.config import TrainConfig, from_dict

        return from_dict(TrainConfig, self.config["train"])

    def stats(self) -> dict | None:
        """{feature: {"mean", "scale"}} float32 arrays, or None for a run trained without standardisation."""
        if not self.train_config().standardize:
            return None
        return {f: {k: self.tensors[f"{STATS}/{f}/{k}"].numpy() for k in ("mean", "scale")} for f in self.features}

    def head_state(self) -> dict:
        if self.kind == FINETUNE:
            return {k[len(HEAD):]: v for k, v in self.tensors.items() if k.startswith(HEAD)}
        return {k: v for k, v in self.tensors.items() if not k.startswith(STATS)}

    def head(self):
        """The head with its trained weights, in eval mode."""
        from feat.fuse.registry import create_head
        from feat.fuse.train import deterministic

        with deterministic(self.train_config().seed):
            head = create_head(self.head_config(), list(self.config["input_dims"]), len(self.classes))
        head.load_state_dict(self.head_state())
        return head.eval()

    def encoder_state(self, feature: str) -> dict:
        prefix = f"{ENCODERS}{feature}."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def encoders(self) -> dict:
        """feature -> an unloaded encoder that makes the features this run's head expects."""
        from feat.extract.base import FittedEncoder

        out = {}
        for feature in self.features:
            if feature in self.tuned:
                state = self.encoder_state(feature)
                out[feature] = tuned_encoder(encoder_from_fingerprint(self.base_fingerprint(feature)), state,
                                             weights_identity(state))
                continue
            encoder = encoder_from_fingerprint(self.fingerprint(feature))
            if isinstance(encoder, FittedEncoder):
                encoder.use_state(self._fitted_state(feature))
            out[feature] = encoder
        return out

    def _fitted_state(self, feature: str) -> dict:
        from feat.cache import FeatureCache, fingerprint_id

        cache = FeatureCache(self.cache)
        stored = cache.fingerprint(feature) if cache.root.is_dir() else None
        if stored is None:
            raise InputError(f"run {self.path}: the fit of '{feature}' is stored with its features in cache "
                             f"{self.cache}, which does not hold them (moved or deleted?)")
        if fingerprint_id(stored) != fingerprint_id(self.base_fingerprint(feature)):
            raise InputError(f"run {self.path}: feature set '{feature}' in cache {self.cache} was re-extracted "
                             "since the run was trained (fingerprint differs); its fit is not the run's")
        return cache.read(feature, rows=False).state


def load_run(path: Path) -> SavedRun:
    path = Path(path)
    if not (path / art.CONFIG).exists() or not (path / art.MODEL).exists():
        raise InputError(f"{path} is not a feat run folder (config.json or model.safetensors missing)")
    if not (path / art.METRICS).exists():
        raise InputError(f"{path} is an unfinished run (no metrics.json): finish or re-run it first")
    return SavedRun(path, art.read_json(path / art.CONFIG), art.load_model(path / art.MODEL))


def encoder_from_fingerprint(fingerprint: dict):
    """The registered encoder with the options its fingerprint records. A wrong guess cannot pass unnoticed:
    callers compare the encoder's own fingerprint with the recorded one (`check_fingerprint`)."""
    from feat.extract.base import EncoderOptions
    from feat.extract.registry import encoder_class

    cls = encoder_class(fingerprint["encoder"])
    preprocessing = fingerprint.get("preprocessing", {})
    options = {k: preprocessing[k] for k in cls.accepts if preprocessing.get(k) is not None}
    default = cls(EncoderOptions())
    # The default checkpoint of a packaged encoder is recorded under a portable label, not its local path.
    model = None if fingerprint.get("model") == default.model_label else fingerprint.get("model")
    return cls(EncoderOptions(model=model, **options))


def check_fingerprint(feature: str, encoder, recorded: dict, what: str) -> None:
    """Refuse an encoder whose features would differ from the recorded ones (weights, preprocessing, ...)."""
    from feat.extract.base import Runtime

    now = encoder.fingerprint(Runtime(dtype=recorded["compute_dtype"]), recorded["store_dtype"])
    if now != recorded:
        changed = [f"{k}: {_short(recorded.get(k))} -> {_short(now.get(k))}" for k in sorted(set(now) | set(recorded))
                   if now.get(k) != recorded.get(k)]
        raise InputError(f"feature '{feature}': the encoder now makes other features than {what} was trained on "
                         f"({'; '.join(changed)}); refusing them")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def weights_identity(state: dict) -> str:
    """A digest of a network's tensors (names, dtypes, shapes, bytes): the `weights` of its fingerprint."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}\x1f{tensor.dtype}\x1f{tuple(tensor.shape)}\x1e".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return f"finetuned:sha256:{digest.hexdigest()}"


class _Tuned:
    """Mixin over a registered encoder class: the checkpoint is loaded as usual (every key checked), then
    the fine-tuned state replaces its weights; the fingerprint names the fine-tuned weights."""

    tuned_state: dict
    tuned_identity: str

    def weights_identity(self) -> str:
        return self.tuned_identity

    def load(self, runtime) -> None:
        super().load(runtime)
        result = self.model.load_state_dict(self.tuned_state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise FeatError(f"encoder '{self.name}': the fine-tuned weights do not fit the checkpoint "
                            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")


@functools.lru_cache(maxsize=None)
def _tuned_class(cls):
    return type(f"Tuned{cls.__name__}", (_Tuned, cls), {})


def tuned_encoder(encoder, state: dict, identity: str):
    """`encoder` (unloaded) with fine-tuned weights `state` (a state dict of its network)."""
    tuned = _tuned_class(type(encoder))(encoder.options)
    tuned.tuned_state, tuned.tuned_identity = state, identity
    return tuned
