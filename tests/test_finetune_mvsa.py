"""Slow: the issue's "must work" commands with the real MiniLM and EfficientNet-Lite0 on real tweets and photos
(a few rows of MVSA-Single in ../shared/data), on CPU.

    feat fuse --cache C --features minilm,effnet --strategy concat --label label --out R
    feat finetune R --data DATA.csv --out F --epochs 1 --batch-size 8
    feat predict F DATA.csv --out preds.csv
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from helpers import MVSA, cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MVSA.exists(), reason=f"MVSA-Single is not at {MVSA} (see ../shared/data/README.md)"),
]


@pytest.fixture(scope="module")
def mvsa_rows(tmp_path_factory):
    """40 train, 16 dev and 16 test rows in file order, images read in place."""
    frame = pd.read_csv(MVSA, dtype=str, keep_default_na=False)
    frame = pd.concat([frame[frame["split"] == split].head(n) for split, n in (("train", 40), ("dev", 16),
                                                                                ("test", 16))])
    path = tmp_path_factory.mktemp("mvsa") / "data.csv"
    frame.to_csv(path, index=False)
    return path, frame


def original(encoder: str) -> dict[str, torch.Tensor]:
    from feat.extract.base import Runtime
    from feat.extract.registry import create_encoder

    loaded = create_encoder(encoder)
    loaded.load(Runtime())
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def test_must_work_commands_on_real_rows(mvsa_rows, tmp_path):
    data, frame = mvsa_rows
    cache, run, tuned = tmp_path / "C", tmp_path / "R", tmp_path / "F"
    cli("extract", data, "-e", "minilm", "-e", "effnet", "-c", cache, "--image-root", MVSA.parent, "--device", "cpu")
    cli("fuse", "--cache", cache, "--features", "minilm,effnet", "--strategy", "concat", "--label", "label",
        "--out", run)
    cli("finetune", run, "--data", data, "--out", tuned, "--epochs", "1", "--batch-size", "8", "--device", "cpu")

    metric = json.loads((run / "config.json").read_text())["metric"]
    run_dev = json.loads((run / "metrics.json").read_text())["dev"]
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["initial_dev"][metric] == run_dev[metric]
    assert metrics["parity"]["max_probability_difference"] <= 1e-3
    assert metrics["steps"] == 5  # 40 train rows in batches of 8, one epoch
    tensors = load_file(str(tuned / "model.safetensors"))
    for encoder in ("minilm", "effnet"):
        before = original(encoder)
        after = {k[len(f"encoders.{encoder}."):]: v for k, v in tensors.items() if k.startswith(f"encoders.{encoder}.")}
        assert set(after) == set(before)
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{encoder}: weights unchanged"

    preds = tmp_path / "preds.csv"
    cli("predict", tuned, data, "--out", preds, "--image-root", MVSA.parent, "--device", "cpu")
    predicted = pd.read_csv(preds, dtype={"id": str}, keep_default_na=False)
    assert predicted["id"].tolist() == frame["id"].tolist(), "one row per input row"
    saved = pd.read_csv(tuned / "predictions_test.csv", dtype={"id": str}).set_index("id")
    mine = predicted.set_index("id").loc[saved.index]
    classes = json.loads((tuned / "config.json").read_text())["classes"]
    assert (mine[[f"p_{c}" for c in classes]] - saved[[f"p_{c}" for c in classes]]).abs().max().max() < 1e-4
    again = cli("predict", tuned, data, "--out", tmp_path / "again.csv", "--image-root", MVSA.parent, "--device",
                "cpu")
    assert " ".join(again.output.split()).count("no forward pass, all rows reused from cache") == 2
