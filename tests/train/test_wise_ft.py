import pytest
import torch
from torch import nn

from polymodal.heads.projection import ResidualProjection
from polymodal.train.wise_ft import mix_residuals, residual_parameters, select_alpha


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_head = ResidualProjection(4)
        self.text_head = ResidualProjection(4)
        self.other = nn.Linear(4, 4)


def trained() -> TwoHeads:
    torch.manual_seed(0)
    model = TwoHeads()
    for parameter in residual_parameters(model):
        parameter.data.normal_()
    return model


def test_mixing_scales_only_the_residual_branches():
    model = trained()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    mix_residuals(model, 0.25)
    for name, parameter in model.named_parameters():
        expected = before[name] * 0.25 if "correction" in name else before[name]
        assert torch.equal(parameter, expected), name
    x = torch.randn(3, 4)
    mix_residuals(model, 0.0)
    assert torch.equal(model.image_head(x), x), "alpha = 0 gives back the zero-shot (identity) head"


def test_select_alpha_takes_smallest_alpha_keeping_most_of_the_score_and_restores_the_model():
    model = trained()
    reference = model.image_head.correction.weight.detach().clone()

    def score(m: TwoHeads) -> float:  # the in-domain score rises with the residual's size, then saturates
        return min(1.0, m.image_head.correction.weight.norm().item() / reference.norm().item() * 2)

    alpha, scores = select_alpha(model, score, alphas=(0.1, 0.3, 0.5, 0.7), keep=0.9)
    assert alpha == 0.5 and scores[1.0] == 1.0 and scores[0.3] == pytest.approx(0.6)
    assert torch.equal(model.image_head.correction.weight, reference), "selection leaves the model unchanged"


def test_models_without_residual_heads_are_rejected():
    with pytest.raises(ValueError, match="no residual heads"):
        mix_residuals(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        mix_residuals(trained(), 1.5)
