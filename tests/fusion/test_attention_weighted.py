import torch

from polymodal.fusion import AttentionWeightedFusion, pooled_features


def test_weights_are_a_softmax_of_hand_computed_scores() -> None:
    torch.manual_seed(0)
    dims = {"image": 5, "text": 3, "audio": 4}
    fusion = AttentionWeightedFusion(dims, dim=6, attn_dim=7)
    pooled = {name: torch.randn(4, width) for name, width in dims.items()}
    out = fusion(pooled_features(pooled))

    projected = [fusion.proj[name].weight @ pooled[name].T + fusion.proj[name].bias[:, None] for name in dims]
    w_a, b_a, w = fusion.score_hidden.weight, fusion.score_hidden.bias, fusion.context.weight[0]
    scores = torch.stack([w @ torch.tanh(w_a @ h + b_a[:, None]) for h in projected], dim=1)  # (B, M)
    alpha = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
    torch.testing.assert_close(out.weights, alpha)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(4))
    expected = sum(alpha[:, m, None] * projected[m].T for m in range(3))
    torch.testing.assert_close(out.fused, expected)


def test_scores_select_a_modality() -> None:
    fusion = AttentionWeightedFusion({"image": 2, "text": 2}, dim=2)
    with torch.no_grad():
        for proj in fusion.proj.values():
            proj.weight.copy_(torch.eye(2))
            proj.bias.zero_()
        fusion.score_hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        fusion.score_hidden.bias.zero_()
        fusion.context.weight.copy_(torch.tensor([[50.0, 0.0]]))
    # Score = 50 tanh(h[0]): the modality with a positive first feature takes (almost) all the weight.
    out = fusion(pooled_features({"image": torch.tensor([[-1.0, 5.0]]), "text": torch.tensor([[1.0, 7.0]])}))
    torch.testing.assert_close(out.weights, torch.tensor([[0.0, 1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.fused, torch.tensor([[1.0, 7.0]]), atol=1e-5, rtol=0)
