import torch

import pytest

from polymodal.layers import AttentionPool, first_token, last_valid_token, masked_mean, ordered_slots


def test_masked_mean_averages_real_positions_only() -> None:
    x = torch.randn(2, 5, 3)
    x[1, 2:] = float("inf")  # padding content must not leak, even when non-finite
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    out = masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0].mean(0))
    torch.testing.assert_close(out[1], x[1, :2].mean(0))
    torch.testing.assert_close(masked_mean(x[:1]), x[0:1].mean(1))
    assert torch.equal(masked_mean(x, torch.zeros(2, 5)), torch.zeros(2, 3))


def test_ordered_slots_keeps_positions_zeroes_padding_and_fills_to_length() -> None:
    x = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2) + 1  # rows [[1,2],[3,4],[5,6]], [[7,8],...]
    x[1, 2] = float("inf")  # padding, must come out as 0
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    out = ordered_slots(x, mask, slots=4)
    assert out.tolist() == [[1, 2, 3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 0, 0, 0, 0]]
    # Padding past the slots may be cut; real tokens may not.
    assert ordered_slots(x[1:], mask[1:], slots=2).tolist() == [[7, 8, 9, 10]]
    with pytest.raises(ValueError, match="slots=2 is shorter than a sequence with 3 real tokens"):
        ordered_slots(x, mask, slots=2)
    with pytest.raises(ValueError, match="slots=2 is shorter than the 3 tokens"):
        ordered_slots(x[:1], None, slots=2)
    assert ordered_slots(x[:1], None, slots=3).tolist() == [[1, 2, 3, 4, 5, 6]]


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
