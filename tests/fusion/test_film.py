import torch

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion import FiLMFusion
from polymodal.layers.pooling import masked_mean

from .helpers import DIMS, make_features


def test_starts_as_identity_modulation() -> None:
    torch.manual_seed(0)
    fusion = FiLMFusion(DIMS, dim=6)
    features = make_features()
    gamma, beta = fusion.film_params(features["text"].pooled)
    torch.testing.assert_close(gamma, torch.ones(3, DIMS["image"]))
    torch.testing.assert_close(beta, torch.zeros(3, DIMS["image"]))
    # γ = 1, β = 0: the output is the unconditioned path, P x per token and its mean over real tokens.
    image = features["image"]
    out = fusion(features)
    torch.testing.assert_close(out.fused, masked_mean(fusion.proj(image.tokens), image.mask))
    torch.testing.assert_close(out.tokens, fusion.proj(image.tokens))
    assert torch.equal(out.mask, image.mask)


def test_modulation_matches_gamma_x_plus_beta() -> None:
    fusion = FiLMFusion({"image": 2, "text": 1}, dim=2)
    with torch.no_grad():
        fusion.film.weight.copy_(torch.tensor([[1.0], [-1.0], [0.0], [2.0]]))  # Δγ = (c, −c), β = (0, 2c)
        fusion.proj.weight.copy_(torch.eye(2))
        fusion.proj.bias.zero_()
    tokens = torch.tensor([[[1.0, 1.0], [3.0, -1.0]]])  # (1, 2, 2), both real
    condition = torch.tensor([[2.0]])
    out = fusion({"image": EncoderOutput(tokens, tokens.mean(1)), "text": EncoderOutput(condition[:, None], condition)})
    gamma, beta = torch.tensor([3.0, -1.0]), torch.tensor([0.0, 4.0])
    torch.testing.assert_close(out.tokens[0], gamma * tokens[0] + beta)
    torch.testing.assert_close(out.fused[0], (gamma * tokens[0] + beta).mean(0))


def test_roles_can_be_swapped() -> None:
    torch.manual_seed(0)
    fusion = FiLMFusion(DIMS, dim=6, condition="image", target="text")
    with torch.no_grad():
        fusion.film.weight.normal_()
    features = make_features()
    out = fusion(features)
    assert out.tokens.shape == (3, 4, 6) and torch.equal(out.mask, features["text"].mask)
    changed = {**features, "image": EncoderOutput(features["image"].tokens, -features["image"].pooled)}
    assert not torch.allclose(fusion(changed).fused, out.fused)  # the condition now drives the output
