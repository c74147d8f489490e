"""`tfidf`: scikit-learn TF-IDF fitted on the train split only; sparse CSR rows, or `--svd-dim` dense.

The fitted vocabulary, idf weights and SVD components are stored in the cache (as arrays, not pickles) so
that new rows can be encoded identically later (`feat predict`).
"""

from __future__ import annotations

import hashlib

import numpy as np

from feat.errors import InputError
from feat.extract.base import FittedEncoder

PARAMS = {"lowercase": True, "ngram_range": (1, 2), "min_df": 2, "max_features": 50_000, "sublinear_tf": True}


class TfidfEncoder(FittedEncoder):
    name = "tfidf"
    accepts = frozenset({"svd_dim"})

    def __init__(self, options=None):
        from feat.extract.base import EncoderOptions

        super().__init__(options or EncoderOptions())
        self.vectorizer = None
        self.svd_components = None

    def preprocessing(self) -> dict:
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in PARAMS.items()},
                "svd_dim": self.options.svd_dim}

    def fit_key(self, train_texts: list[str]) -> str:
        digest = hashlib.sha256()
        for text in train_texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\x1e")
        self.fit_digest = digest.hexdigest()
        return self.fit_digest

    def fit(self, train_texts: list[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not train_texts:
            raise InputError("tfidf: the train split has no rows to fit on")
        params = dict(PARAMS, min_df=PARAMS["min_df"] if len(train_texts) >= 20 else 1)
        self.vectorizer = TfidfVectorizer(dtype=np.float32, **params)
        try:
            matrix = self.vectorizer.fit_transform(train_texts)
        except ValueError as exc:  # empty vocabulary
            raise InputError(f"tfidf: cannot fit on the train texts ({exc})") from exc
        if self.options.svd_dim:
            from sklearn.decomposition import TruncatedSVD

            if self.options.svd_dim >= matrix.shape[1]:
                raise InputError(f"tfidf: --svd-dim {self.options.svd_dim} must be below the vocabulary size "
                                 f"{matrix.shape[1]}")
            svd = TruncatedSVD(self.options.svd_dim, algorithm="arpack", random_state=0).fit(matrix)
            self.svd_components = svd.components_.astype(np.float32)

    def transform_texts(self, texts: list[str]):
        matrix = self.vectorizer.transform(texts).astype(np.float32)
        if self.svd_components is not None:
            return np.asarray(matrix @ self.svd_components.T, dtype=np.float32)
        return matrix.tocsr()

    def state(self) -> dict[str, np.ndarray]:
        if self.vectorizer is None:
            return {}
        vocabulary = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        state = {"vocabulary": np.array(vocabulary, dtype=object), "idf": self.vectorizer.idf_.astype(np.float64),
                 "fit_digest": np.array([self.fit_digest], dtype=object)}
        if self.svd_components is not None:
            state["svd_components"] = self.svd_components
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vocabulary = {term: i for i, term in enumerate(state["vocabulary"])}
        params = {k: v for k, v in PARAMS.items() if k not in ("min_df", "max_features")}
        self.vectorizer = TfidfVectorizer(dtype=np.float32, vocabulary=vocabulary, **params)
        self.vectorizer.idf_ = np.asarray(state["idf"])
        self.svd_components = state.get("svd_components")
        self.fit_digest = str(state["fit_digest"][0])
