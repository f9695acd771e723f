import torch

from polymodal.layers import AttentionPool, first_token, last_valid_token, masked_mean


def test_masked_mean_averages_real_positions_only() -> None:
    x = torch.randn(2, 5, 3)
    x[1, 2:] = float("inf")  # padding content must not leak, even when non-finite
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    out = masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0].mean(0))
    torch.testing.assert_close(out[1], x[1, :2].mean(0))
    torch.testing.assert_close(masked_mean(x[:1]), x[0:1].mean(1))
    assert torch.equal(masked_mean(x, torch.zeros(2, 5)), torch.zeros(2, 3))


def test_first_and_last_valid_token() -> None:
    x = torch.arange(2 * 4, dtype=torch.float).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    assert first_token(x)[:, 0].tolist() == [0.0, 4.0]
    assert last_valid_token(x, right)[:, 0].tolist() == [2.0, 7.0]
    assert last_valid_token(x, left)[:, 0].tolist() == [3.0, 7.0]
    assert last_valid_token(x)[:, 0].tolist() == [3.0, 7.0]


def test_attention_pool_shape_and_padding_invariance() -> None:
    torch.manual_seed(0)
    pool = AttentionPool(8, num_heads=2).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out = pool(x, mask)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[1:], pool(x[1:, :3]), atol=1e-5, rtol=1e-5)
