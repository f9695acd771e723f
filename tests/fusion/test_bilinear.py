import torch

from polymodal.fusion import BilinearFusion, pooled_features


def test_matches_mlb_formula() -> None:
    torch.manual_seed(0)
    fusion = BilinearFusion({"image": 3, "text": 4}, dim=5, rank=6)
    h1, h2 = torch.randn(2, 3), torch.randn(2, 4)
    u, v, p = fusion.factors["image"], fusion.factors["text"], fusion.out
    expected = (torch.tanh(h1 @ u.weight.T + u.bias) * torch.tanh(h2 @ v.weight.T + v.bias)) @ p.weight.T + p.bias
    torch.testing.assert_close(fusion(pooled_features({"image": h1, "text": h2})).fused, expected)
    assert fusion.factors["image"].out_features == 6


def test_more_modalities_multiply_all_factors() -> None:
    torch.manual_seed(0)
    dims = {"image": 3, "text": 4, "audio": 2}
    fusion = BilinearFusion(dims, dim=5)
    pooled = {name: torch.randn(2, width) for name, width in dims.items()}
    joint = torch.ones(2, 5)  # rank defaults to dim
    for name in dims:
        joint = joint * torch.tanh(fusion.factors[name](pooled[name]))
    torch.testing.assert_close(fusion(pooled_features(pooled)).fused, fusion.out(joint))


def test_no_unimodal_term() -> None:
    fusion = BilinearFusion({"image": 3, "text": 4}, dim=5)
    with torch.no_grad():
        fusion.factors["text"].bias.zero_()
    # With the text factor's bias at zero, a zero text vector zeroes the joint space: only P's bias is left.
    out = fusion(pooled_features({"image": torch.randn(2, 3), "text": torch.zeros(2, 4)}))
    torch.testing.assert_close(out.fused, fusion.out.bias.expand(2, -1))
