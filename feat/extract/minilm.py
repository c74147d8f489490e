"""`minilm`: all-MiniLM-L6-v2 from its offline package, exactly as sentence-transformers encodes it.

The package's sentence-transformers pipeline is Transformer -> mean pooling -> L2 Normalize, max 256 tokens;
the same three steps here give the same vectors without needing sentence-transformers at run time.
"""

from __future__ import annotations

import contextlib
import io

from feat.extract.hf_text import HFTextEncoder


def packaged_model_path() -> str:
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import and on extraction
        from all_minilm_l6_v2 import get_model_path

        return str(get_model_path())


class MiniLMEncoder(HFTextEncoder):
    name = "minilm"
    default_model = "sentence-transformers/all-MiniLM-L6-v2"
    accepts = frozenset({"max_length"})
    pooling_choices = ("mean",)
    default_pooling = "mean"
    default_max_length = 256
    normalize = True

    def __init__(self, options=None):
        from feat.extract.base import EncoderOptions

        super().__init__(options or EncoderOptions())
        if self.options.model is None:
            self.model_id = packaged_model_path()
            self.model_label = "sentence-transformers/all-MiniLM-L6-v2"
