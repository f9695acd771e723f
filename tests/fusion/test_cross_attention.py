import pytest
import torch

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion import CrossAttentionFusion
from polymodal.layers.pooling import masked_mean

from .helpers import DIMS, make_features, perturb_padding


def build(**options) -> CrossAttentionFusion:
    torch.manual_seed(0)
    return CrossAttentionFusion(DIMS, dim=8, heads=2, **options).eval()


def masked_self_attention(attention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hand-written multi-head ``softmax(QK^T/√d)V`` (2 heads of width 4) where padded tokens get no weight."""
    batch, length, _ = x.shape
    q, k, v = attention.qkv(x).view(batch, length, 3, 2, 4).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
    scores = (q @ k.transpose(-2, -1)) / 2.0 + torch.where(mask, 0.0, float("-inf"))[:, None, None, :]
    return attention.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, 8))


@pytest.mark.parametrize("self_attention", [False, True])
def test_single_context_token_reduces_to_its_value(self_attention: bool) -> None:
    # With one key, every query's attention weight is 1: each block adds P_o V(LN_c(c)) whatever the query.
    fusion = build(self_attention=self_attention)
    features = make_features()
    image = EncoderOutput(features["image"].tokens[:, :1], features["image"].pooled)
    text = features["text"]
    out = fusion({"image": image, "text": text})

    block = fusion.blocks[0]
    x = fusion.query_proj(text.tokens)
    if self_attention:  # ALBEF's order: self-attention, then cross-attention, then the MLP
        x = x + masked_self_attention(block.self_attn, block.norm_self(x), text.mask)
    value = block.attn.kv(block.norm_context(fusion.context_proj(image.tokens)))[..., 8:]  # (B, 1, dim)
    x = x + block.attn.proj(value)
    x = fusion.norm(x + block.mlp(block.norm2(x)))
    torch.testing.assert_close(out.tokens[text.mask], x[text.mask])
    torch.testing.assert_close(out.fused, masked_mean(x, text.mask))


def test_text_reads_the_image_but_not_other_text_tokens() -> None:
    fusion = build(layers=2)
    features = make_features()
    out = fusion(features)
    image = features["image"]
    changed_image = EncoderOutput(image.tokens + 1.0, image.pooled, image.mask)
    assert not torch.allclose(fusion({**features, "image": changed_image}).tokens, out.tokens)

    text = features["text"]
    tokens = text.tokens.clone()
    tokens[:, 0] += 5.0
    changed = fusion({**features, "text": EncoderOutput(tokens, text.pooled, text.mask)}).tokens
    torch.testing.assert_close(changed[:, 1:], out.tokens[:, 1:])  # no self-attention among query tokens
    assert not torch.allclose(changed[:, 0], out.tokens[:, 0])


def test_self_attention_lets_words_read_each_other_but_not_padding() -> None:
    fusion = build(layers=2, self_attention=True)
    features = make_features()
    out = fusion(features)
    text = features["text"]
    tokens = text.tokens.clone()
    tokens[:, 0] += 5.0
    changed = fusion({**features, "text": EncoderOutput(tokens, text.pooled, text.mask)}).tokens
    # Row 0 has four real words: the first one's change reaches the other three.
    assert not torch.allclose(changed[0, 1:], out.tokens[0, 1:])
    padded = fusion(perturb_padding(features))
    torch.testing.assert_close(padded.fused, out.fused)


def test_first_token_pooling_and_swapped_roles() -> None:
    out = build(pool="first")(make_features())
    torch.testing.assert_close(out.fused, out.tokens[:, 0])
    swapped = build(query="image", context="text")(make_features())
    assert swapped.tokens.shape == (3, 5, 8)


def test_slots_pooling_is_a_linear_map_of_the_ordered_real_tokens() -> None:
    fusion = build(pool="slots", slots=6)
    features = make_features()
    out = fusion(features)
    text_mask = features["text"].mask
    kept = torch.zeros(3, 6, 8)
    kept[:, :4] = out.tokens * text_mask[..., None]  # 4 text positions, padding zeroed, 2 empty slots
    expected = kept.flatten(1) @ fusion.slot_proj.weight.T + fusion.slot_proj.bias
    torch.testing.assert_close(out.fused, expected)
    torch.testing.assert_close(fusion(perturb_padding(features)).fused, out.fused)
    # Order matters: swapping two real words changes the read-out, where a mean would not see it.
    text = features["text"]
    swapped = EncoderOutput(text.tokens[:, [1, 0, 2, 3]], text.pooled, text.mask)
    assert not torch.allclose(fusion({**features, "text": swapped}).fused[0], out.fused[0])
    mean = build()
    torch.testing.assert_close(mean({**features, "text": swapped}).fused[0], mean(features).fused[0])
