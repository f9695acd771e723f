"""open_clip checkpoints → polymodal: parity of embeddings and logits with open_clip's own encoders, open_clip's
tokenizer and preprocessing, and errors that name the config key or the file and tensor key."""
import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import polymodal
from polymodal.interop import load_open_clip

from .helpers import CAPTIONS, OPEN_CLIP_CONFIG, make_open_clip

ATOL = 1e-5
# OpenAI's layout with QuickGELU, and the CustomTextCLIP layout (text tower under `text.`) with exact GELU.
LAYOUTS = {
    "clip-quickgelu": OPEN_CLIP_CONFIG,
    "custom-text-gelu": {**OPEN_CLIP_CONFIG, "quick_gelu": False, "custom_text": True},
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def checkpoint(request, tmp_path_factory):
    """(open_clip model config, its model, the state dict saved as open_clip's training does)."""
    config = LAYOUTS[request.param]
    model = make_open_clip(config)
    path = tmp_path_factory.mktemp("open-clip") / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{key}": value for key, value in model.state_dict().items()}},
               path)
    return config, model, path


def test_embeddings_and_logits_match_open_clip(checkpoint):
    config, reference, path = checkpoint
    imported = load_open_clip(path, config)
    model = imported.model
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    open_clip_ids = open_clip.get_tokenizer("ViT-B-32", context_length=16)(CAPTIONS)
    batch = imported.tokenizer(CAPTIONS)
    # The same ids, ours padded to the longest caption only.
    assert torch.equal(open_clip_ids[:, : batch["input_ids"].shape[1]] * batch["attention_mask"], batch["input_ids"])
    with torch.no_grad():
        image, text = reference.encode_image(pixels), reference.encode_text(open_clip_ids)
        torch.testing.assert_close(model.encode_image(pixels, normalize=False), image, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.encode_text(**batch, normalize=False), text, atol=ATOL, rtol=0)
        # open_clip's own ids, fixed length and no mask, pool at the end-of-text token all the same.
        torch.testing.assert_close(model.encode_text(open_clip_ids, normalize=False), text, atol=ATOL, rtol=0)
        output = model(image=pixels, **batch)
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        torch.testing.assert_close(output["image_features"], image, atol=ATOL, rtol=0)
        torch.testing.assert_close(output["text_features"], text, atol=ATOL, rtol=0)
        logits = output["logit_scale"] * output["image_features"] @ output["text_features"].T
        torch.testing.assert_close(logits, reference.logit_scale.exp() * image @ text.T, atol=ATOL, rtol=0)


def test_named_config_preprocessing_and_save_load(checkpoint, monkeypatch, tmp_path):
    config, _, path = checkpoint
    named = {**config, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "polymodal-test-tiny", named)
    imported = load_open_clip(path, "polymodal-test-tiny")
    preprocess = imported.model.preprocess
    assert (preprocess.image_size, preprocess.interpolation, preprocess.mean) == (32, "bicubic", (0.5, 0.5, 0.5))
    directory = polymodal.save_model(imported.model, tmp_path / "model", imported.tokenizer)
    loaded = polymodal.load_model(directory)
    batch = polymodal.model_io.load_tokenizer(directory)(CAPTIONS)
    assert loaded.preprocess == preprocess
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(**batch), imported.model.encode_text(**batch))


def test_unsupported_config_key_is_named(checkpoint):
    config, _, path = checkpoint
    changed = copy.deepcopy(config)
    changed["vision_cfg"]["attentional_pool"] = True
    with pytest.raises(ValueError, match=r"open_clip model config: vision_cfg\.attentional_pool = True"):
        load_open_clip(path, changed)
    with pytest.raises(ValueError, match=r"vision_cfg\.layers = \[1, 1, 1, 1\] is a ResNet"):
        load_open_clip(path, {**config, "vision_cfg": {**config["vision_cfg"], "layers": [1, 1, 1, 1]}})


def test_mismatched_shape_names_file_and_key(checkpoint, tmp_path):
    config, model, _ = checkpoint
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    state["visual.proj"] = torch.zeros(48, 20)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"bad\.safetensors: key 'visual\.proj' has shape \(48, 20\)"):
        load_open_clip(path, config)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt: cannot read the weights"):
        load_open_clip(path, OPEN_CLIP_CONFIG)
