import torch

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion import CrossAttentionFusion
from polymodal.layers.pooling import masked_mean

from .helpers import DIMS, make_features


def build(**options) -> CrossAttentionFusion:
    torch.manual_seed(0)
    return CrossAttentionFusion(DIMS, dim=8, heads=2, **options).eval()


def test_single_context_token_reduces_to_its_value() -> None:
    # With one key, every query's attention weight is 1: each block adds P_o V(LN_c(c)) whatever the query.
    fusion = build()
    features = make_features()
    image = EncoderOutput(features["image"].tokens[:, :1], features["image"].pooled)
    text = features["text"]
    out = fusion({"image": image, "text": text})

    block = fusion.blocks[0]
    x = fusion.query_proj(text.tokens)
    value = block.attn.kv(block.norm_context(fusion.context_proj(image.tokens)))[..., 8:]  # (B, 1, dim)
    x = x + block.attn.proj(value)
    x = fusion.norm(x + block.mlp(block.norm2(x)))
    torch.testing.assert_close(out.tokens, x)
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


def test_first_token_pooling_and_swapped_roles() -> None:
    out = build(pool="first")(make_features())
    torch.testing.assert_close(out.fused, out.tokens[:, 0])
    swapped = build(query="image", context="text")(make_features())
    assert swapped.tokens.shape == (3, 5, 8)
