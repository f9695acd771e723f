import torch

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion import CoAttentionFusion
from polymodal.layers.pooling import masked_mean

from .helpers import DIMS, make_features


def build(**options) -> CoAttentionFusion:
    torch.manual_seed(0)
    return CoAttentionFusion(DIMS, dim=8, heads=2, mlp_ratio=2.0, **options).eval()


def shifted(output: EncoderOutput) -> EncoderOutput:
    return EncoderOutput(output.tokens + 1.0, output.pooled, output.mask)


def test_streams_exchange_information() -> None:
    fusion = build()
    features = make_features()
    out = fusion(features)
    image_len = features["image"].tokens.shape[1]
    new_image = fusion({**features, "image": shifted(features["image"])})
    assert not torch.allclose(new_image.tokens[:, image_len:], out.tokens[:, image_len:])  # text saw the image
    new_text = fusion({**features, "text": shifted(features["text"])})
    assert not torch.allclose(new_text.tokens[:, :image_len], out.tokens[:, :image_len])  # image saw the text


def test_both_directions_read_the_same_layer_input() -> None:
    fusion = build()
    layer = fusion.layers[0]
    seen = {}
    layer.cross_a.register_forward_hook(lambda m, args, out: seen.update(a_in=args[0], a_out=out))
    layer.cross_b.register_forward_hook(lambda m, args, out: seen.update(b_context=args[1]))
    fusion(make_features())
    assert torch.equal(seen["b_context"], seen["a_in"])
    assert not torch.allclose(seen["b_context"], seen["a_out"])


def test_product_and_concat_combinations() -> None:
    features = make_features()
    mask_a, mask_b = features["image"].mask, features["text"].mask
    out = build()(features)
    a, b = out.tokens[:, :5], out.tokens[:, 5:]
    torch.testing.assert_close(out.fused, masked_mean(a, mask_a) * masked_mean(b, mask_b))
    assert torch.equal(out.mask, torch.cat([mask_a, mask_b], dim=1))

    fusion = build(combine="concat", pool="first")
    out = fusion(features)
    expected = fusion.out(torch.cat([out.tokens[:, 0], out.tokens[:, 5]], dim=-1))
    torch.testing.assert_close(out.fused, expected)
