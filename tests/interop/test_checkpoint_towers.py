"""Pretrained towers by config inside other families: a CLIP image tower and a BERT text tower in a VQA model,
checked against the original libraries' outputs, and self-contained once saved."""
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, CLIPModel

import polymodal
from polymodal.interop.towers import build_model_with_towers, tower_tokenizer
from polymodal.typed_config import ConfigError

from .helpers import VQA_QUESTIONS, perturb, tiny_bert_tokenizer


@pytest.fixture(scope="module")
def hf_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hf-bert")
    tokenizer = tiny_bert_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    perturb(BertModel(config), seed=5).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def vqa_config(image: dict, text: dict) -> dict:
    return {"family": "vqa", "image": image, "text": text,
            "fusion": {"level": "early", "kind": "concat", "dim": 32}, "head_hidden": 32, "num_outputs": 5}


def test_clip_image_tower_and_bert_text_tower_in_a_vqa_model(hf_clip_dir, hf_bert_dir):
    model = build_model_with_towers(vqa_config({"type": "checkpoint", "path": str(hf_clip_dir), "frozen": True},
                                   {"type": "checkpoint", "path": str(hf_bert_dir), "context_length": 24})).eval()
    tokenizer = tower_tokenizer(model.config["text"], lambda: iter(()))
    image = torch.randn(2, 3, 32, 32)
    tokens = tokenizer(VQA_QUESTIONS[:2])
    with torch.no_grad():
        ours_image = model.encoders["image"](image).pooled
        ours_text = model.encoders["text"](tokens["input_ids"], tokens["attention_mask"]).tokens
        clip = CLIPModel.from_pretrained(hf_clip_dir).eval()
        bert = BertModel.from_pretrained(hf_bert_dir).eval()
        theirs_image = clip.vision_model(pixel_values=image).pooler_output  # post-LayerNorm CLS, as our pooled
        theirs_text = bert(**tokens).last_hidden_state
    torch.testing.assert_close(ours_image, theirs_image, atol=1e-5, rtol=0)
    mask = tokens["attention_mask"].bool()
    torch.testing.assert_close(ours_text[mask], theirs_text[mask], atol=1e-5, rtol=0)
    hf_ids = tiny_bert_tokenizer()(VQA_QUESTIONS[:2], padding=True)["input_ids"]
    assert tokens["input_ids"].tolist() == hf_ids, "the checkpoint's own WordPiece tokenizer"
    # frozen: the image tower is locked, the BERT tower (not frozen) fine-tunes.
    assert not any(p.requires_grad for p in model.encoders["image"].parameters())
    assert all(p.requires_grad for p in model.encoders["text"].parameters())
    # the image tower brings the checkpoint's preprocessing
    assert model.preprocess.mean == pytest.approx((0.5, 0.4, 0.3))


def test_a_saved_model_loads_without_the_source_checkpoints(hf_clip_dir, hf_bert_dir, tmp_path):
    clip_copy, bert_copy = tmp_path / "clip", tmp_path / "bert"
    shutil.copytree(hf_clip_dir, clip_copy)
    shutil.copytree(hf_bert_dir, bert_copy)
    config = vqa_config({"type": "checkpoint", "path": str(clip_copy)},
                        {"type": "checkpoint", "path": str(bert_copy), "context_length": 24})
    model = build_model_with_towers(config).eval()
    tokenizer = tower_tokenizer(model.config["text"], lambda: iter(()))
    saved = polymodal.save_model(model, tmp_path / "model", tokenizer)
    shutil.rmtree(clip_copy)
    shutil.rmtree(bert_copy)

    loaded = polymodal.load_model(saved)
    assert loaded.config["image"]["type"] == "vit" and loaded.config["text"]["type"] == "hf_text"
    batch = {"image": torch.randn(2, 3, 32, 32), **tokenizer(VQA_QUESTIONS[:2])}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch)["logits"], model(**batch)["logits"], atol=0, rtol=0)


def test_polymodal_checkpoint_tower_and_a_new_text_tower(tmp_path):
    """A trained polymodal dual encoder's image tower inside a new dual encoder with a from-scratch text tower."""
    source = polymodal.create_model("clip-tiny")
    with torch.no_grad():
        for parameter in source.image_encoder.parameters():
            parameter.add_(0.01)
    saved = polymodal.save_model(source, tmp_path / "source")
    config = polymodal.factory.get_model_config("clip-tiny")
    config["image"] = {"type": "checkpoint", "path": str(saved), "frozen": True}
    model = build_model_with_towers(config)
    for (name, ours), theirs in zip(model.image_encoder.state_dict().items(), source.image_encoder.state_dict().values()):
        assert torch.equal(ours, theirs), name
    assert not torch.equal(model.text_encoder.token_embed.weight, source.text_encoder.token_embed.weight)


@pytest.mark.parametrize("section, message", [
    ({"type": "checkpoint"}, "missing key image.path"),
    ({"type": "checkpoint", "path": "PATH", "tower": "audio"}, "image.tower = 'audio' is not one of: image, text"),
    ({"type": "checkpoint", "path": "PATH", "layers": 3}, "unknown key image.layers"),
])
def test_bad_sections_name_the_key(hf_clip_dir, section, message):
    section = {key: str(hf_clip_dir) if value == "PATH" else value for key, value in section.items()}
    with pytest.raises(ConfigError, match=message):
        build_model_with_towers(vqa_config(section, {"type": "gru", "vocab_size": 64, "context_length": 8, "width": 16}))


def test_bad_sources_name_the_file(hf_clip_dir, hf_bert_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    text = {"type": "gru", "vocab_size": 64, "context_length": 8, "width": 16}
    with pytest.raises(ValueError, match="empty: not a checkpoint directory"):
        build_model_with_towers(vqa_config({"type": "checkpoint", "path": str(tmp_path / "empty")}, text))
    with pytest.raises(ValueError, match="an image tower cannot come from this HF checkpoint"):
        build_model_with_towers(vqa_config({"type": "checkpoint", "path": str(hf_bert_dir)}, text))
    # CLIP's text tower sizes its position table by the context: a longer one than the checkpoint's cannot load.
    with pytest.raises(ConfigError, match=r"text tower from .*: pos_embed has shape \(16, 32\) there, \(20, 32\)"):
        build_model_with_towers(vqa_config({"type": "resnet", "image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
                               {"type": "checkpoint", "path": str(hf_clip_dir), "context_length": 20}))


@pytest.mark.slow
def test_train_and_answer_from_the_cli_with_checkpoint_towers(hf_clip_dir, hf_bert_dir, tmp_path):
    """A run config names the towers by path; `polymodal train` fine-tunes the BERT tower (the CLIP tower
    frozen), and `polymodal vqa` answers from the saved run alone."""
    from polymodal.model_io import load_model

    from tests.run_helpers import export_splits, polymodal_cli, train_with_cli

    export_splits("easy-vqa", tmp_path / "evqa", {"train": 96, "test": 16}, "vqa")
    model = vqa_config({"type": "checkpoint", "path": str(hf_clip_dir), "frozen": True},
                       {"type": "checkpoint", "path": str(hf_bert_dir), "context_length": 24})
    model["num_outputs"] = 16  # the answer vocabulary: the data's 16 commonest answers
    config = {"model": model, "out": str(tmp_path / "run"),
              "data": {"train": str(tmp_path / "evqa" / "train"), "val": str(tmp_path / "evqa" / "test")},
              "train": {"epochs": 1, "batch_size": 32, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 0,
                        "precision": "fp32"}}
    train_with_cli(tmp_path, config)
    trained = load_model(tmp_path / "run")
    bert = BertModel.from_pretrained(hf_bert_dir)
    assert not torch.equal(trained.encoders["text"].model.embeddings.word_embeddings.weight,
                           bert.embeddings.word_embeddings.weight), "the BERT tower fine-tuned"
    clip = CLIPModel.from_pretrained(hf_clip_dir)
    assert torch.equal(trained.encoders["image"].patch_embed.proj.weight,
                       clip.vision_model.embeddings.patch_embedding.weight), "the frozen CLIP tower did not move"
    image = next((tmp_path / "evqa" / "test" / "images").glob("*.png"))
    done = polymodal_cli("vqa", str(tmp_path / "run"), "--image", str(image), "--question", "what shape is it?")
    assert done.returncode == 0, done.stderr
