import pytest
import torch

from polymodal.fusion import LateFusion, build_fusion, pooled_features

LOGITS = {"image": torch.tensor([[1.0, 0.0], [2.0, 2.0]]), "text": torch.tensor([[3.0, -2.0], [0.0, 4.0]])}


def test_mean_averages_logits() -> None:
    combined = LateFusion(["image", "text"])(LOGITS)
    torch.testing.assert_close(combined, (LOGITS["image"] + LOGITS["text"]) / 2)


def test_weighted_starts_at_the_mean_and_learns_softmax_weights() -> None:
    late = LateFusion(["image", "text"], mode="weighted")
    torch.testing.assert_close(late(LOGITS), (LOGITS["image"] + LOGITS["text"]) / 2)
    with torch.no_grad():
        late.logit_weights.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))
    torch.testing.assert_close(late.weights(LOGITS), torch.tensor([[0.25, 0.75]]).expand(2, -1))
    combined = late(LOGITS)
    torch.testing.assert_close(combined, 0.25 * LOGITS["image"] + 0.75 * LOGITS["text"])
    combined[:, 0].sum().backward()
    assert late.logit_weights.grad.abs().sum() > 0


def test_gate_is_per_sample_from_the_features() -> None:
    torch.manual_seed(0)
    late = LateFusion(["image", "text"], mode="gate", feature_dims={"image": 3, "text": 2})
    features = {"image": torch.randn(2, 3), "text": torch.randn(2, 2)}
    joint = torch.cat([features["image"], features["text"]], dim=-1)
    gates = torch.softmax(joint @ late.gate.weight.T + late.gate.bias, dim=-1)  # (B, 2)
    torch.testing.assert_close(late.weights(LOGITS, features), gates)
    expected = gates[:, :1] * LOGITS["image"] + gates[:, 1:] * LOGITS["text"]
    torch.testing.assert_close(late(LOGITS, features), expected)


def test_hybrid_treats_the_early_fusion_as_one_more_branch() -> None:
    torch.manual_seed(0)
    pooled = {"image": torch.randn(2, 3), "text": torch.randn(2, 4)}
    fusion = build_fusion("concat", {"image": 3, "text": 4}, dim=5)
    heads = {"image": torch.nn.Linear(3, 2), "text": torch.nn.Linear(4, 2), "fused": torch.nn.Linear(5, 2)}
    fused = fusion(pooled_features(pooled)).fused
    logits = {name: heads[name](pooled[name]) for name in pooled} | {"fused": heads["fused"](fused)}
    late = LateFusion(["image", "text", "fused"], mode="gate", feature_dims={"image": 3, "text": 4, "fused": 5})
    combined = late(logits, {**pooled, "fused": fused})
    assert combined.shape == (2, 2)
    torch.testing.assert_close(late.weights(logits, {**pooled, "fused": fused}).sum(-1), torch.ones(2))


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"missing branch \['text'\]"):
        LateFusion(["image", "text"])({"image": LOGITS["image"]})
    with pytest.raises(ValueError, match="mode='max'"):
        LateFusion(["image", "text"], mode="max")
    with pytest.raises(ValueError, match="feature_dims"):
        LateFusion(["image", "text"], mode="gate")
    with pytest.raises(ValueError, match="feature_dims"):
        LateFusion(["image", "text"], feature_dims={"image": 3})
    gate = LateFusion(["image", "text"], mode="gate", feature_dims={"image": 3})
    with pytest.raises(ValueError, match="needs the pooled features"):
        gate(LOGITS)
    with pytest.raises(ValueError, match=r"missing feature \['image'\]"):
        gate(LOGITS, {"text": torch.zeros(2, 3)})
