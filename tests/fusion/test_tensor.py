import torch

from polymodal.fusion import LowRankTensorFusion, TensorFusion, pooled_features


def with_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(1)])


def test_product_is_the_flattened_outer_product_with_ones() -> None:
    fusion = TensorFusion({"image": 3, "text": 2}, dim=4, proj_dim=None)
    h1, h2 = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]), torch.tensor([[2.0, 4.0], [-1.0, 0.5]])
    z = fusion.product(pooled_features({"image": h1, "text": h2}))
    for b in range(2):
        torch.testing.assert_close(z[b], torch.outer(with_one(h1[b]), with_one(h2[b])).flatten())
    # The appended 1 keeps the unimodal terms and the constant inside z.
    assert z.shape == (2, 4 * 3) and z[0, -1] == 1


def test_product_of_three_modalities() -> None:
    fusion = TensorFusion({"image": 2, "text": 3, "audio": 1}, dim=4, proj_dim=None)
    pooled = {"image": torch.randn(1, 2), "text": torch.randn(1, 3), "audio": torch.randn(1, 1)}
    a, b, c = (with_one(pooled[name][0]) for name in ("image", "text", "audio"))
    expected = torch.einsum("i,j,k->ijk", a, b, c).flatten()
    torch.testing.assert_close(fusion.product(pooled_features(pooled))[0], expected)


def test_projected_product_uses_the_projections() -> None:
    fusion = TensorFusion({"image": 5, "text": 7}, dim=4, proj_dim=3)
    pooled = {"image": torch.randn(1, 5), "text": torch.randn(1, 7)}
    p1, p2 = (fusion.proj[name](pooled[name])[0] for name in ("image", "text"))
    expected = torch.outer(with_one(p1), with_one(p2)).flatten()
    torch.testing.assert_close(fusion.product(pooled_features(pooled))[0], expected)
    assert fusion.out.in_features == 16


def test_low_rank_equals_tensor_fusion_with_the_reconstructed_weight() -> None:
    torch.manual_seed(0)
    dims, dim, rank = {"image": 3, "text": 4}, 5, 3
    low_rank = LowRankTensorFusion(dims, dim, rank=rank)
    full = TensorFusion(dims, dim, proj_dim=None)
    f1, f2 = low_rank.factors["image"], low_rank.factors["text"]  # (r, d_m + 1, dim)
    # Liu et al.: W[a, b, k] = Σ_i W_1^{(i)}[a, k] W_2^{(i)}[b, k], flattened like the product (a slow, b fast).
    weight = torch.einsum("rak,rbk->abk", f1, f2).reshape(-1, dim)  # ((d1+1)(d2+1), dim)
    with torch.no_grad():
        low_rank.bias.copy_(torch.randn(dim))
        full.out.weight.copy_(weight.T)
        full.out.bias.copy_(low_rank.bias)
    features = pooled_features({name: torch.randn(4, width) for name, width in dims.items()})
    torch.testing.assert_close(low_rank(features).fused, full(features).fused)


def test_low_rank_factors_are_registered_parameters() -> None:
    dims, dim, rank = {"image": 3, "text": 4, "audio": 2}, 5, 2
    fusion = LowRankTensorFusion(dims, dim, rank=rank)
    names = dict(fusion.named_parameters())
    assert set(names) == {"factors.image", "factors.text", "factors.audio", "bias"}
    assert names["factors.text"].shape == (rank, 4 + 1, dim)
    assert sum(p.numel() for p in fusion.parameters()) == rank * (4 + 5 + 3) * dim + dim
    assert set(fusion.state_dict()) == set(names)
