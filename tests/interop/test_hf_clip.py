"""HF CLIPModel ↔ polymodal: parity of embeddings and logits, bit-exact round trip, the model directory path, and
errors that name the file and key."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

import polymodal
from polymodal.factory import get_model_config
from polymodal.interop import export_hf_clip, load_hf_clip
from polymodal.model_io import load_tokenizer
from polymodal.models.registry import build_model

from .helpers import CAPTIONS, MEAN, STD

ATOL = 1e-5


def _features(output):
    """transformers 5 returns a model output whose pooler_output is the projection; older versions the tensor."""
    return getattr(output, "pooler_output", output)


@pytest.fixture(scope="module")
def imported(hf_clip_dir):
    return load_hf_clip(hf_clip_dir)


@pytest.fixture(scope="module")
def hf_model(hf_clip_dir):
    return CLIPModel.from_pretrained(hf_clip_dir).eval()


def test_tokenizer_matches_hf(imported, hf_clip_dir):
    hf = CLIPTokenizer.from_pretrained(hf_clip_dir)(CAPTIONS, padding=True, return_tensors="pt")
    ours = imported.tokenizer(CAPTIONS)
    assert torch.equal(ours["input_ids"], hf["input_ids"])
    assert torch.equal(ours["attention_mask"], hf["attention_mask"])
    assert imported.tokenizer.decode(ours["input_ids"][0].tolist()) == "a photo of a cat"


def test_embeddings_and_logits_match_hf(imported, hf_model):
    model, batch = imported.model, imported.tokenizer(CAPTIONS)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf_image = _features(hf_model.get_image_features(pixel_values=pixels))
        hf_text = _features(hf_model.get_text_features(**batch))
        hf_logits = hf_model(pixel_values=pixels, **batch).logits_per_image
        image = model.encode_image(pixels, normalize=False)
        text = model.encode_text(batch["input_ids"], batch["attention_mask"], normalize=False)
        output = model(image=pixels, **batch)
    torch.testing.assert_close(image, hf_image, atol=ATOL, rtol=0)
    torch.testing.assert_close(text, hf_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(output["image_features"], F.normalize(hf_image, dim=-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(output["text_features"], F.normalize(hf_text, dim=-1), atol=ATOL, rtol=0)
    logits = output["logit_scale"] * output["image_features"] @ output["text_features"].T
    torch.testing.assert_close(logits, hf_logits, atol=ATOL, rtol=0)


def test_preprocessing_is_the_checkpoints(imported):
    preprocess = imported.model.preprocess
    assert (preprocess.image_size, preprocess.resize_size, preprocess.interpolation) == (32, 36, "bicubic")
    assert list(preprocess.mean) == MEAN and list(preprocess.std) == STD


def test_round_trip_is_bit_identical(imported, hf_clip_dir, tmp_path):
    exported = export_hf_clip(imported.model, imported.tokenizer, tmp_path / "exported")
    original, again = load_file(hf_clip_dir / "model.safetensors"), load_file(exported / "model.safetensors")
    assert sorted(again) == sorted(original)
    assert all(torch.equal(again[key], original[key]) for key in original)
    model, info = CLIPModel.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = CLIPTokenizer.from_pretrained(exported)(CAPTIONS, padding=True)["input_ids"]
    assert ids == CLIPTokenizer.from_pretrained(hf_clip_dir)(CAPTIONS, padding=True)["input_ids"]
    processor = CLIPImageProcessor.from_pretrained(exported)
    assert (processor.crop_size["height"], processor.size["shortest_edge"]) == (32, 36)
    assert list(processor.image_mean) == MEAN


def test_saves_and_loads_as_a_polymodal_model(imported, tmp_path):
    directory = polymodal.save_model(imported.model, tmp_path / "model", imported.tokenizer)
    loaded, tokenizer = polymodal.load_model(directory), load_tokenizer(directory)
    batch = tokenizer(CAPTIONS)
    assert torch.equal(batch["input_ids"], imported.tokenizer(CAPTIONS)["input_ids"])
    assert tokenizer.pad_id == imported.tokenizer.pad_id and tokenizer.context_length == 16
    assert loaded.preprocess == imported.model.preprocess
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(image=pixels, **batch)["text_features"],
                           imported.model(image=pixels, **batch)["text_features"])


def test_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"config\.json.*not an HF checkpoint"):
        load_hf_clip(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"config\.json: model_type = 'bert'"):
        load_hf_clip(tmp_path)


def _with_changed_weights(hf_clip_dir, tmp_path, change):
    directory = tmp_path / "changed"
    shutil.copytree(hf_clip_dir, directory)
    state = load_file(directory / "model.safetensors")
    change(state)
    save_file(state, str(directory / "model.safetensors"))
    return directory


def test_mismatched_shape_names_file_and_key(hf_clip_dir, tmp_path):
    key = "vision_model.encoder.layers.1.mlp.fc1.weight"
    directory = _with_changed_weights(hf_clip_dir, tmp_path, lambda state: state.update({key: torch.zeros(80, 48)}))
    with pytest.raises(ValueError, match=rf"model\.safetensors: key '{key}' has shape \(80, 48\)"):
        load_hf_clip(directory)


def test_missing_and_unexpected_keys_are_named(hf_clip_dir, tmp_path):
    key = "text_model.final_layer_norm.bias"
    directory = _with_changed_weights(hf_clip_dir, tmp_path, lambda state: state.pop(key))
    with pytest.raises(ValueError, match=rf"model\.safetensors: missing key '{key}'"):
        load_hf_clip(directory)
    directory = _with_changed_weights(hf_clip_dir, tmp_path / "2", lambda state: state.update(extra=torch.ones(1)))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected key 'extra'"):
        load_hf_clip(directory)


def test_export_refuses_a_model_hf_cannot_express(imported, tmp_path):
    model = build_model(get_model_config("clip-tiny"))
    with pytest.raises(ValueError, match=r"image\.pool = 'mean'"):
        export_hf_clip(model, imported.tokenizer, tmp_path)
