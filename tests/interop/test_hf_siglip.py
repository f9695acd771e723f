"""HF SiglipModel ↔ polymodal: the tokenizer and the preprocessing against SiglipProcessor, parity of embeddings and
logits (bias included), a bit-exact round trip, the model directory path, fine-tuning then exporting, and errors
that name the file and key."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import polymodal
from polymodal.data.packaged import skimage_photos
from polymodal.data.transforms import image_transform
from polymodal.factory import get_model_config
from polymodal.interop.hf_siglip import export_hf_siglip, load_hf_siglip
from polymodal.model_io import load_tokenizer
from polymodal.models.registry import build_loss, build_model

from .helpers import MEAN, SIGLIP_TEXTS, STD

pytest.importorskip("sentencepiece")
from transformers import SiglipConfig, SiglipModel, SiglipProcessor  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def imported(hf_siglip_dir):
    return load_hf_siglip(hf_siglip_dir)


@pytest.fixture(scope="module")
def hf_model(hf_siglip_dir):
    return SiglipModel.from_pretrained(hf_siglip_dir).eval()


@pytest.fixture(scope="module")
def processor(hf_siglip_dir):
    return SiglipProcessor.from_pretrained(hf_siglip_dir)


def _hf_text(processor, texts):
    """What SiglipModel's docs prescribe: padding to the context length."""
    return processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")


def _hf_logits(hf_model, pixels, batch):
    with torch.no_grad():
        return hf_model(pixel_values=pixels, **batch).logits_per_image


def _logits(model, pixels, batch):
    with torch.no_grad():
        output = model(image=pixels, **batch)
    return output["logit_scale"] * output["image_features"] @ output["text_features"].T + output["logit_bias"]


def test_tokenizer_matches_hf(imported, processor):
    hf = _hf_text(processor, SIGLIP_TEXTS)
    ours = imported.tokenizer(SIGLIP_TEXTS)
    assert ours["input_ids"].shape == (len(SIGLIP_TEXTS), 16)  # every text padded to the context length
    assert torch.equal(ours["input_ids"], hf["input_ids"])
    assert torch.equal(ours["attention_mask"], hf["attention_mask"])
    assert imported.tokenizer.decode(ours["input_ids"][3].tolist()) == "the sea at night"


def test_preprocessing_matches_hf_on_real_photos(imported, processor):
    photos = skimage_photos()
    records = [photos.records[i] for i in (0, 3, 4)]  # square, landscape and portrait photos
    transform = image_transform(imported.model.preprocess)
    for record in records:
        image = photos.load_image(record)
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(transform(image), expected, atol=ATOL, rtol=0)
    preprocess = imported.model.preprocess
    assert (preprocess.image_size, preprocess.resize_mode, preprocess.interpolation) == (32, "squash", "bicubic")
    assert list(preprocess.mean) == MEAN and list(preprocess.std) == STD


def test_embeddings_and_logits_match_hf(imported, hf_model, processor):
    model, batch = imported.model, imported.tokenizer(SIGLIP_TEXTS)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf_image = hf_model.get_image_features(pixel_values=pixels).pooler_output
        hf_text = hf_model.get_text_features(**batch).pooler_output
        # As big_vision trained it: no attention mask, padding read like any token.
        hf_unmasked = hf_model.get_text_features(input_ids=batch["input_ids"]).pooler_output
        image = model.encode_image(pixels, normalize=False)
        text = model.encode_text(batch["input_ids"], batch["attention_mask"], normalize=False)
        unmasked = model.encode_text(batch["input_ids"], normalize=False)
    torch.testing.assert_close(image, hf_image, atol=ATOL, rtol=0)
    torch.testing.assert_close(text, hf_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(unmasked, hf_unmasked, atol=ATOL, rtol=0)
    assert (text - unmasked).abs().max() > 1e-3  # the two readings differ: each comparison above means something
    hf_logits = _hf_logits(hf_model, pixels, _hf_text(processor, SIGLIP_TEXTS))
    assert hf_model.logit_scale.exp() > 100  # above CLIP's clamp, which polymodal must not apply here
    torch.testing.assert_close(_logits(model, pixels, batch), hf_logits, atol=ATOL, rtol=0)


def test_round_trip_is_bit_identical(imported, hf_siglip_dir, processor, tmp_path):
    exported = export_hf_siglip(imported.model, imported.tokenizer, tmp_path / "exported")
    original, again = load_file(hf_siglip_dir / "model.safetensors"), load_file(exported / "model.safetensors")
    assert sorted(again) == sorted(original)
    assert all(torch.equal(again[key], original[key]) for key in original)
    _, info = SiglipModel.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    before, after = SiglipConfig.from_pretrained(hf_siglip_dir), SiglipConfig.from_pretrained(exported)
    for section in ("vision_config", "text_config"):
        expected = {key: value for key, value in getattr(before, section).to_dict().items() if key != "dtype"}
        assert {key: getattr(after, section).to_dict()[key] for key in expected} == expected
    exported_processor = SiglipProcessor.from_pretrained(exported)
    image = skimage_photos().load_image(skimage_photos().records[3])
    inputs = dict(text=SIGLIP_TEXTS, images=image, padding="max_length", truncation=True, return_tensors="pt")
    again_inputs, original_inputs = exported_processor(**inputs), processor(**inputs)
    assert torch.equal(again_inputs["input_ids"], original_inputs["input_ids"])
    assert torch.equal(again_inputs["pixel_values"], original_inputs["pixel_values"])


def test_saves_and_loads_as_a_polymodal_model(imported, tmp_path):
    directory = polymodal.save_model(imported.model, tmp_path / "model", imported.tokenizer)
    loaded, tokenizer = polymodal.load_model(directory), load_tokenizer(directory)
    batch = tokenizer(SIGLIP_TEXTS)
    assert tokenizer.pad_to_context and torch.equal(batch["input_ids"], imported.tokenizer(SIGLIP_TEXTS)["input_ids"])
    assert loaded.preprocess == imported.model.preprocess
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, actual = imported.model(image=pixels, **batch), loaded(image=pixels, **batch)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_fine_tuned_model_exports_back(imported, tmp_path):
    """A few steps of polymodal's SigLIP loss lower it, and HF reproduces the fine-tuned model's logits."""
    model = build_model(imported.model.config, for_loading=True)  # a copy: the module's model stays as loaded
    model.load_state_dict(imported.model.state_dict())
    loss_fn = build_loss(model.config)
    photos = skimage_photos()
    transform = image_transform(model.preprocess)
    records = photos.records[:4]
    pixels = torch.stack([transform(photos.load_image(record)) for record in records])
    batch = imported.tokenizer([record.captions[0] for record in records])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    losses = []
    for _ in range(10):
        loss = loss_fn(**model(image=pixels, **batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]  # measured: 7.10 -> 1.02
    model.eval()
    exported = export_hf_siglip(model, imported.tokenizer, tmp_path / "fine-tuned")
    hf_model = SiglipModel.from_pretrained(exported).eval()
    torch.testing.assert_close(_logits(model, pixels, batch), _hf_logits(hf_model, pixels, batch), atol=ATOL, rtol=0)


def test_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"config\.json.*not an HF checkpoint"):
        load_hf_siglip(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match=r"config\.json: model_type = 'bert' is not supported"):
        load_hf_siglip(tmp_path)


def test_hub_name_without_hub_or_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"polymodal-test/no-such-model: no such directory, and the HF hub cannot"):
        load_hf_siglip("polymodal-test/no-such-model")


def test_mismatched_shape_names_file_and_key(hf_siglip_dir, tmp_path):
    directory = tmp_path / "changed"
    shutil.copytree(hf_siglip_dir, directory)
    state = load_file(directory / "model.safetensors")
    key = "vision_model.head.attention.in_proj_weight"
    state[key] = torch.zeros(96, 48)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"model\.safetensors: key '{key}' has shape \(96, 48\), the config says "
                                         r"\(144, 48\)"):
        load_hf_siglip(directory)


def test_unsupported_option_is_named(hf_siglip_dir, tmp_path):
    directory = tmp_path / "gelu-new"
    shutil.copytree(hf_siglip_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "relu"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: vision_config\.hidden_act = 'relu' is not supported"):
        load_hf_siglip(directory)


def test_export_refuses_a_model_hf_cannot_express(imported, tmp_path):
    model = build_model(get_model_config("siglip-tiny"))
    with pytest.raises(ValueError, match=r"config key image\.class_token = True: HF's SiglipModel needs False"):
        export_hf_siglip(model, imported.tokenizer, tmp_path)



def test_siglip_options_refuse_what_they_cannot_build():
    config = get_model_config("siglip-tiny")
    with pytest.raises(ValueError, match=r"pool='cls' needs class_token=True"):
        build_model({**config, "image": {**config["image"], "pool": "cls", "class_token": False}})
    with pytest.raises(ValueError, match=r"image_projection = 'none' needs the image tower's width \(128\) to equal "
                                         r"embed_dim \(64\)"):
        build_model({**config, "embed_dim": 64, "image_projection": "none"})
