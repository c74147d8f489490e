"""Every encoder against transformers itself, on tiny saved checkpoints (tests/tiny_models.py).

The stored vector must equal a direct forward of the saved model: an encoder that loaded a tower with random
weights, pooled the wrong token, preprocessed differently or put rows back in the wrong order fails here.
References are computed one text at a time (no padding at all), so they also check dynamic padding and
length sorting in the runner.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feat.cache import FeatureCache
from feat.errors import FeatError, InputError
from feat.extract.base import EncoderOptions, JointEncoder, Runtime
from feat.extract.registry import ENCODERS, create_encoder
from helpers import cli, text_table

ATOL = 1e-5

# Registry name -> tiny checkpoint of tests/tiny_models.py (None: the encoder's own offline default) and the
# vector size it gives (None: depends on the data).
CASES = {
    "deberta": ("deberta", 32), "blip": ("blip", 32), "align": ("align", 16), "hf-text": ("bert", 32),
    "hf-vision": ("resnet", 32), "clip-text": ("clip", 24), "clip-image": ("clip", 24),
    "blip-itm": ("blip", 32), "flava": ("flava", 32), "vilt": ("vilt", 32),
    "minilm": (None, 384), "effnet": (None, 1280), "tfidf": (None, None),
}
JOINT = {"blip-itm", "flava", "vilt"}


# ----- helpers ------------------------------------------------------------------------------------------------

def extract_rows(data: Path, cache: Path, encoder: str, model: Path | None = None, *options: str):
    """`feat extract DATA --encoder E [--model M] --cache C`, then the stored rows."""
    model_args = ["--model", model] if model else []
    cli("extract", data, "--encoder", encoder, *model_args, "--cache", cache, "--device", "cpu",
        "--batch-size", "8", *options)
    return FeatureCache(cache).read(encoder).rows


def table(csv: Path) -> pd.DataFrame:
    frame = pd.read_csv(csv, keep_default_na=False)
    frame["image_path"] = [str(csv.parent / name) for name in frame["image"]]
    return frame


def open_rgb(paths) -> list:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths]


def assert_close_and_distinct(stored: np.ndarray, reference: np.ndarray) -> None:
    """Equal to the reference, and not a constant vector (which would match any equally broken reference)."""
    assert stored.shape == reference.shape
    np.testing.assert_allclose(stored, reference, atol=ATOL, rtol=0)
    assert np.ptp(reference, axis=0).max() > 1e-3, "tiny model maps every input to the same vector"


def loaded_checked(model_class, folder: Path):
    """The reference model, loaded directly; a tiny checkpoint missing weights would make the test moot."""
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    return model.eval()


def direct_text(model_class, folder: Path, texts: list[str], pooling: str, max_length: int = 128) -> np.ndarray:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = loaded_checked(model_class, folder)
    vectors = []
    with torch.no_grad():
        for text in texts:
            out = model(**tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt"))
            states = out.last_hidden_state[0]
            vectors.append({"cls": states[0], "mean": states.mean(0), "pooler": getattr(out, "pooler_output",
                                                                                        None)}[pooling].flatten())
    return torch.stack(vectors).numpy()


def joint_inputs(encoder: JointEncoder, paths: list[str]):
    """Pixels as the runner feeds them: decoded by feat, transformed by the encoder, stacked."""
    import torch

    from feat.extract.images import decode_image

    transform = encoder.transform()
    return torch.stack([transform(decode_image(p)[0]) for p in paths])


def loaded_encoder(name: str, model: Path, **options):
    encoder = create_encoder(name, EncoderOptions(model=str(model), **options))
    encoder.load(Runtime())
    return encoder


# ----- DeBERTa ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_deberta_stores_a_direct_forward(tmp_path, tiny_model, synthetic_csv, pooling):
    from transformers import DebertaV2Model

    folder = tiny_model("deberta")
    rows = extract_rows(synthetic_csv, tmp_path / "c", "deberta", folder, "--pooling", pooling)
    frame = table(synthetic_csv)
    assert list(rows.ids) == list(frame["id"])
    assert_close_and_distinct(rows.matrix, direct_text(DebertaV2Model, folder, list(frame["text"]), pooling))


def test_deberta_tokenizer_is_the_sentencepiece_model(tiny_model, synthetic_csv):
    """transformers 5 builds the DeBERTa tokenizer from spm.model; a wrong conversion maps text to [UNK]."""
    import sentencepiece

    folder = tiny_model("deberta")
    encoder = loaded_encoder("deberta", folder)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    for text in table(synthetic_csv)["text"][:8]:
        ids = encoder.tokenizer(text)["input_ids"]
        assert encoder.tokenizer.convert_ids_to_tokens(ids)[1:-1] == pieces.encode(text, out_type=str)


# ----- hf-text and text order ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_hf_text_stores_a_direct_forward(tmp_path, tiny_model, synthetic_csv, pooling):
    from transformers import BertModel

    folder = tiny_model("bert")
    rows = extract_rows(synthetic_csv, tmp_path / "c", "hf-text", folder, "--pooling", pooling)
    texts = list(table(synthetic_csv)["text"])
    assert_close_and_distinct(rows.matrix, direct_text(BertModel, folder, texts, pooling))


def test_sorted_padded_batches_come_back_in_input_order(tmp_path, tiny_model):
    """Texts of very different lengths in batches of 8: each stored row equals that text encoded alone."""
    folder = tiny_model("bert")
    csv = text_table(tmp_path / "texts.csv", rows=30, max_words=40)
    frame = pd.read_csv(csv, keep_default_na=False)
    rows = extract_rows(csv, tmp_path / "c", "hf-text", folder, "--pooling", "mean")
    assert list(rows.ids) == list(frame["id"])
    encoder = loaded_encoder("hf-text", folder, pooling="mean")
    alone = np.concatenate([encoder.encode_texts([text]) for text in frame["text"]])
    lengths = encoder.token_lengths(list(frame["text"]))
    assert sorted(lengths) != lengths, "the texts must arrive unsorted for this test to mean anything"
    assert_close_and_distinct(rows.matrix, alone)


def test_max_length_beyond_the_model_is_refused(tmp_path, tiny_model):
    """A --max-length past the model's position table would crash mid-run (or extrapolate silently)."""
    folder = tmp_path / "bert"
    shutil.copytree(tiny_model("bert"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 128}))
    with pytest.raises(InputError, match="--max-length 300 exceeds"):
        loaded_encoder("hf-text", folder, max_length=300)


# ----- vision towers ------------------------------------------------------------------------------------------

def direct_vision(kind: str, folder: Path, paths: list[str]) -> np.ndarray:
    import torch
    import transformers as t

    model_class, processor_class = {"blip": (t.BlipForImageTextRetrieval, t.BlipImageProcessorPil),
                                    "align": (t.AlignModel, t.EfficientNetImageProcessorPil),
                                    "resnet": (t.ResNetModel, t.ConvNextImageProcessorPil)}[kind]
    model = loaded_checked(model_class, folder)
    tower = model if kind == "resnet" else model.vision_model
    pixels = processor_class.from_pretrained(folder)(images=open_rgb(paths), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return tower(pixel_values=pixels).pooler_output.flatten(1).numpy()


@pytest.mark.parametrize("encoder,kind", [("blip", "blip"), ("align", "align"), ("hf-vision", "resnet")])
def test_vision_tower_stores_a_direct_forward(tmp_path, tiny_model, synthetic_csv, encoder, kind):
    folder = tiny_model(kind)
    rows = extract_rows(synthetic_csv, tmp_path / "c", encoder, folder)
    frame = table(synthetic_csv)
    assert list(rows.ids) == list(frame["id"])
    assert_close_and_distinct(rows.matrix, direct_vision(kind, folder, list(frame["image_path"])))


def test_every_preprocessing_field_is_in_the_fingerprint(tmp_path, tiny_model):
    """crop_pct (ConvNeXt/ResNet processors) changes every pixel; a changed value must not reuse a cache."""
    folder = tmp_path / "resnet"
    shutil.copytree(tiny_model("resnet"), folder)
    before = create_encoder("hf-vision", EncoderOptions(model=str(folder))).fingerprint(Runtime(), "float32")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**config, "crop_pct": 0.5}))
    after = create_encoder("hf-vision", EncoderOptions(model=str(folder))).fingerprint(Runtime(), "float32")
    assert before["preprocessing"] != after["preprocessing"]


@pytest.mark.parametrize("name,checkpoint", [("hf-text", "bert"), ("deberta", "deberta"), ("blip-itm", "blip")])
def test_a_changed_tokenizer_changes_the_fingerprint(tmp_path, tiny_model, name, checkpoint):
    """Same weights, another vocabulary: other vectors, so the cache must not reuse the old ones."""
    folder = tmp_path / checkpoint
    shutil.copytree(tiny_model(checkpoint), folder)
    before = create_encoder(name, EncoderOptions(model=str(folder))).fingerprint(Runtime(), "float32")
    vocabulary = folder / ("spm.model" if checkpoint == "deberta" else "tokenizer.json")
    vocabulary.write_bytes(vocabulary.read_bytes() + b" ")
    after = create_encoder(name, EncoderOptions(model=str(folder))).fingerprint(Runtime(), "float32")
    assert before["weights"] == after["weights"] and before["preprocessing"] != after["preprocessing"]


class _RunsCodeWhenUnpickled:
    """Unpickling this calls open(marker, "w"): the file appears only if the weights file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_effnet_weights_are_loaded_without_unpickling_code_and_incomplete_ones_refused(tmp_path, monkeypatch):
    import torch

    from feat.extract.effnet import packaged_weights_path

    real_load, calls = torch.load, []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    create_encoder("effnet", EncoderOptions()).load(Runtime())
    assert calls == [True]

    marker = tmp_path / "code-ran"
    torch.save({"_fc.weight": _RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        create_encoder("effnet", EncoderOptions(model=str(tmp_path / "evil.pth"))).load(Runtime())
    assert not marker.exists(), "the weights file ran code"

    state = real_load(packaged_weights_path(), map_location="cpu", weights_only=True)
    dropped = sorted(state)[len(state) // 2]
    del state[dropped]
    torch.save(state, tmp_path / "incomplete.pth")
    with pytest.raises(FeatError, match=f"1 EfficientNet-Lite0 weights missing \\({re.escape(dropped)}\\); refusing"):
        create_encoder("effnet", EncoderOptions(model=str(tmp_path / "incomplete.pth"))).load(Runtime())


def test_extract_refuses_a_cache_of_another_model_or_compute_dtype(tmp_path, tiny_model):
    """--model names another folder (the same weights: the model is part of the identity), or --dtype
    computes in another precision: refused on the warm cache with the change named, nothing rewritten."""
    first, second = tmp_path / "bert", tmp_path / "bert-copy"
    shutil.copytree(tiny_model("bert"), first)
    shutil.copytree(tiny_model("bert"), second)
    data = text_table(tmp_path / "d.csv", 6)
    cache = tmp_path / "c"
    cli("extract", data, "-e", "hf-text", "--model", first, "-c", cache, "--dtype", "float32")
    before = (cache / "features" / "hf-text.h5").read_bytes()
    refused = " ".join(cli("extract", data, "-e", "hf-text", "--model", second, "-c", cache, "--dtype", "float32",
                           expect=2).output.split())
    assert f"model: '{first}' -> '{second}'" in refused, refused
    refused = " ".join(cli("extract", data, "-e", "hf-text", "--model", first, "-c", cache, "--dtype", "bfloat16",
                           expect=2).output.split())
    assert "compute_dtype: 'float32' -> 'bfloat16'" in refused, refused
    assert (cache / "features" / "hf-text.h5").read_bytes() == before


def test_extract_refuses_a_cache_of_another_tokenizer_or_other_weights(tmp_path, tiny_model):
    """The same folder with another vocabulary, then with other weights: each refused on the warm cache
    (exit 2, naming what changed), and --force re-encodes into other vectors."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "bert"
    shutil.copytree(tiny_model("bert"), folder)
    data = text_table(tmp_path / "d.csv", 6)
    cache = tmp_path / "c"
    args = ["extract", data, "-e", "hf-text", "--model", folder, "-c", cache]
    cli(*args)
    before = FeatureCache(cache).read("hf-text").rows.matrix

    vocabulary = json.loads((folder / "tokenizer.json").read_text())
    tokens = vocabulary["model"]["vocab"]
    first, second = sorted(t for t in tokens if t.isalpha() and len(t) > 3)[:2]
    tokens[first], tokens[second] = tokens[second], tokens[first]  # two words swap their embeddings
    (folder / "tokenizer.json").write_text(json.dumps(vocabulary))
    refused = " ".join(cli(*args, expect=2).output.split())
    assert "preprocessing: " in refused and "weights:" not in refused and "--force" in refused, refused
    assert np.array_equal(FeatureCache(cache).read("hf-text").rows.matrix, before), "nothing was rewritten"
    cli(*args, "--force")
    retokenized = FeatureCache(cache).read("hf-text").rows.matrix

    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key] = weights[key] + torch.full_like(weights[key], 0.5)
    save_file(weights, folder / "model.safetensors", {"format": "pt"})
    refused = " ".join(cli(*args, expect=2).output.split())
    assert "weights: 'sha256:" in refused and "preprocessing:" not in refused, refused
    cli(*args, "--force")
    assert not np.allclose(FeatureCache(cache).read("hf-text").rows.matrix, retokenized)


@pytest.mark.parametrize("name", ["hf-vision", "blip", "align", "clip-image", "blip-itm", "flava", "vilt"])
def test_image_transform_survives_pickling_into_workers(tiny_model, synthetic_csv, name):
    """--num-workers sends the transform to DataLoader processes by pickle."""
    import pickle

    from feat.extract.images import decode_image

    encoder = create_encoder(name, EncoderOptions(model=str(tiny_model(CASES[name][0]))))
    image = decode_image(table(synthetic_csv)["image_path"][0])[0]
    here, there = encoder.transform(), pickle.loads(pickle.dumps(encoder.transform()))
    assert np.array_equal(here(image).numpy(), there(image).numpy())


# ----- CLIP ---------------------------------------------------------------------------------------------------

def test_clip_text_stores_the_projected_text_embedding(tmp_path, tiny_model, synthetic_csv):
    import torch
    from transformers import AutoTokenizer, CLIPModel

    folder = tiny_model("clip")
    rows = extract_rows(synthetic_csv, tmp_path / "c", "clip-text", folder)
    model, tokenizer = loaded_checked(CLIPModel, folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        reference = torch.cat([model.get_text_features(**tokenizer(text, return_tensors="pt")).pooler_output
                               for text in table(synthetic_csv)["text"]]).numpy()
    assert_close_and_distinct(rows.matrix, reference)


def test_clip_image_stores_the_projected_image_embedding(tmp_path, tiny_model, synthetic_csv):
    import torch
    from transformers import CLIPImageProcessorPil, CLIPModel

    folder = tiny_model("clip")
    rows = extract_rows(synthetic_csv, tmp_path / "c", "clip-image", folder)
    pixels = CLIPImageProcessorPil.from_pretrained(folder)(images=open_rgb(table(synthetic_csv)["image_path"]),
                                                           return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = loaded_checked(CLIPModel, folder).get_image_features(pixel_values=pixels).pooler_output.numpy()
    assert_close_and_distinct(rows.matrix, reference)


# ----- joint encoders ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(JOINT))
def test_joint_extract_pairs_each_text_with_its_own_image(tmp_path, tiny_model, synthetic_csv, name):
    """Through `feat extract`: every stored row equals that row's text and image encoded alone, in input order."""
    folder = tiny_model(CASES[name][0])
    rows = extract_rows(synthetic_csv, tmp_path / "c", name, folder)
    frame = table(synthetic_csv)
    assert list(rows.ids) == list(frame["id"])
    encoder = loaded_encoder(name, folder)
    alone = np.concatenate([encoder.encode_pairs([text], joint_inputs(encoder, [path]))
                            for text, path in zip(frame["text"], frame["image_path"])])
    assert_close_and_distinct(rows.matrix, alone)


def test_blip_itm_is_the_cls_state_of_the_itm_pass(tiny_model, synthetic_csv):
    import torch
    from transformers import BlipForImageTextRetrieval

    folder = tiny_model("blip")
    frame = table(synthetic_csv).head(8)
    encoder = loaded_encoder("blip-itm", folder)
    pixels = joint_inputs(encoder, list(frame["image_path"]))
    stored = encoder.encode_pairs(list(frame["text"]), pixels)
    model = loaded_checked(BlipForImageTextRetrieval, folder)
    tokens = encoder.tokenizer(list(frame["text"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels,
                    use_itm_head=True)
    assert_close_and_distinct(stored, out.question_embeds[:, 0].numpy())


@pytest.mark.parametrize("pooling", ["cls", "pooler"])
def test_flava_is_the_multimodal_embedding(tiny_model, synthetic_csv, pooling):
    import torch
    from transformers import AutoTokenizer, FlavaImageProcessorPil, FlavaModel

    folder = tiny_model("flava")
    frame = table(synthetic_csv).head(8)
    encoder = loaded_encoder("flava", folder, pooling=pooling)
    stored = encoder.encode_pairs(list(frame["text"]), joint_inputs(encoder, list(frame["image_path"])))
    model = loaded_checked(FlavaModel, folder)
    pixels = FlavaImageProcessorPil.from_pretrained(folder)(images=open_rgb(frame["image_path"]),
                                                            return_tensors="pt")["pixel_values"]
    reference = []
    with torch.no_grad():
        for text, image in zip(frame["text"], pixels):
            out = model(**AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt"), pixel_values=image[None])
            reference.append(out.multimodal_embeddings[0, 0] if pooling == "cls" else out.multimodal_output.pooler_output[0])
    assert_close_and_distinct(stored, torch.stack(reference).numpy())


def test_vilt_matches_a_processor_padded_batch(tmp_path, tiny_model, synthetic_csv):
    """Images of three aspect ratios: feat's fixed canvas with a mask channel equals ViLT's own batch padding."""
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, ViltImageProcessorPil, ViltModel

    folder = tiny_model("vilt")
    frame = table(synthetic_csv).head(6)
    paths = []
    for i, (path, size) in enumerate(zip(frame["image_path"], [(48, 80), (80, 48), (60, 60)] * 2)):
        paths.append(tmp_path / f"{i}.png")
        Image.open(path).convert("RGB").resize(size).save(paths[-1])
    texts = list(frame["text"])
    encoder = loaded_encoder("vilt", folder)
    stored = encoder.encode_pairs(texts, joint_inputs(encoder, paths))
    images = ViltImageProcessorPil.from_pretrained(folder)(images=open_rgb(paths), return_tensors="pt")
    assert images["pixel_mask"].float().mean() < 1, "the images must need padding for this test to mean anything"
    model = loaded_checked(ViltModel, folder)
    with torch.no_grad():
        out = model(**AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt"), **images)
    assert_close_and_distinct(stored, out.pooler_output.numpy())


@pytest.mark.parametrize("name", sorted(JOINT))
def test_joint_encoder_shape_and_determinism(tiny_model, synthetic_csv, name):
    frame = table(synthetic_csv)
    texts, paths = list(frame["text"]), list(frame["image_path"])
    runs = []
    for _ in range(2):  # a fresh encoder each time: nothing may carry over but the saved weights
        encoder = loaded_encoder(name, tiny_model(CASES[name][0]))
        runs.append(np.concatenate([encoder.encode_pairs(texts[i:i + 8], joint_inputs(encoder, paths[i:i + 8]))
                                    for i in range(0, len(texts), 8)]))
    assert runs[0].shape == (len(frame), CASES[name][1]) and runs[0].dtype == np.float32
    assert np.isfinite(runs[0]).all()
    assert runs[0].tobytes() == runs[1].tobytes()


def test_joint_row_hash_follows_text_and_image():
    encoder = create_encoder("blip-itm")
    base = encoder.row_hash("a caption", "digest-1")
    assert base != encoder.row_hash("another caption", "digest-1")
    assert base != encoder.row_hash("a caption", "digest-2")
    assert base == create_encoder("flava").row_hash("a caption", "digest-1")


# ----- refusing random weights ----------------------------------------------------------------------------------

def copy_without(folder: Path, tensor: str, into: Path) -> Path:
    """A copy of a saved checkpoint with one tensor deleted, as a truncated or hand-edited file would be."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, into)
    weights = load_file(into / "model.safetensors")
    del weights[tensor]
    save_file(weights, into / "model.safetensors", metadata={"format": "pt"})
    return into


def test_missing_weights_refused_by_the_cli_and_nothing_stored(tmp_path, tiny_model, synthetic_csv):
    """The reference pitfall: a BLIP vision tower saved alone, given to `align`, must not load randomly."""
    result = cli("extract", synthetic_csv, "--encoder", "align", "--model", tiny_model("blip-vision-only"),
                 "--cache", tmp_path / "c", "--device", "cpu", expect=1)
    assert "would be random" in result.output and "AlignModel" in result.output
    assert FeatureCache(tmp_path / "c").fingerprint("align") is None


@pytest.mark.parametrize("encoder,model,error,message", [
    ("blip", "blip-vision-only", FeatError, "BlipForImageTextRetrieval: .* would be random"),
    ("align", "blip", FeatError, "AlignModel: .* would be random"),
    ("blip-itm", "align", FeatError, "would be random"),
    ("clip-image", "blip", FeatError, "BlipModel: .* would be random"),
    ("clip-text", "bert", InputError, "not a CLIP-family"),
    ("hf-text", "clip", InputError, "use --encoder clip-text"),
    ("hf-vision", "clip", InputError, "use --encoder clip-image"),
    ("deberta", "bert", InputError, "needs a deberta-v2 or deberta checkpoint"),
])
def test_wrong_checkpoint_is_refused(tiny_model, encoder, model, error, message):
    with pytest.raises(error, match=message):
        loaded_encoder(encoder, tiny_model(model))


@pytest.mark.parametrize("encoder,checkpoint,tensor", [
    ("hf-text", "bert", "encoder.layer.1.attention.self.query.weight"),
    ("deberta", "deberta", "encoder.layer.0.attention.self.query_proj.weight"),
    ("hf-vision", "resnet", "embedder.embedder.convolution.weight"),
    ("clip-text", "clip", "text_projection.weight"),
    ("clip-image", "clip", "visual_projection.weight"),
    ("blip-itm", "blip", "text_encoder.encoder.layer.0.crossattention.self.query.weight"),
    ("flava", "flava", "text_to_mm_projection.weight"),
    ("vilt", "vilt", "pooler.dense.weight"),
])
def test_checkpoint_with_a_deleted_tensor_is_refused(tmp_path, tiny_model, encoder, checkpoint, tensor):
    folder = copy_without(tiny_model(checkpoint), tensor, tmp_path / checkpoint)
    with pytest.raises(FeatError, match=f"1 would be random \\({re.escape(tensor)}\\)"):
        loaded_encoder(encoder, folder)


@pytest.mark.parametrize("name", ["deberta", "blip", "clip-text", "vilt"])
def test_offline_hub_id_fails_fast_with_the_reason(monkeypatch, name):
    """Offline, huggingface_hub retries each file with back-off for ~100 s; feat asks the local cache only:
    no connection is even attempted."""
    import socket

    from feat.extract import hf

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test forbids network connections")

    from huggingface_hub import constants

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(hf, "hub_reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)  # restored after the test
    with pytest.raises(FeatError, match="not in the local Hugging Face cache, and the hub is unreachable"):
        loaded_encoder(name, "feat-tests/no-such-model")
    assert not attempts, f"connections attempted: {attempts}"


def test_missing_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        loaded_encoder("hf-text", tmp_path / "nowhere")


# ----- every registered encoder ---------------------------------------------------------------------------------

def test_every_registered_encoder_is_tested():
    assert set(CASES) == set(ENCODERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_registered_encoder_rows_shape_and_determinism(tmp_path, tiny_model, small_synthetic_csv, name):
    checkpoint, dim = CASES[name]
    model = tiny_model(checkpoint) if checkpoint else None
    first = extract_rows(small_synthetic_csv, tmp_path / "a", name, model)
    second = extract_rows(small_synthetic_csv, tmp_path / "b", name, model)
    ids = list(table(small_synthetic_csv)["id"])
    assert list(first.ids) == ids and first.matrix.shape[0] == len(ids) and first.valid.all()
    if dim is not None:
        assert first.matrix.shape[1] == dim
    assert matrix_bytes(first.matrix) == matrix_bytes(second.matrix)
    values = first.matrix.data if hasattr(first.matrix, "indptr") else first.matrix
    assert np.isfinite(values).all() and np.abs(values).max() > 0


def matrix_bytes(matrix) -> bytes:
    if hasattr(matrix, "indptr"):  # CSR (tfidf)
        return matrix.data.tobytes() + matrix.indices.tobytes() + matrix.indptr.tobytes()
    return np.ascontiguousarray(matrix).tobytes()


# ----- the real offline encoders --------------------------------------------------------------------------------

def test_minilm_equals_sentence_transformers(tmp_path, synthetic_csv):
    from sentence_transformers import SentenceTransformer

    from feat.extract.minilm import packaged_model_path

    rows = extract_rows(synthetic_csv, tmp_path / "c", "minilm")
    texts = list(table(synthetic_csv)["text"])
    reference = SentenceTransformer(packaged_model_path(), device="cpu").encode(texts, convert_to_numpy=True)
    assert_close_and_distinct(rows.matrix, reference)


# ----- compute dtype --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hf-text", "deberta", "hf-vision", "blip", "align", "clip-text", "clip-image",
                                  "blip-itm", "flava", "vilt"])
def test_bfloat16_compute_gives_float32_vectors_near_float32_compute(tiny_model, synthetic_csv, name):
    """--dtype bfloat16 (the GPU default): every input and mask must follow the weights' dtype."""
    frame = table(synthetic_csv).head(4)
    vectors = {}
    for dtype in ("float32", "bfloat16"):
        encoder = create_encoder(name, EncoderOptions(model=str(tiny_model(CASES[name][0]))))
        encoder.load(Runtime(dtype=dtype))
        if encoder.modality == "text":
            vectors[dtype] = encoder.encode_texts(list(frame["text"]))
        elif encoder.modality == "image":
            vectors[dtype] = encoder.encode_pixels(joint_inputs(encoder, list(frame["image_path"])))
        else:
            vectors[dtype] = encoder.encode_pairs(list(frame["text"]), joint_inputs(encoder, list(frame["image_path"])))
    assert vectors["bfloat16"].dtype == np.float32
    scale = np.abs(vectors["float32"]).max()
    np.testing.assert_allclose(vectors["bfloat16"], vectors["float32"], atol=0.05 * scale, rtol=0)


# ----- real data ------------------------------------------------------------------------------------------------

MVSA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvsa_single" / "data.csv"


@pytest.mark.slow
@pytest.mark.skipif(not MVSA.exists(), reason=f"{MVSA} is absent")
def test_real_tweets_and_photos(tmp_path, tiny_model):
    """Real tweets (emoji, URLs, hashtags) and JPEG photos of any aspect ratio: MiniLM equals
    sentence-transformers, and ViLT's fixed canvas equals its processor's own batch padding."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, ViltImageProcessorPil, ViltModel

    from feat.extract.minilm import packaged_model_path

    frame = pd.read_csv(MVSA, keep_default_na=False).head(64)
    subset = frame.assign(image=[str(MVSA.parent / p) for p in frame["image"]])
    subset.to_csv(tmp_path / "data.csv", index=False)
    rows = extract_rows(tmp_path / "data.csv", tmp_path / "c", "minilm", None, "--allow-outside-root")
    reference = SentenceTransformer(packaged_model_path(), device="cpu").encode(list(frame["text"]))
    assert_close_and_distinct(rows.matrix, reference)

    folder = tiny_model("vilt")
    texts, paths = list(frame["text"][:16]), list(subset["image"][:16])
    encoder = loaded_encoder("vilt", folder)
    stored = encoder.encode_pairs(texts, joint_inputs(encoder, paths))
    images = ViltImageProcessorPil.from_pretrained(folder)(images=open_rgb(paths), return_tensors="pt")
    tokens = AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, max_length=40,
                                                   return_tensors="pt")
    with torch.no_grad():
        assert_close_and_distinct(stored, loaded_checked(ViltModel, folder)(**tokens, **images).pooler_output.numpy())
