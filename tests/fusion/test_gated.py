import torch

from polymodal.fusion import GatedAdditiveFusion, GatedMultiplicativeFusion, pooled_features
from polymodal.fusion.gated import ConvexGate

DIMS = {"image": 3, "text": 3}


def identity_projections(fusion: torch.nn.Module) -> None:
    """Make h_m' = h_m, so the seed's formulas apply to the raw vectors."""
    with torch.no_grad():
        for proj in fusion.proj.values():
            proj.weight.copy_(torch.eye(3))
            proj.bias.zero_()


def test_multiplicative_matches_the_seed_formula() -> None:
    torch.manual_seed(0)
    fusion = GatedMultiplicativeFusion(DIMS, dim=3)
    identity_projections(fusion)
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    # Reference: f = x1 ⊙ σ(W_x [x1; x2] + b_x) + x2 ⊙ σ(W_y [x1; x2] + b_y), W_x/W_y the gate's row blocks.
    w, b = fusion.gate.weight, fusion.gate.bias
    joint = torch.cat([x1, x2], dim=-1)
    expected = x1 * torch.sigmoid(joint @ w[:3].T + b[:3]) + x2 * torch.sigmoid(joint @ w[3:].T + b[3:])
    torch.testing.assert_close(fusion(pooled_features({"image": x1, "text": x2})).fused, expected)


def test_multiplicative_gates_are_independent() -> None:
    fusion = GatedMultiplicativeFusion(DIMS, dim=3)
    identity_projections(fusion)
    with torch.no_grad():
        fusion.gate.weight.zero_()
        fusion.gate.bias.fill_(10.0)  # both gates open: the output is (almost) x1 + x2, not a convex mix
    x1, x2 = torch.ones(1, 3), 2 * torch.ones(1, 3)
    expected = torch.sigmoid(torch.tensor(10.0)) * (x1 + x2)
    torch.testing.assert_close(fusion(pooled_features({"image": x1, "text": x2})).fused, expected)


def test_additive_gate_is_complementary() -> None:
    fusion = GatedAdditiveFusion(DIMS, dim=3)
    identity_projections(fusion)
    with torch.no_grad():
        fusion.gate.linear.weight.zero_()
        fusion.gate.linear.bias.copy_(torch.tensor([0.0, 2.0, -2.0]))
    x1, x2 = torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[3.0, 3.0, 3.0]])
    lam = torch.sigmoid(torch.tensor([0.0, 2.0, -2.0]))
    expected = lam * x1 + (1 - lam) * x2  # λ_1 ⊙ x1 + λ_2 ⊙ x2 with λ_2 = 1 − λ_1
    torch.testing.assert_close(fusion(pooled_features({"image": x1, "text": x2})).fused, expected)


def test_convex_gate_sums_to_one() -> None:
    torch.manual_seed(0)
    for count in (2, 3, 4):
        gates = ConvexGate(5, count, 6)(torch.randn(4, 5))
        assert gates.shape == (4, count, 6) and (gates >= 0).all()
        torch.testing.assert_close(gates.sum(dim=1), torch.ones(4, 6))
