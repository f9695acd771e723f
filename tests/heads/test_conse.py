"""ConSE bridge: the math against a hand computation, and training-free image -> caption retrieval on photos."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from polymodal.heads.conse import ConSEBridge, build_imagenet_class_embeddings, imagenet_class_names


def test_imagenet_class_names_offline() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[967] == "espresso"


def test_top_k_renormalised_convex_combination_by_hand() -> None:
    embeddings = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])  # normalised by the bridge
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))  # softmax gives these probabilities back
    bridge = ConSEBridge(embeddings, top_k=2)
    # Top-2 = classes 0 and 1 with 0.5 and 0.3 -> weights 0.625 and 0.375 on the unit vectors (1,0), (0,1).
    torch.testing.assert_close(bridge(logits), torch.tensor([[0.625, 0.375]]))

    # Temperature 2 takes the square root of the probabilities before renormalising the top 3.
    bridge = ConSEBridge(embeddings, top_k=3, temperature=2.0)
    p = torch.tensor([0.5, 0.3, 0.15]).sqrt()
    w = p / p.sum()
    unit = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5**0.5, 0.5**0.5]])
    expected = w[0] * unit[0] + w[1] * unit[1] + w[2] * unit[2]
    torch.testing.assert_close(bridge(logits), expected[None])

    # top_k = 1 returns the single best class's unit embedding; all classes = full softmax mixture.
    torch.testing.assert_close(ConSEBridge(embeddings, top_k=1)(logits), torch.tensor([[1.0, 0.0]]))
    full = ConSEBridge(embeddings, top_k=4)(logits)
    torch.testing.assert_close(full, logits.softmax(-1) @ F.normalize(embeddings, dim=-1))


def test_bridge_validates_and_moves_buffer() -> None:
    with pytest.raises(ValueError):
        ConSEBridge(torch.randn(5, 3), top_k=6)
    with pytest.raises(ValueError):
        ConSEBridge(torch.randn(5, 3), temperature=0.0)
    bridge = ConSEBridge(torch.randn(5, 3), top_k=2)
    with pytest.raises(ValueError):
        bridge(torch.randn(2, 4))
    assert "class_embeddings" in bridge.state_dict() and bridge.width == 3
    assert torch.allclose(bridge.class_embeddings.norm(dim=-1), torch.ones(5))


def test_prompt_ensemble_by_hand() -> None:
    table = {"a {}.": torch.tensor([[2.0, 0.0], [0.0, 1.0]]), "the {}!": torch.tensor([[0.0, 5.0], [0.0, 3.0]])}

    def encode_text(texts: list[str]) -> torch.Tensor:
        template = "a {}." if texts[0].startswith("a ") else "the {}!"
        assert texts == [template.format(n) for n in ("x", "y")]
        return table[template]

    out = build_imagenet_class_embeddings(encode_text, templates=("a {}.", "the {}!"), class_names=["x", "y"])
    # Class x: mean of (1,0) and (0,1), renormalised; class y: (0,1) both times.
    torch.testing.assert_close(out, torch.tensor([[0.5**0.5, 0.5**0.5], [0.0, 1.0]]))


# Photo -> caption. Photos whose subject ImageNet knows (cat, espresso, missile, tripod) should retrieve their
# own caption; the astronaut has no ImageNet class (top-1 is "bobsled"), so it is the expected miss.
PHOTOS = {
    "chelsea": "a cat lying down",
    "coffee": "a cup of coffee on a saucer",
    "rocket": "a rocket on the launch pad",
    "camera": "a man with a camera on a tripod",
    "astronaut": "an astronaut in a space suit",
}


def test_conse_retrieves_captions_of_photos() -> None:
    pretrained = pytest.importorskip("polymodal.encoders.pretrained")
    if not (pretrained.efficientnet_lite0_available() and pretrained.minilm_available()):
        pytest.skip("polymodal[pretrained] missing")
    skimage_data = pytest.importorskip("skimage.data")
    image_tower = pretrained.EfficientNetLite0Tower()
    text_tower = pretrained.MiniLMTextTower()

    images = []
    for name in PHOTOS:
        array = getattr(skimage_data, name)()
        array = np.stack([array] * 3, axis=-1) if array.ndim == 2 else array  # camera is greyscale
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255
        image = TF.resize(image, int(image_tower.image_size / image_tower.crop_pct), antialias=True)
        image = TF.center_crop(image, image_tower.image_size)
        images.append(TF.normalize(image, image_tower.mean, image_tower.std))
    with torch.no_grad():
        logits = image_tower.classify(image_tower(torch.stack(images)).pooled)  # (5, 1000)

    # Only the top-k classes of these photos are ever read by the bridge, so embedding just those (instead of
    # all 1000 names, ~30 s on a busy CPU) gives exactly the same output; the other rows stay zero.
    top_k = 10
    used = sorted(set(logits.topk(top_k, dim=-1).indices.flatten().tolist()))
    names = imagenet_class_names()
    class_embeddings = torch.zeros(len(names), text_tower.width)
    class_embeddings[used] = build_imagenet_class_embeddings(
        text_tower.encode_text, templates=("a photo of a {}.",), class_names=[names[i] for i in used]
    )
    image_embeddings = F.normalize(ConSEBridge(class_embeddings, top_k=top_k)(logits), dim=-1)
    caption_embeddings = F.normalize(text_tower.encode_text(list(PHOTOS.values())), dim=-1)

    similarity = image_embeddings @ caption_embeddings.T  # (photos, captions)
    hits = similarity.argmax(dim=-1) == torch.arange(len(PHOTOS))
    correct = {name for name, hit in zip(PHOTOS, hits.tolist()) if hit}
    assert {"chelsea", "coffee", "rocket", "camera"} <= correct, similarity
