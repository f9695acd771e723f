"""Single-stream options for ViLT-shaped models: no projection, pooling a modality's own first token, BERT's
pooler. (That they compute ViLT itself is checked against HF in tests/interop/test_hf_vilt.py.)"""
import pytest
import torch

from polymodal.fusion import SingleStreamFusion

from .helpers import LENGTHS, make_features

SAME_WIDTH = {"image": 8, "text": 8}


def test_pooling_the_texts_first_token_without_a_cls_of_its_own() -> None:
    torch.manual_seed(0)
    fusion = SingleStreamFusion(SAME_WIDTH, dim=8, layers=1, heads=2, project=False, pool_token="text").eval()
    assert fusion.cls is None and fusion.proj is None
    out = fusion(make_features(SAME_WIDTH))
    assert out.tokens.shape == (3, LENGTHS["image"] + LENGTHS["text"], 8)
    torch.testing.assert_close(out.fused, out.tokens[:, LENGTHS["image"]])  # modalities in configured order


def test_pooler_is_tanh_of_a_linear_map_of_the_pooled_token() -> None:
    torch.manual_seed(0)
    fusion = SingleStreamFusion(SAME_WIDTH, dim=8, layers=1, heads=2, pool_token="image", pooler=True).eval()
    out = fusion(make_features(SAME_WIDTH))
    torch.testing.assert_close(out.fused, torch.tanh(fusion.pooler(out.tokens[:, 0])))


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match=r"project=False needs every modality 16 wide \(dim\), got \{'image': 8"):
        SingleStreamFusion(SAME_WIDTH, dim=16, project=False)
    with pytest.raises(ValueError, match=r"pool_token='audio' is not one of \['cls', 'image', 'text'\]"):
        SingleStreamFusion(SAME_WIDTH, dim=8, pool_token="audio")
