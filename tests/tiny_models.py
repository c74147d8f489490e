"""Tiny Hugging Face checkpoints with random weights, saved like the real ones, built offline in about a second.

Each `save_*` writes a folder that `from_pretrained` loads exactly as it would load the hub checkpoint the
encoder defaults to: same model class, same processor and tokenizer classes, only small. Weights are random
but seeded and non-degenerate (vectors differ between inputs), so a test that compares an encoder with a
direct transformers forward of the saved folder catches a silently re-initialised tower.
"""

from __future__ import annotations

import json
from pathlib import Path

from feat.synthetic import COLOURS, FILLERS, HAPPY, SAD

SEED = 0
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus() -> list[str]:
    """Lines covering the synthetic dataset's words, so that tokens are mostly known (not all [UNK])."""
    lines = [f"{m} {f} #{c}" for m in HAPPY + SAD for f, c in zip(FILLERS, COLOURS)]
    return lines + ["a photo of a circle", "a red square and a blue triangle", "the quick brown fox"]


def _seeded():
    import torch

    torch.manual_seed(SEED)


def _lively_convs(model):
    """He-initialise convolutions: with the default std 0.02 a deep tiny CNN maps every image to almost the
    same vector (1e-13 apart), and a test could not tell one input from another."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


# ----- tokenizers ---------------------------------------------------------------------------------------------

def bert_tokenizer():
    """A BertTokenizer (WordPiece, lower case) whose vocabulary is trained on `corpus()`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=BERT_SPECIALS))
    return BertTokenizer(vocab=raw.get_vocab())


def clip_tokenizer():
    """A CLIPTokenizer (byte-level BPE with `</w>` word ends) whose merges are trained on `corpus()`."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    raw = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    raw.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(corpus(), trainer)
    model = json.loads(raw.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges)


def save_sentencepiece(folder: Path) -> Path:
    """An `spm.model` like microsoft/deberta-v3-base ships (the real repo has no tokenizer.json)."""
    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=str(folder / "spm"), vocab_size=100, model_type="unigram",
        hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2, num_threads=1)
    return folder / "spm.model"


# ----- text models --------------------------------------------------------------------------------------------

def save_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer = bert_tokenizer()
    _seeded()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_deberta(folder: Path) -> Path:
    """DeBERTa-v3 layout: relative attention, no absolute positions, no pooler, sentencepiece tokenizer."""
    from transformers import DebertaV2Config, DebertaV2Model

    save_sentencepiece(folder)
    # The real repo's tokenizer_config.json names the class; the vocabulary comes from spm.model.
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer",
                                                              "do_lower_case": False}))
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(folder))
    _seeded()
    config = DebertaV2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=48, max_position_embeddings=128, type_vocab_size=0,
                             relative_attention=True, max_relative_positions=-1, position_buckets=16,
                             norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
                             position_biased_input=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    DebertaV2Model(config).save_pretrained(folder)
    return folder


# ----- vision and multimodal models ---------------------------------------------------------------------------

def save_resnet(folder: Path) -> Path:
    """microsoft/resnet-50's architecture (bottleneck ResNet + ConvNextImageProcessor), tiny."""
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetModel

    _seeded()
    config = ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck")
    ResNetModel(config).save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    return folder


def _blip_config(vocab: int):
    from transformers import BlipConfig

    # BLIP's own special ids (30522, ...) lie outside a tiny vocabulary: use the BERT ones of ours.
    text = dict(vocab_size=vocab, hidden_size=32, encoder_hidden_size=32, intermediate_size=48,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                bos_token_id=BERT_SPECIALS.index("[CLS]"), sep_token_id=BERT_SPECIALS.index("[SEP]"),
                eos_token_id=BERT_SPECIALS.index("[SEP]"), pad_token_id=0)
    # The default vision initializer_range (1e-10) makes near-constant vectors; 0.02 makes inputs distinguishable.
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8, initializer_range=0.02)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16)


def save_blip(folder: Path) -> Path:
    """Salesforce/blip-itm-base-coco's classes (BlipForImageTextRetrieval, BlipImageProcessor, BERT tokens)."""
    from transformers import BlipForImageTextRetrieval, BlipImageProcessorPil

    tokenizer = bert_tokenizer()
    _seeded()
    BlipForImageTextRetrieval(_blip_config(len(tokenizer))).save_pretrained(folder)
    BlipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_blip_vision_only(folder: Path) -> Path:
    """A BLIP vision tower saved alone: a checkpoint that lacks most weights of any full model class."""
    from transformers import BlipImageProcessorPil, BlipVisionModel

    _seeded()
    BlipVisionModel(_blip_config(200).vision_config).save_pretrained(folder)
    BlipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_align(folder: Path) -> Path:
    """kakaobrain/align-base's classes (AlignModel, EfficientNetImageProcessor with a centre crop), tiny."""
    from transformers import AlignConfig, AlignModel, EfficientNetImageProcessorPil

    tokenizer = bert_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=48, max_position_embeddings=64)
    vision = dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.5, kernel_sizes=[3, 3, 5],
                  in_channels=[32, 16, 24], out_channels=[16, 24, 40], strides=[1, 2, 2],
                  num_block_repeats=[1, 1, 2], expand_ratios=[1, 6, 6], hidden_dim=64, depthwise_padding=[])
    _seeded()
    _lively_convs(AlignModel(AlignConfig(text_config=text, vision_config=vision, projection_dim=16))).save_pretrained(
        folder)
    EfficientNetImageProcessorPil(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32},
                                  do_center_crop=True, rescale_offset=True, include_top=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_clip(folder: Path) -> Path:
    """openai/clip-vit-base-patch32's classes (CLIPModel, CLIPImageProcessor, CLIPTokenizer), tiny."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    _seeded()
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_flava(folder: Path) -> Path:
    """facebook/flava-full's base model class (FlavaModel, FlavaImageProcessor, BERT tokens), tiny."""
    from transformers import FlavaConfig, FlavaImageProcessorPil, FlavaModel

    tokenizer = bert_tokenizer()
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    config = FlavaConfig(image_config=dict(common, image_size=32, patch_size=8),
                         text_config=dict(common, vocab_size=len(tokenizer), max_position_embeddings=77),
                         multimodal_config=common, hidden_size=32, projection_dim=16, init_codebook=False)
    _seeded()
    FlavaModel(config).save_pretrained(folder)
    FlavaImageProcessorPil(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_vilt(folder: Path) -> Path:
    """dandelin/vilt-b32-mlm's base model class (ViltModel, ViltImageProcessor with its pixel mask), tiny."""
    from transformers import ViltConfig, ViltImageProcessorPil, ViltModel

    tokenizer = bert_tokenizer()
    _seeded()
    config = ViltConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=40, image_size=64, patch_size=16)
    ViltModel(config).save_pretrained(folder)
    ViltImageProcessorPil(size={"shortest_edge": 48}, size_divisor=16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


BUILDERS = {"bert": save_bert, "deberta": save_deberta, "resnet": save_resnet, "blip": save_blip,
            "blip-vision-only": save_blip_vision_only, "align": save_align, "clip": save_clip,
            "flava": save_flava, "vilt": save_vilt}
