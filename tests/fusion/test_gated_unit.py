import torch

from polymodal.fusion import GatedMultimodalUnit, pooled_features


def test_two_modalities_match_the_paper_with_set_weights() -> None:
    fusion = GatedMultimodalUnit({"image": 2, "text": 3}, dim=2)
    w_v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w_t = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    w_z = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    with torch.no_grad():
        fusion.proj["image"].weight.copy_(w_v)
        fusion.proj["text"].weight.copy_(w_t)
        fusion.gate.linear.weight.copy_(w_z)
    x_v, x_t = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.3, 1.5]])
    h_v, h_t = torch.tanh(torch.tensor([[0.5, -1.0]])), torch.tanh(torch.tensor([[0.3, -1.5]]))
    z = torch.sigmoid(torch.tensor([[0.5, 1.5]]))  # σ(W_z [x_v; x_t]): picks x_v[0] and x_t[2]
    expected = z * h_v + (1 - z) * h_t
    torch.testing.assert_close(fusion(pooled_features({"image": x_v, "text": x_t})).fused, expected)


def test_no_biases_as_in_the_paper() -> None:
    fusion = GatedMultimodalUnit({"image": 2, "text": 3, "audio": 4}, dim=5)
    assert all("bias" not in name for name, _ in fusion.named_parameters())


def test_many_modalities_stay_in_the_convex_hull_of_the_views() -> None:
    torch.manual_seed(0)
    dims = {"image": 2, "text": 3, "audio": 4}
    fusion = GatedMultimodalUnit(dims, dim=5)
    with torch.no_grad():
        for proj in fusion.proj.values():
            proj.weight.zero_()
        fusion.proj["image"].weight.fill_(100.0)  # view saturated at tanh = 1 for positive inputs
    pooled = {name: torch.rand(3, width) for name, width in dims.items()}
    fused = fusion(pooled_features(pooled)).fused
    # The image view is ≈1, the others are tanh(0) = 0: fused is the image's softmax share, strictly in (0, 1).
    assert (fused > 0).all() and (fused < 1).all()
    gates = fusion.gate(torch.cat([pooled[name] for name in dims], dim=-1))
    torch.testing.assert_close(fused, gates[:, 0], atol=1e-6, rtol=0)
