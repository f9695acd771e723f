import torch

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion import SingleStreamFusion

from .helpers import DIMS, make_features


def test_fully_masked_modality_equals_running_without_it() -> None:
    torch.manual_seed(0)
    both = SingleStreamFusion(DIMS, dim=8, layers=2, heads=2).eval()
    text_only = SingleStreamFusion({"text": DIMS["text"]}, dim=8, layers=2, heads=2).eval()
    result = text_only.load_state_dict(both.state_dict(), strict=False)
    assert result.missing_keys == []  # every text-only weight comes from the two-modality model

    features = make_features()
    image = features["image"]
    hidden = EncoderOutput(image.tokens, image.pooled, torch.zeros_like(image.mask))
    out = both({"image": hidden, "text": features["text"]})
    alone = text_only({"text": features["text"]})
    torch.testing.assert_close(out.fused, alone.fused)
    text_positions = alone.mask[:, 1:]
    torch.testing.assert_close(out.tokens[:, 1 + 5:][text_positions], alone.tokens[:, 1:][text_positions])
    # ... and the image does matter once it is visible.
    assert not torch.allclose(both(features).fused, out.fused)


def test_cls_is_the_fused_vector_and_the_mask_covers_the_sequence() -> None:
    fusion = SingleStreamFusion(DIMS, dim=8, layers=1, heads=2).eval()
    features = make_features()
    out = fusion(features)
    torch.testing.assert_close(out.fused, out.tokens[:, 0])
    expected_mask = torch.cat([torch.ones(3, 1, dtype=torch.bool), features["image"].mask, features["text"].mask], 1)
    assert torch.equal(out.mask, expected_mask)


def test_type_embeddings_tell_modalities_apart() -> None:
    # Same tokens in both modalities with shared projections: only e_m separates them.
    torch.manual_seed(0)
    fusion = SingleStreamFusion({"image": 4, "text": 4}, dim=8, layers=1, heads=2).eval()
    fusion.proj["text"].load_state_dict(fusion.proj["image"].state_dict())
    a, b = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    out = fusion({"image": EncoderOutput(a, a.mean(1)), "text": EncoderOutput(b, b.mean(1))})
    swapped = fusion({"image": EncoderOutput(b, b.mean(1)), "text": EncoderOutput(a, a.mean(1))})
    assert not torch.allclose(out.fused, swapped.fused)
