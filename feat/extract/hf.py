"""Loading Hugging Face checkpoints without ever falling back to random weights.

transformers only warns when a checkpoint lacks weights the model class needs (e.g. a vision tower class on
a full BLIP checkpoint, REFERENCE.md section 3); feat refuses instead.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from pathlib import Path

from feat.errors import FeatError, InputError


def from_pretrained_checked(model_class, name_or_path: str, **kwargs):
    """`model_class.from_pretrained` that raises FeatError on missing or shape-mismatched weights."""
    from transformers.utils import logging as hf_logging

    _refuse_missing_folder(name_or_path)
    kwargs = {**_offline_kwargs(name_or_path), **kwargs}
    hf_logging.disable_progress_bar()  # feat shows its own progress; the per-tensor load bar is noise
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the load report is checked below; its warnings would only add noise
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: a config transformers cannot map to this class
        raise _load_error(f"model '{name_or_path}' as {model_class.__name__}", name_or_path, exc) from exc
    finally:
        logger.setLevel(level)
    missing = list(info.get("missing_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        keys = sorted([*missing, *[str(k[0] if isinstance(k, tuple) else k) for k in mismatched]])
        raise FeatError(f"'{name_or_path}' ({_checkpoint_type(name_or_path)} checkpoint) does not hold every weight "
                        f"of {type(model).__name__}: {len(keys)} would be random ({', '.join(keys[:4])}"
                        f"{', ...' if len(keys) > 4 else ''}); is it the right checkpoint for this encoder?")
    model.eval()
    model.requires_grad_(False)
    return model


def load_dual_encoder(name_or_path: str, **kwargs):
    """A CLIP-family model (both towers and their projections into the shared space), fully checked."""
    from transformers import AutoModel

    model = from_pretrained_checked(AutoModel, name_or_path, **kwargs)
    if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
        raise InputError(f"'{name_or_path}' is a {model.config.model_type!r} checkpoint, not a CLIP-family "
                         "text-image dual encoder")
    return model


def projected(features):
    """The projected embedding from `get_text_features`/`get_image_features`: transformers 5 returns an output
    whose pooler_output holds it; older versions and some families return the tensor itself."""
    return features if hasattr(features, "dim") else features.pooler_output


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    _refuse_missing_folder(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, **_offline_kwargs(name_or_path))
    except (OSError, ValueError, TypeError) as exc:
        raise _load_error(f"the tokenizer of '{name_or_path}'", name_or_path, exc) from exc


def load_image_processor(name_or_path: str):
    from transformers import AutoImageProcessor

    _refuse_missing_folder(name_or_path)
    try:
        # The PIL backend needs no torchvision and matches the reference preprocessing.
        return AutoImageProcessor.from_pretrained(name_or_path, backend="pil", **_offline_kwargs(name_or_path))
    except (OSError, ValueError, TypeError) as exc:
        raise _load_error(f"the image processor of '{name_or_path}'", name_or_path, exc) from exc


def processor_summary(processor) -> dict:
    """The processor's whole config as plain JSON values: every field can change the pixels (crop_pct,
    rescale_offset, ...), so a hand-picked subset would let a changed preprocessing reuse stale vectors."""
    import json

    return json.loads(processor.to_json_string())


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model")


def tokenizer_identity(name_or_path: str) -> str:
    """sha256 of a local folder's tokenizer files: the weights hash does not cover them, and a new vocabulary
    with the same weights gives other vectors. Hub ids: 'hub' (the snapshot commit in the weights identity
    covers every file)."""
    import hashlib

    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        return "hub"
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.name in TOKENIZER_FILES:
            digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return f"sha256:{digest.hexdigest()}"


def require_model_type(model, allowed: tuple[str, ...], encoder: str, name_or_path: str) -> None:
    """Refuse a checkpoint of another family: its weights would load fully, but it is not what the encoder
    name promises (and its fingerprint would say so only in the model id)."""
    found = getattr(model.config, "model_type", None)
    if found not in allowed:
        raise InputError(f"encoder '{encoder}' needs a {' or '.join(allowed)} checkpoint; '{name_or_path}' is "
                         f"{found!r} (use --encoder hf-text or hf-vision for other models)")


def _refuse_missing_folder(name_or_path: str) -> None:
    """A path that does not exist would otherwise be tried as a hub id, with a baffling repo-id error."""
    looks_local = name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise InputError(f"model folder '{name_or_path}' does not exist")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the Hugging Face endpoint's host resolves. Offline, huggingface_hub retries every file with
    back-off (about 100 s per encoder) before failing; knowing it up front makes that a one-line error."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def _offline_kwargs(name_or_path: str) -> dict:
    """A hub id with no reachable hub: the local Hugging Face cache only (fails fast when not there)."""
    if _is_local(name_or_path) or hub_reachable():
        return {}
    from huggingface_hub import constants

    # Even with local_files_only, huggingface_hub fetches a registry for its User-Agent header (one connection,
    # a 3 s timeout); its offline switch stops that too. Nothing online can work in this process anyway.
    constants.HF_HUB_OFFLINE = True
    return {"local_files_only": True}


def _load_error(what: str, name_or_path: str, exc: Exception) -> FeatError:
    if _is_local(name_or_path) or hub_reachable():
        return FeatError(f"could not load {what}: {_first_line(exc)}")
    # transformers' own message here suggests a wrong path; the cause is the missing network.
    return FeatError(f"could not load {what}: not in the local Hugging Face cache, and the hub is unreachable "
                     "from this machine (offline?)")


def _checkpoint_type(name_or_path: str) -> str:
    try:
        from transformers import PreTrainedConfig

        return repr(PreTrainedConfig.get_config_dict(name_or_path)[0].get("model_type", "unknown"))
    except Exception:  # noqa: BLE001 - only decorates an error message
        return "an unreadable"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
