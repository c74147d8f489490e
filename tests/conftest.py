"""Shared fixtures: tiny saved checkpoints and a small synthetic dataset, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py, importable without a package

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_weight_memo(tmp_path_factory):
    """Keep the weight-hash memo of the tests out of the user's ~/.cache/feat."""
    from feat.extract import weights

    original = weights._MEMO
    weights._MEMO = tmp_path_factory.mktemp("feat-home") / "weight_hashes.json"
    yield
    weights._MEMO = original


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """`tiny_model("blip")` -> folder of a tiny saved checkpoint (see tests/tiny_models.py), built once."""
    import tiny_models

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tiny_models.BUILDERS[name](tmp_path_factory.mktemp(f"tiny-{name}"))
        return built[name]

    return get


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    """24 rows of captions and 48 px images (data.csv + images/), the same for every test; never modify it."""
    from feat.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), rows=24, image_size=48)


@pytest.fixture(scope="session")
def small_synthetic_csv(tmp_path_factory) -> Path:
    """12 rows (two batches of 8): enough to check shapes and order where a real model costs seconds per batch."""
    from feat.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic-small"), rows=12, image_size=48)
