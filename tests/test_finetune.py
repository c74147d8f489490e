"""`feat finetune` on tiny DeBERTa, BLIP and ALIGN checkpoints with a fixed TF-IDF input, mostly through the CLI.

The fuse run is built by `feat extract` + `feat fuse` on a 48-row synthetic table whose label needs both the
caption and the picture; fine-tuning starts from it. Rates are raised (QUICK) so that a few steps move the
tiny random models measurably.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from feat.errors import FeatError, InputError
from helpers import cli, mock_cuda
from stage3 import QUICK, build_run, one_thread  # noqa: F401 (autouse fixture)

RUN_FILES = {"config.json", "model.safetensors", "metrics.json", "history.csv", "predictions_dev.csv",
             "predictions_test.csv", "learning_curve.png"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model, one_thread):
    return build_run(tmp_path_factory.mktemp("finetune"), tiny_model)


@pytest.fixture(scope="module")
def tuned(tiny):
    """One fine-tuning of every encoder, shared by the tests that only read its output."""
    out = tiny.root / "ft"
    quick = [a for a in QUICK if a != "--no-curve"]
    cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--epochs", "4", "--patience", "10", *quick)
    return out


def original_state(tiny, encoder: str) -> dict[str, torch.Tensor]:
    """The network of `encoder` exactly as feat loads it from the run's checkpoint (the weights fine-tuning
    started from)."""
    from feat.extract.base import EncoderOptions, Runtime
    from feat.extract.registry import create_encoder

    loaded = create_encoder(encoder, EncoderOptions(model=str(tiny.models[encoder])))
    loaded.load(Runtime())
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def encoder_tensors(out, encoder: str) -> dict[str, torch.Tensor]:
    prefix = f"encoders.{encoder}."
    return {k[len(prefix):]: v for k, v in load_file(str(out / "model.safetensors")).items() if k.startswith(prefix)}


def read(path):
    return json.loads(path.read_text())


# ----- parity, output, what changed ----------------------------------------------------------------------------
def test_parity_before_any_step_and_a_complete_output(tiny, tuned):
    run_metrics, metrics = read(tiny.run / "metrics.json"), read(tuned / "metrics.json")
    metric = read(tiny.run / "config.json")["metric"]
    assert {p.name for p in tuned.iterdir()} == RUN_FILES, "checkpoint/ is removed once the run is complete"
    initial = metrics["initial_dev"]
    assert initial[metric] == run_metrics["dev"][metric]
    assert initial["confusion_matrix"] == run_metrics["dev"]["confusion_matrix"]
    assert abs(initial["loss"] - run_metrics["dev"]["loss"]) < 1e-4
    parity = metrics["parity"]
    assert parity["max_probability_difference"] <= 1e-3
    assert set(parity["inputs"]) == {"deberta", "blip", "align"}, "tfidf is a fixed input, not recomputed"
    for feature, figures in parity["inputs"].items():
        assert figures["relative"] < 1e-5, feature
    history = pd.read_csv(tuned / "history.csv")
    assert history["epoch"].tolist()[0] == 0 and history[f"dev_{metric}"].iloc[0] == initial[metric]
    config = read(tuned / "config.json")
    assert config["kind"] == "finetune" and config["tuned"] == ["deberta", "blip", "align"]
    assert config["fixed"] == ["tfidf"]
    for split in ("dev", "test"):
        predictions = pd.read_csv(tuned / f"predictions_{split}.csv")
        assert len(predictions) == metrics[split]["n"] == run_metrics[split]["n"]


def test_every_trained_part_moved_and_batch_norm_statistics_did_not(tiny, tuned):
    for encoder in ("deberta", "blip", "align"):
        before, after = original_state(tiny, encoder), encoder_tensors(tuned, encoder)
        assert set(after) == set(before), encoder
        weights = [k for k in before if before[k].is_floating_point() and "running_" not in k]
        moved = [k for k in weights if not torch.equal(before[k], after[k])]
        assert len(moved) > len(weights) // 2, f"{encoder}: only {len(moved)} of {len(weights)} tensors changed"
    before, after = original_state(tiny, "align"), encoder_tensors(tuned, "align")
    running = [k for k in before if "running_mean" in k or "running_var" in k]
    assert running and all(torch.equal(before[k], after[k]) for k in running), \
        "batch norms keep their running statistics (eval mode while training)"
    config = read(tuned / "config.json")
    base = read(tiny.run / "config.json")["fingerprints"]
    assert config["fingerprints"]["tfidf"] == base["tfidf"]
    for encoder in ("deberta", "blip", "align"):
        assert config["fingerprints"][encoder]["fingerprint"]["weights"].startswith("finetuned:sha256:")
        assert config["fingerprints"][encoder]["id"] != base[encoder]["id"]


def test_the_training_loss_decreases_on_a_learnable_task(tmp_path, tiny_model):
    """The caption's mood, from DeBERTa alone (mean pooling: the tiny model's [CLS] barely varies between
    texts). The head's rate is 0, so the loss can only fall through the encoder's gradients."""
    mood = build_run(tmp_path, tiny_model, encoders=("deberta",), strategy="single", label="mood",
                     extract_options={"deberta": ["--pooling", "mean"]})
    out = tmp_path / "ft"
    cli("finetune", mood.run, "--data", mood.data, "--out", out, "--epochs", "6", "--patience", "10",
        "--lr-encoder", "1e-3", "--lr-head", "0", "--batch-size", "8", "--device", "cpu", "--no-curve")
    history = pd.read_csv(out / "history.csv")
    train, dev = history["train_loss"].tolist()[1:], history["dev_loss"].tolist()
    assert train[-1] < 0.8 * train[0] and train[-2] < 0.8 * train[0], train
    assert min(dev[1:]) < dev[0], dev
    head = {k: v for k, v in load_file(str(out / "model.safetensors")).items() if k.startswith("head.")}
    run_head = load_file(str(mood.run / "model.safetensors"))
    assert all(torch.equal(v, run_head[k[len("head."):]]) for k, v in head.items()), "lr 0: the head did not move"


def test_with_both_rates_zero_training_changes_nothing(tiny, tmp_path):
    """Train mode, batch norms, dropout, the optimizer and the best-state copy leave a model whose rates are 0
    exactly as assembled: the final dev metrics are the parity-checked ones."""
    out = tmp_path / "ft"
    cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--epochs", "2", "--lr-encoder", "0", "--lr-head",
        "0", *[a for a in QUICK if not a.startswith("--lr") and a not in ("1e-3", "3e-3")])
    metrics = read(out / "metrics.json")
    assert metrics["dev"]["confusion_matrix"] == metrics["initial_dev"]["confusion_matrix"]
    assert abs(metrics["dev"]["loss"] - metrics["initial_dev"]["loss"]) < 1e-6
    before = original_state(tiny, "align")
    after = encoder_tensors(out, "align")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_frozen_vision_stays_the_cached_features(tiny, tmp_path):
    out = tmp_path / "ft"
    cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--freeze", "vision", "--max-steps", "3", *QUICK)
    config = read(out / "config.json")
    assert config["tuned"] == ["deberta"] and config["fixed"] == ["blip", "align", "tfidf"]
    base = read(tiny.run / "config.json")["fingerprints"]
    for feature in ("blip", "align", "tfidf"):
        assert config["fingerprints"][feature] == base[feature], "frozen inputs: the run's own features"
        assert not encoder_tensors(out, feature)
    assert set(read(out / "metrics.json")["parity"]["inputs"]) == {"deberta"}


def test_unfreeze_last_trains_only_the_last_block_and_what_follows(tiny, tmp_path):
    out = tmp_path / "ft"
    cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--unfreeze-last", "1", "--max-steps", "3", *QUICK)
    trainable = read(out / "config.json")["trainable"]
    assert trainable["deberta"]["stacks"] == {"net.encoder.layer": 2}
    assert trainable["blip"]["stacks"] == {"net.encoder.layers": 2}
    changes = {}
    for encoder in ("deberta", "blip", "align"):
        before, after = original_state(tiny, encoder), encoder_tensors(out, encoder)
        changes[encoder] = {k for k in before if not torch.equal(before[k], after[k])}
    assert changes["deberta"] and all(k.startswith(("encoder.layer.1.", "encoder.rel_embeddings", "encoder.LayerNorm"))
                                      for k in changes["deberta"]), sorted(changes["deberta"])
    assert changes["blip"] and all(k.startswith(("encoder.layers.1.", "post_layernorm")) for k in changes["blip"])
    last = max(int(k.split(".")[2]) for k in original_state(tiny, "align") if k.startswith("encoder.blocks."))
    assert changes["align"], "the last block of ALIGN's EfficientNet trains"
    assert all(not k.startswith("encoder.blocks.") or int(k.split(".")[2]) == last for k in changes["align"])
    assert not any(k.startswith(("embeddings.", "encoder.layer.0.")) for k in changes["deberta"])


@pytest.mark.parametrize("name, checkpoint, stack, after", [
    ("clip-text", "clip", "net.text_model.encoder.layers", ("text_model.final_layer_norm.", "text_projection.")),
    ("clip-image", "clip", "net.vision_model.encoder.layers", ("vision_model.post_layernorm.", "visual_projection.")),
    ("hf-text", "bert", "net.encoder.layer", ("pooler.",)),
    ("hf-vision", "resnet", "net.encoder.stages", ()),
])
def test_unfreeze_last_on_tower_encoders(tiny_model, name, checkpoint, stack, after):
    """The stacks are observed in a forward pass: on CLIP only the tower in use has one, and what trains is its
    last block plus the layers that run after it; embeddings, earlier blocks and the other tower stay frozen."""
    from PIL import Image

    from feat.extract.base import EncoderOptions, Runtime
    from feat.extract.registry import create_encoder
    from feat.finetune.model import train_last_blocks

    encoder = create_encoder(name, EncoderOptions(model=str(tiny_model(checkpoint))))
    encoder.load(Runtime())
    module = encoder.trainable_module()
    if encoder.modality == "text":
        inputs = module.collate(["a photo of a cat", "two words"])
    else:
        pixels = encoder.transform()(Image.new("RGB", (40, 30), (200, 10, 10)))
        inputs = module.collate(None, torch.stack([pixels, pixels]))
    info = train_last_blocks(module, 1, lambda: module(inputs))
    assert list(info["stacks"]) == [stack]
    last = f"{stack}.{info['stacks'][stack] - 1}."
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any(n.startswith(last) for n in trainable)
    assert all(n.startswith(last) or n.removeprefix("net.").startswith(after) for n in trainable), trainable
    assert info["frozen_parameters"] > info["trainable_parameters"] > 0


# ----- parity failures say which input differs -----------------------------------------------------------------
def test_a_live_input_that_differs_from_its_cache_is_named(tiny, tmp_path, monkeypatch):
    from feat.extract.align import AlignVisionEncoder

    original = AlignVisionEncoder.embed
    monkeypatch.setattr(AlignVisionEncoder, "embed", lambda self, inputs: original(self, inputs) + 0.5)
    result = cli("finetune", tiny.run, "--data", tiny.data, "--out", tmp_path / "ft", *QUICK, expect=1)
    output = " ".join(result.output.split())
    assert "parity check failed" in output and "input 'align' differs from its cached features" in output
    assert "deberta, blip agree" in output
    assert not (tmp_path / "ft" / "metrics.json").exists()


def test_a_changed_text_is_refused_before_loading_models(tiny, tmp_path):
    frame = pd.read_csv(tiny.data, dtype=str, keep_default_na=False)
    frame.loc[frame["split"] == "dev", "text"] = "an entirely different caption"
    changed = tmp_path / "data.csv"
    frame.to_csv(changed, index=False)
    result = cli("finetune", tiny.run, "--data", changed, "--out", tmp_path / "ft", *QUICK, expect=2)
    output = " ".join(result.output.split())
    assert "input 'deberta': the texts of" in output and frame.loc[frame["split"] == "dev", "id"].iloc[0] in output


def test_a_changed_image_is_refused(tiny, tmp_path):
    import shutil

    from PIL import Image

    copy = tmp_path / "copy"
    shutil.copytree(tiny.data.parent, copy)
    frame = pd.read_csv(copy / "data.csv", dtype=str, keep_default_na=False)
    Image.new("RGB", (48, 48), (1, 2, 3)).save(copy / frame["image"].iloc[0])
    result = cli("finetune", tiny.run, "--data", copy / "data.csv", "--image-root", copy, "--out", tmp_path / "ft",
                 *QUICK, expect=2)
    output = " ".join(result.output.split())
    assert "input 'blip': the images of 1 row(s)" in output and frame["id"].iloc[0] in output


# ----- resume --------------------------------------------------------------------------------------------------
def test_resume_after_a_crash_gives_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    from feat.finetune import checkpoint

    args = ["finetune", tiny.run, "--data", tiny.data, "--epochs", "2", "--checkpoint-every", "2", *QUICK]
    cli(*args, "--out", tmp_path / "whole")

    real, saves = checkpoint.save, []

    def save_then_crash(*a, **k):
        real(*a, **k)
        saves.append(1)
        if len(saves) == 2:  # mid-epoch 1 (steps 2 and 4 of 5): the process dies right after the checkpoint
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    crashed = cli(*args, "--out", tmp_path / "crashed", expect=None)
    assert isinstance(crashed.exception, RuntimeError)
    monkeypatch.setattr(checkpoint, "save", real)
    state = read(tmp_path / "crashed" / "checkpoint" / "checkpoint.json")
    assert (state["loop"]["epoch"], state["loop"]["batch"], state["loop"]["step"]) == (1, 4, 4)
    assert not (tmp_path / "crashed" / "metrics.json").exists()

    refused = cli(*args, "--out", tmp_path / "crashed", expect=2)
    assert "--resume" in refused.output
    other = cli(*args[:-len(QUICK)], *QUICK[:-1], "--lr-encoder", "1e-4", "--out", tmp_path / "crashed", "--resume",
                expect=2)
    assert "other settings" in " ".join(other.output.split())
    resumed = cli(*args, "--out", tmp_path / "crashed", "--resume")
    assert "resuming" in resumed.output

    whole, again = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "crashed"))
    assert set(whole) == set(again)
    for key in whole:
        assert torch.equal(whole[key], again[key]), key
    assert pd.read_csv(tmp_path / "whole" / "history.csv").equals(pd.read_csv(tmp_path / "crashed" / "history.csv"))
    for split in ("dev", "test"):
        assert read(tmp_path / "whole" / "metrics.json")[split] == read(tmp_path / "crashed" / "metrics.json")[split]
    assert not (tmp_path / "crashed" / "checkpoint").exists()


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "ft"
    cli("finetune", tiny.run, "--data", tiny.data, "--epochs", "2", "--checkpoint-every", "2", *QUICK, "--out", out)
    return out


@pytest.mark.parametrize("stage, step", [("state", 2), ("index", 2), ("cleanup", 4)])
def test_a_sigkill_inside_a_checkpoint_save_resumes_to_the_uninterrupted_result(tiny, uninterrupted, tmp_path,
                                                                                monkeypatch, stage, step):
    """A real SIGKILL in the second save (step 4 of 10): with its tensors half-written, before its
    checkpoint.json, or after it but before the first checkpoint's files are removed. The last complete
    checkpoint is the one checkpoint.json names; the resumed run ends where the uninterrupted one did."""
    import signal

    from helpers import spawn

    args = ["finetune", tiny.run, "--data", tiny.data, "--epochs", "2", "--checkpoint-every", "2", *QUICK]
    killed = tmp_path / "killed"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as this process (one_thread): the same float sums
    process = spawn([*args, "--out", killed], kill_in=f"checkpoint_{stage}:2")
    output, _ = process.communicate(timeout=900)
    assert process.returncode == -signal.SIGKILL, f"exit {process.returncode}: {output}"
    state = read(killed / "checkpoint" / "checkpoint.json")
    assert state["loop"]["step"] == step
    assert "resuming" in cli(*args, "--out", killed, "--resume").output
    whole, again = (load_file(str(d / "model.safetensors")) for d in (uninterrupted, killed))
    assert set(whole) == set(again) and all(torch.equal(whole[k], again[k]) for k in whole)
    assert pd.read_csv(uninterrupted / "history.csv").equals(pd.read_csv(killed / "history.csv"))
    assert not (killed / "checkpoint").exists() and not [p for p in killed.rglob("*") if ".tmp" in p.name]


# ----- options -------------------------------------------------------------------------------------------------
def test_gradient_accumulation_and_max_steps_count_optimizer_steps(tiny, tmp_path):
    out = tmp_path / "ft"
    cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--epochs", "2", "--grad-accum", "2", *QUICK)
    train_rows = read(tiny.run / "config.json")["data"]["rows"]["train"]
    per_epoch = -(-(-(-train_rows // 8)) // 2)  # ceil(ceil(rows / 8) / 2)
    assert read(out / "metrics.json")["steps"] == 2 * per_epoch
    cli("finetune", tiny.run, "--data", tiny.data, "--out", tmp_path / "ft2", "--max-steps", "2", "--num-workers", "2",
        *QUICK)
    metrics = read(tmp_path / "ft2" / "metrics.json")
    assert metrics["steps"] == 2 and "--max-steps 2" in metrics["stopped"]


def test_bf16_autocast_and_gradient_checkpointing_are_really_on_on_cpu(tiny, tmp_path):
    """Every module's forward is watched: under --amp bf16 the linear layers compute in bfloat16, and with
    --grad-checkpointing forwards run again inside the backward pass (activations recomputed, not kept)."""
    bf16_layers, recomputed = set(), set()

    def watch(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and torch.is_tensor(output) and output.dtype == torch.bfloat16:
            bf16_layers.add(type(module).__name__)
        if torch._C._current_graph_task_id() != -1:  # a forward called by autograd's backward
            recomputed.add(type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_hook(watch)
    try:
        out = tmp_path / "ft"
        cli("finetune", tiny.run, "--data", tiny.data, "--out", out, "--amp", "bf16", "--grad-checkpointing",
            "--max-steps", "2", *QUICK)
        assert bf16_layers and recomputed, (bf16_layers, recomputed)
        bf16_layers.clear(), recomputed.clear()
        cli("finetune", tiny.run, "--data", tiny.data, "--out", tmp_path / "plain", "--max-steps", "1", *QUICK)
        assert not bf16_layers and not recomputed, "the float32 run without checkpointing is the control"
    finally:
        handle.remove()
    metrics = read(out / "metrics.json")
    assert metrics["parity"]["max_probability_difference"] <= 1e-3, "parity runs in the cache's float32"
    assert read(out / "config.json")["amp"] == "bfloat16"


def test_top_k_of_an_ablation(tiny, tmp_path):
    ablation = tmp_path / "abl"
    cli("ablate", "--cache", tiny.cache, "--features", "deberta", "--features", "deberta,align", "--strategies",
        "concat", "--seeds", "2", "--label", "label", "--out", ablation, "--workers", "1", "--no-curves",
        "--epochs", "2", "--batch-size", "8", "--common-dim", "16")
    out = tmp_path / "ft"
    cli("finetune", ablation, "--top", "2", "--data", tiny.data, "--out", out, "--max-steps", "1", *QUICK)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2
    from feat.fuse.artifacts import best_run

    best = best_run(ablation)
    assert results["run"].iloc[0] == str(ablation / best)
    for folder in results["out"]:
        assert (pd.io.common.Path(folder) / "metrics.json").exists()
    single = tmp_path / "one"
    cli("finetune", ablation, "--data", tiny.data, "--out", single, "--max-steps", "1", *QUICK)
    assert read(single / "config.json")["source_run"] == str((ablation / best).resolve())


@pytest.mark.parametrize("args,code,message", [
    (["--freeze", "audio"], 2, "--freeze must be one of"),
    (["--unfreeze-last", "0"], 2, "nothing to fine-tune"),
    (["--amp", "fp16"], 2, "--amp fp16 needs a CUDA device"),
    (["--grad-accum", "0"], 2, "--grad-accum"),
    (["--resume"], 2, "no checkpoint to resume"),
])
def test_input_errors_are_one_clear_line(tiny, tmp_path, args, code, message):
    result = cli("finetune", tiny.run, "--data", tiny.data, "--out", tmp_path / "ft", *QUICK, *args, expect=code)
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_what_is_not_a_fuse_run_is_refused(tiny, tuned, tmp_path):
    assert "neither a run folder" in cli("finetune", tmp_path, "--data", tiny.data, expect=2).output
    again = cli("finetune", tuned, "--data", tiny.data, "--out", tmp_path / "x", expect=2)
    assert "fine-tune the fuse run it came from" in " ".join(again.output.split())
    assert "is a fine-tuned run" in " ".join(cli("evaluate", tuned, expect=2).output.split())
    short = tmp_path / "short.csv"
    pd.read_csv(tiny.data).iloc[:10].to_csv(short, index=False)
    assert "rows are not in this table" in " ".join(
        cli("finetune", tiny.run, "--data", short, "--out", tmp_path / "y", expect=2).output.split())


# ----- the encoder interface: one trainable network per kind ---------------------------------------------------
KINDS = {"deberta": "deberta", "hf-text": "bert", "clip-text": "clip", "blip": "blip", "align": "align",
         "hf-vision": "resnet", "clip-image": "clip", "blip-itm": "blip", "flava": "flava", "vilt": "vilt"}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_trainable_module_is_the_encoding_with_gradients(name, tiny_model, small_synthetic_csv):
    from feat.extract.base import EncoderOptions, Runtime
    from feat.extract.images import decode_image
    from feat.extract.registry import create_encoder

    encoder = create_encoder(name, EncoderOptions(model=str(tiny_model(KINDS[name]))))
    encoder.load(Runtime())
    frame = pd.read_csv(small_synthetic_csv, keep_default_na=False).iloc[:4]
    texts = frame["text"].tolist()
    pixels = None
    if "image" in encoder.modality:
        transform = encoder.transform()
        pixels = torch.stack([transform(decode_image(str(small_synthetic_csv.parent / p))[0]) for p in frame["image"]])
    encoded = (encoder.encode_texts(texts) if encoder.modality == "text" else encoder.encode_pixels(pixels)
               if encoder.modality == "image" else encoder.encode_pairs(texts, pixels))
    module = encoder.trainable_module().requires_grad_(True)
    out = module(module.collate(texts if "text" in encoder.modality else None, pixels))
    np.testing.assert_allclose(out.detach().float().numpy(), encoded, atol=1e-5, rtol=0)
    out.float().pow(2).sum().backward()
    assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()) > 2
    assert set(module.state_dict()) == {f"net.{k}" for k in encoder.model.state_dict()}


def test_encoders_without_a_network_say_so():
    from feat.extract.registry import create_encoder

    with pytest.raises(FeatError, match="no network to fine-tune"):
        create_encoder("tfidf").collate(["a text"])


# ----- device and precision selection, with CUDA mocked --------------------------------------------------------
@pytest.mark.parametrize("bf16,amp,expected,scaling", [
    (True, "auto", "bfloat16", False), (False, "auto", "float16", True), (True, "fp16", "float16", True),
    (True, "off", None, False), (False, "bf16", "bfloat16", False)])
def test_cuda_selects_bf16_or_fp16_with_loss_scaling(monkeypatch, bf16, amp, expected, scaling):
    from feat.finetune.device import select_accelerator

    mock_cuda(monkeypatch, 2, bf16)
    accel = select_accelerator("auto", amp)
    assert (accel.device, accel.amp_dtype, accel.loss_scaling, accel.pin_memory) == ("cuda:0", expected, scaling, True)
    assert select_accelerator("cuda:1", amp).device == "cuda:1"


def test_cpu_runs_float32_unless_bf16_is_asked(monkeypatch):
    from feat.finetune.device import select_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    accel = select_accelerator("auto", "auto")
    assert (accel.device, accel.amp_dtype, accel.loss_scaling, accel.pin_memory) == ("cpu", None, False, False)
    assert not accel.grad_scaler().is_enabled()
    assert select_accelerator("cpu", "bf16").amp_dtype == "bfloat16"
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        select_accelerator("cpu", "fp16")
    with pytest.raises(InputError, match="no CUDA device"):
        select_accelerator("cuda", "auto")
    with pytest.raises(InputError, match="--amp must be one of"):
        select_accelerator("cpu", "fp8")


@pytest.mark.parametrize("name,how", [("deberta", "transformers"), ("align", "blocks")])
def test_gradient_checkpointing_gives_the_same_gradients(name, how, tiny_model, small_synthetic_csv):
    """transformers' own switch (DeBERTa) and feat's per-block checkpointing (ALIGN's EfficientNet, which has
    no switch): the same outputs and gradients, with activations recomputed in the backward pass."""
    from feat.extract.base import EncoderOptions, Runtime
    from feat.extract.images import decode_image
    from feat.extract.registry import create_encoder
    from feat.finetune.model import enable_grad_checkpointing

    frame = pd.read_csv(small_synthetic_csv, keep_default_na=False).iloc[:4]
    grads = []
    for checkpointed in (False, True):
        encoder = create_encoder(name, EncoderOptions(model=str(tiny_model(name))))
        encoder.load(Runtime())
        module = encoder.trainable_module().requires_grad_(True).train()
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()  # as FinetuneModel.train() keeps them
        if checkpointed:
            assert enable_grad_checkpointing(module) == how
        if encoder.modality == "text":
            inputs = module.collate(frame["text"].tolist())
        else:
            transform = encoder.transform()
            inputs = module.collate(None, torch.stack([transform(decode_image(str(small_synthetic_csv.parent / p))[0])
                                                       for p in frame["image"]]))
        torch.manual_seed(0)
        out = module(inputs)
        out.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5)


# ----- constant columns: float noise is not standardised into signal -------------------------------------------
def test_a_column_of_float_noise_is_scaled_by_one():
    """MiniLM on MVSA has a column with values ~1e-8 and std 8e-9 (typical std 0.05)."""
    from feat.fuse.data import FusionData, constant_columns, fit_stats

    assert constant_columns(np.array([0.05, 0.04, 8e-9, 0.06, 0.0])).tolist() == [False, False, True, False, True]
    rng = np.random.default_rng(0)
    matrix = rng.normal(0, 0.05, (40, 4)).astype(np.float32)
    matrix[:, 2] = rng.normal(0, 8e-9, 40).astype(np.float32)
    data = FusionData(["x"], np.arange(40).astype(str).astype(object), np.array(["train"] * 40, dtype=object),
                      np.zeros(40, np.int64), ["a", "b"], {"x": matrix}, {"x": np.ones(40, bool)}, {})
    scale = fit_stats(data)["x"]["scale"]
    assert scale[2] == 1.0 and 0.03 < scale[0] < 0.07


def test_finetuning_calms_the_noise_columns_of_older_runs():
    """A run made before `feat fuse` recognised noise columns keeps its exact statistics for the parity check;
    fine-tuning then scales those columns by 1 and stores the statistics it used."""
    from feat.finetune.model import FinetuneModel

    class Net(torch.nn.Module):
        modality = "text"

    stats = {"x": {"mean": np.zeros(4, np.float32), "scale": np.array([0.05, 0.04, 8e-9, 1.0], np.float32)}}
    model = FinetuneModel(["x"], {"x": Net()}, torch.nn.Linear(4, 2), None, stats, {"x": "float32"}, "drop")
    assert model.calm_constant_columns() == {"x": 1}
    assert model.live_stats()["x"]["scale"].tolist() == pytest.approx([0.05, 0.04, 1.0, 1.0])
    assert model.calm_constant_columns() == {}


def test_evaluation_batches_follow_a_lowered_batch_size_on_a_gpu(monkeypatch):
    """--batch-size 4 chosen to fit a GPU's memory: evaluation and parity must not run batches of 32 there."""
    from feat.finetune.device import select_accelerator

    mock_cuda(monkeypatch, 1)
    assert select_accelerator("cuda", "auto").eval_batch(4) == 4
    assert select_accelerator("cpu", "auto").eval_batch(4) == 32
