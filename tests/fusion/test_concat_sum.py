import torch

from polymodal.fusion import ConcatFusion, SumFusion, pooled_features
from polymodal.layers.mlp import Mlp

H1, H2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0, 0.5]])
FEATURES = pooled_features({"image": H1, "text": H2})


def test_concat_is_a_linear_map_of_the_concatenation() -> None:
    fusion = ConcatFusion({"image": 2, "text": 3}, dim=2)
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, -2.0], [0.0, 1.0, 0.0, 1.0, 4.0]])
    bias = torch.tensor([0.5, -0.5])
    with torch.no_grad():
        fusion.proj.weight.copy_(weight)
        fusion.proj.bias.copy_(bias)
    expected = torch.tensor([[1 + 6 - 1 + 0.5, 2 - 1 + 2 - 0.5]])  # W [h1; h2] + b by hand
    torch.testing.assert_close(fusion(FEATURES).fused, expected)


def test_concat_order_follows_input_dims_not_the_mapping() -> None:
    fusion = ConcatFusion({"image": 2, "text": 3}, dim=4)
    reordered = {"text": FEATURES["text"], "image": FEATURES["image"]}
    expected = fusion.proj(torch.cat([H1, H2], dim=-1))
    torch.testing.assert_close(fusion(reordered).fused, expected)


def test_concat_hidden_is_an_mlp() -> None:
    fusion = ConcatFusion({"image": 2, "text": 3}, dim=4, hidden=7)
    assert isinstance(fusion.proj, Mlp) and fusion.proj.fc1.out_features == 7
    torch.testing.assert_close(fusion(FEATURES).fused, fusion.proj(torch.cat([H1, H2], dim=-1)))


def test_sum_adds_the_projections() -> None:
    fusion = SumFusion({"image": 2, "text": 3}, dim=2)
    with torch.no_grad():
        fusion.proj["image"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        fusion.proj["text"].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]))
        fusion.bias.copy_(torch.tensor([10.0, 20.0]))
    expected = torch.tensor([[1 + (3 - 1) + 10, 4 + 1 + 20]], dtype=torch.float)
    torch.testing.assert_close(fusion(FEATURES).fused, expected)
