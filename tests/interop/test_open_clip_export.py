"""polymodal → open_clip: open_clip's own loader takes the exported directory strictly, gives the same embeddings,
and an open_clip → polymodal → open_clip round trip is bit-identical; models open_clip cannot express are refused
by config key."""
import json
from dataclasses import replace

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from polymodal.factory import get_model_config
from polymodal.interop import load_hf_clip
from polymodal.interop.open_clip_ckpt import export_open_clip, load_open_clip
from polymodal.models.registry import build_model

from .helpers import CAPTIONS, OPEN_CLIP_CONFIG, make_open_clip

ATOL = 1e-5


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """An open_clip model (OpenAI's layout, QuickGELU) and its weights file, with a squashing preprocessing."""
    config = {**OPEN_CLIP_CONFIG, "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                                                     "interpolation": "bilinear", "resize_mode": "squash"}}
    model = make_open_clip(OPEN_CLIP_CONFIG)
    path = tmp_path_factory.mktemp("open-clip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return config, model, path


@pytest.fixture(scope="module")
def exported(original, tmp_path_factory):
    config, _, path = original
    imported = load_open_clip(path, config)
    return imported, export_open_clip(imported.model, imported.tokenizer, tmp_path_factory.mktemp("exported"))


def test_round_trip_is_bit_identical(original, exported):
    _, reference, _ = original
    _, directory = exported
    state, expected = load_file(directory / "open_clip_model.safetensors"), reference.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[key], expected[key]) for key in expected)


def test_open_clip_loads_it_and_embeds_alike(exported):
    imported, directory = exported
    # create_model loads a local directory's weights strictly (missing or unexpected keys raise).
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    model.eval()
    ids = open_clip.get_tokenizer(f"local-dir:{directory}")(CAPTIONS)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = imported.tokenizer(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(imported.model.encode_image(pixels, normalize=False), model.encode_image(pixels),
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(imported.model.encode_text(**batch, normalize=False), model.encode_text(ids),
                                   atol=ATOL, rtol=0)
    resize = transform.transforms[0]
    assert (resize.size, resize.interpolation.value) == ((32, 32), "bilinear")  # squash: both sides, no crop
    assert list(transform.transforms[-1].mean) == [0.5, 0.4, 0.3]


def test_exported_directory_loads_back(exported):
    imported, directory = exported
    again = load_open_clip(directory)
    assert again.model.preprocess == imported.model.preprocess
    state = again.model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in imported.model.state_dict().items())


def test_refuses_preprocessing_and_tokenizer_open_clip_lacks(hf_clip_dir, tmp_path):
    """The tiny HF CLIP has OpenAI's architecture, but resizes to 36 before its 32 crop (open_clip resizes to the
    crop size) and has its own vocabulary (open_clip's CLIP always reads OpenAI's)."""
    imported = load_hf_clip(hf_clip_dir)
    with pytest.raises(ValueError, match=r"config key image\.preprocess\.resize_size = 36: open_clip resizes to"):
        export_open_clip(imported.model, imported.tokenizer, tmp_path)
    imported.model.preprocess = replace(imported.model.preprocess, resize_size=32)
    with pytest.raises(ValueError, match=r"the tokenizer \(\d+ tokens\) is not open_clip's BPE"):
        export_open_clip(imported.model, imported.tokenizer, tmp_path)


def test_refuses_what_open_clip_cannot_express(exported, tmp_path):
    imported, _ = exported
    model = build_model(get_model_config("clip-resnet-gru"))
    with pytest.raises(ValueError, match=r"config key image\.type = 'resnet': open_clip's CLIP needs 'vit'"):
        export_open_clip(model, imported.tokenizer, tmp_path)


def test_directory_without_config(tmp_path):
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"needs its model config .* there is no .*open_clip_config\.json"):
        load_open_clip(tmp_path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"embed_dim": 24}))
    with pytest.raises(ValueError, match=r"open_clip_config\.json: missing key model_cfg"):
        load_open_clip(tmp_path)
