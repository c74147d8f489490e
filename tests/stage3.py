"""Helpers of the stage-3 tests (`feat finetune`, `feat predict`): a tiny fuse run built through the CLI.

Every run is built from private copies of the tiny checkpoints and of the synthetic data, so a test may damage
its copy (a changed weight, a deleted image) without touching the session fixtures.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import cli


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread only adds synchronisation (10x slower steps on a busy machine).
    Autouse in every test module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Registry name -> tiny checkpoint of tests/tiny_models.py; tfidf has none.
CHECKPOINTS = {"deberta": "deberta", "blip": "blip", "align": "align", "tfidf": None}
SMALL_FUSE = ["--epochs", "3", "--batch-size", "8", "--common-dim", "16", "--lr", "3e-3"]
# A few quick steps with rates that move tiny random models visibly (the reference's 2e-5 barely would).
QUICK = ["--batch-size", "8", "--lr-encoder", "1e-3", "--lr-head", "3e-3", "--device", "cpu", "--no-curve"]


@dataclass
class TinyRun:
    root: Path
    data: Path  # data.csv with id, text, image, label, mood, shape, split
    cache: Path
    run: Path  # the fuse run folder
    models: dict[str, Path]  # encoder -> its private checkpoint folder
    features: list[str]


def build_run(root: Path, tiny_model, encoders=("deberta", "blip", "align", "tfidf"), strategy: str = "concat",
              label: str = "label", rows: int = 48, extract_options: dict | None = None) -> TinyRun:
    from feat.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(root / "data", rows=rows, image_size=48)
    models = {}
    for encoder in encoders:
        if CHECKPOINTS[encoder]:
            models[encoder] = root / "models" / encoder
            shutil.copytree(tiny_model(CHECKPOINTS[encoder]), models[encoder])
    cache = root / "cache"
    for encoder in encoders:
        model = ["--model", models[encoder]] if encoder in models else []
        cli("extract", data, "--encoder", encoder, *model, "--cache", cache, "--device", "cpu", "--batch-size", "16",
            *(extract_options or {}).get(encoder, []))
    run = root / "run"
    cli("fuse", "--cache", cache, "--features", ",".join(encoders), "--strategy", strategy, "--label", label,
        "--out", run, *SMALL_FUSE)
    return TinyRun(root, data, cache, run, models, list(encoders))


def probabilities(path: Path, classes: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False).set_index("id")
    return frame[[f"p_{c}" for c in classes]].astype(float)


def cross_entropy(prob: pd.DataFrame, labels: pd.Series, classes: list[str]) -> float:
    index = [classes.index(label) for label in labels]
    picked = prob.to_numpy()[np.arange(len(index)), index]
    return float(-np.log(np.clip(picked, 1e-12, 1)).mean())
