"""Attention checked against nn.MultiheadAttention and for padding / causal behaviour."""
import pytest
import torch
from torch import nn

from polymodal.layers import Attention, CrossAttention, make_attn_mask

D, H = 16, 4


def _attention_from(mha: nn.MultiheadAttention) -> Attention:
    attn = Attention(D, H)
    with torch.no_grad():
        attn.qkv.weight.copy_(mha.in_proj_weight)
        attn.qkv.bias.copy_(mha.in_proj_bias)
        attn.proj.weight.copy_(mha.out_proj.weight)
        attn.proj.bias.copy_(mha.out_proj.bias)
    return attn.eval()


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_multihead_attention(causal: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, H, batch_first=True).eval()
    attn = _attention_from(mha)
    x = torch.randn(3, 7, D)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    # nn.MultiheadAttention masks use the opposite polarity: True = ignore.
    future = torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else None
    expected, _ = mha(x, x, x, key_padding_mask=~mask, attn_mask=future, need_weights=False)
    torch.testing.assert_close(attn(x, mask=mask, causal=causal), expected, atol=1e-5, rtol=1e-5)
    expected_nomask, _ = mha(x, x, x, attn_mask=future, need_weights=False)
    torch.testing.assert_close(attn(x, causal=causal), expected_nomask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_masked_attention_equals_attention_on_unpadded_sequence(causal: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(D, H).eval()
    n_real = 3
    x = torch.randn(1, 6, D)
    x[:, n_real:] = 1e4  # garbage in the padding must not reach real positions
    mask = torch.tensor([[True] * n_real + [False] * 3])
    padded = attn(x, mask=mask, causal=causal)[:, :n_real]
    alone = attn(x[:, :n_real], causal=causal)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_causal_attention_ignores_later_tokens() -> None:
    torch.manual_seed(0)
    attn = Attention(D, H).eval()
    x = torch.randn(2, 6, D)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, D)
    torch.testing.assert_close(attn(x, causal=True)[:, :4], attn(changed, causal=True)[:, :4])
    assert not torch.allclose(attn(x)[:, :4], attn(changed)[:, :4])


def test_rows_with_nothing_to_attend_stay_finite() -> None:
    attn = Attention(D, H)
    x = torch.randn(2, 4, D)
    empty = torch.tensor([[False] * 4, [False, False, True, True]])  # all padding; left padding
    assert torch.isfinite(attn(x, mask=empty, causal=True)).all()
    assert make_attn_mask(None, causal=True) is None  # pure causal uses SDPA's is_causal fast path


def test_cross_attention_matches_multihead_attention_and_ignores_padding() -> None:
    torch.manual_seed(0)
    context_dim = 12
    mha = nn.MultiheadAttention(D, H, kdim=context_dim, vdim=context_dim, batch_first=True).eval()
    cross = CrossAttention(D, context_dim, num_heads=H).eval()
    with torch.no_grad():
        cross.q.weight.copy_(mha.q_proj_weight)
        cross.q.bias.copy_(mha.in_proj_bias[:D])
        cross.kv.weight.copy_(torch.cat([mha.k_proj_weight, mha.v_proj_weight]))
        cross.kv.bias.copy_(mha.in_proj_bias[D:])
        cross.proj.weight.copy_(mha.out_proj.weight)
        cross.proj.bias.copy_(mha.out_proj.bias)
    x, context = torch.randn(2, 3, D), torch.randn(2, 5, context_dim)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    expected, _ = mha(x, context, context, key_padding_mask=~mask, need_weights=False)
    out = cross(x, context, context_mask=mask)
    assert out.shape == (2, 3, D)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], cross(x[1:], context[1:, :2]), atol=1e-5, rtol=1e-5)


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError):
        Attention(10, 4)
