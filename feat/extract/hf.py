"""Loading Hugging Face checkpoints without ever falling back to random weights.

transformers only warns when a checkpoint lacks weights the model class needs (e.g. a vision tower class on
a full BLIP checkpoint, REFERENCE.md section 3); feat refuses instead.
"""

from __future__ import annotations

import contextlib
import io
import logging

from feat.errors import FeatError


def from_pretrained_checked(model_class, name_or_path: str, **kwargs):
    """`model_class.from_pretrained` that raises FeatError on missing or shape-mismatched weights."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # feat shows its own progress; the per-tensor load bar is noise
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the load report is checked below; its warnings would only add noise
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except OSError as exc:
        raise FeatError(f"could not load model '{name_or_path}': {str(exc).splitlines()[0]}") from exc
    finally:
        logger.setLevel(level)
    missing = list(info.get("missing_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        keys = [*missing, *[str(k[0] if isinstance(k, tuple) else k) for k in mismatched]]
        raise FeatError(f"'{name_or_path}' does not hold every weight of {model_class.__name__}: "
                        f"{len(keys)} would be random ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}); "
                        "is it the right checkpoint for this encoder?")
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise FeatError(f"could not load the tokenizer of '{name_or_path}': {str(exc).splitlines()[0]}") from exc


def load_image_processor(name_or_path: str):
    from transformers import AutoImageProcessor

    try:
        # The PIL-based ("slow") processors need no torchvision and match the reference preprocessing.
        return AutoImageProcessor.from_pretrained(name_or_path, use_fast=False)
    except (OSError, ValueError) as exc:
        raise FeatError(f"could not load the image processor of '{name_or_path}': {str(exc).splitlines()[0]}") from exc
