from functools import partial

import pytest
import torch
from torch import nn

from polymodal.encoders import EncoderOutput, ViTImageEncoder

from .helpers import assert_close_in_bf16, colour_task, fit

TINY = dict(image_size=16, patch_size=4, width=32, layers=2, heads=2)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_shapes(pool: str, pos_embed: str) -> None:
    encoder = ViTImageEncoder(**TINY, pool=pool, pos_embed=pos_embed)
    out = encoder(torch.randn(2, 3, 16, 16))
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (2, 1 + 16, 32)
    assert out.pooled.shape == (2, encoder.width)
    assert out.mask is None
    # Another image size: learned positions are resampled, sin-cos recomputed.
    assert encoder(torch.randn(1, 3, 24, 32)).tokens.shape == (1, 1 + 6 * 8, 32)


def test_pooling_choices() -> None:
    encoder = ViTImageEncoder(**TINY, pool="mean")
    out = encoder(torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(out.pooled, out.tokens[:, 1:].mean(1))
    encoder.pool = "cls"
    out = encoder(torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])
    with pytest.raises(ValueError):
        ViTImageEncoder(**TINY, pool="max")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_matches_timm_vision_transformer(pool: str) -> None:
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    ours = ViTImageEncoder(**TINY, pool=pool).eval()
    for p in ours.parameters():  # perturb every weight so LayerNorm affines and zero biases are exercised
        p.data.add_(0.1 * torch.randn_like(p))
    peer = vision_transformer.VisionTransformer(
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=0,
        global_pool="token" if pool == "cls" else "avg",
        fc_norm=False,  # timm's "avg" default moves the final norm after pooling; ours normalises tokens
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
    ).eval()
    state = {
        k.replace("transformer.blocks.", "blocks.").replace("pos_embed.weight", "pos_embed"): v
        for k, v in ours.state_dict().items()
    }
    peer.load_state_dict(state, strict=True)
    image = torch.randn(2, 3, 16, 16)
    out = ours(image)
    features = peer.forward_features(image)
    torch.testing.assert_close(out.tokens, features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, peer.forward_head(features, pre_logits=True), atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    encoder = ViTImageEncoder(**TINY)
    image = torch.randn(2, 3, 16, 16)
    encoder(image).pooled.sum().backward()
    plain = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    encoder.set_grad_checkpointing(True)
    encoder(image).pooled.sum().backward()
    for a, p in zip(plain, encoder.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_backward_reaches_every_parameter_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    encoder = ViTImageEncoder(**TINY)
    encoder(torch.randn(2, 3, 16, 16)).pooled.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    assert_close_in_bf16(encoder, {"image": torch.randn(2, 3, 16, 16)})


def test_learns_a_trivial_task() -> None:
    torch.manual_seed(0)
    images, labels = colour_task()
    first, last = fit(ViTImageEncoder(**TINY), {"image": images}, labels)
    assert last < 0.25 * first, (first, last)
