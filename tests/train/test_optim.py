"""create_optimizer: which parameters get weight decay, which are left out, and one exact AdamW step."""
import math

import pytest
import torch
from torch import nn

from polymodal.train.optim import create_optimizer

WEIGHT_DECAY = 0.1
LR = 0.01


class Tiny(nn.Module):
    """Every kind of parameter a dual encoder has: matrices, conv kernels, biases, norms, a 0-d temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(3, 4, kernel_size=2)
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.frozen = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
        self.frozen.requires_grad_(False)


NO_DECAY = {"conv.bias", "proj.bias", "norm.weight", "norm.bias", "logit_scale"}
DECAY = {"embed.weight", "conv.weight", "proj.weight"}
FROZEN = {"frozen.0.weight", "frozen.0.bias", "frozen.1.weight", "frozen.1.bias"}


def group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[set[str]]:
    """The parameter names of each group, in group order."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [{name_of[id(p)] for p in group["params"]} for group in optimizer.param_groups]


def test_groups_hold_exactly_the_expected_names() -> None:
    model = Tiny()
    assert set(dict(model.named_parameters())) == NO_DECAY | DECAY | FROZEN  # the fixture is what we think
    optimizer = create_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group_names(model, optimizer) == [NO_DECAY, DECAY]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, WEIGHT_DECAY]
    # No parameter twice, none frozen.
    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(NO_DECAY | DECAY)
    assert all(p.requires_grad for p in all_params)


def test_hyper_parameters_defaults_and_overrides() -> None:
    model = Tiny()
    default = create_optimizer(model, lr=3e-4)
    for group in default.param_groups:
        assert (group["lr"], group["betas"], group["eps"]) == (3e-4, (0.9, 0.98), 1e-6)
    assert [g["weight_decay"] for g in default.param_groups] == [0.0, 0.1]
    custom = create_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-8)
    for group in custom.param_groups:
        assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.8, 0.9), 1e-8)
    assert [g["weight_decay"] for g in custom.param_groups] == [0.0, 0.05]


def test_only_vectors_trainable_leaves_the_decay_group_empty() -> None:
    model = Tiny()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in {"logit_scale", "norm.weight"})
    optimizer = create_optimizer(model, lr=LR)
    assert group_names(model, optimizer) == [{"logit_scale", "norm.weight"}, set()]


def test_nothing_trainable_is_an_error() -> None:
    model = Tiny().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(model, lr=LR)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(nn.ReLU(), lr=LR)


def set_known_state(model: nn.Module) -> None:
    """Deterministic values and gradients: value (i - index) / 7, grad (-1)^i (i + 1) / 4 for flat entry i."""
    with torch.no_grad():
        for index, (name, parameter) in enumerate(model.named_parameters()):
            values = torch.arange(parameter.numel(), dtype=torch.float32).reshape(parameter.shape)
            parameter.copy_((values - index) / 7)
            if parameter.requires_grad:
                signs = 1 - 2 * (torch.arange(parameter.numel()) % 2)
                parameter.grad = (signs * (torch.arange(parameter.numel()) + 1) / 4).float().reshape(parameter.shape)


def test_first_step_matches_closed_form() -> None:
    """First AdamW step: p <- p (1 - lr wd) - lr g / (|g| + eps), since m_hat = g and sqrt(v_hat) = |g|."""
    model = Tiny()
    set_known_state(model)
    before = {name: p.detach().clone().double() for name, p in model.named_parameters()}
    grads = {name: p.grad.clone().double() for name, p in model.named_parameters() if p.grad is not None}
    create_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY).step()
    eps = 1e-6
    for name, parameter in model.named_parameters():
        if name in FROZEN:
            torch.testing.assert_close(parameter.detach().double(), before[name], rtol=0, atol=0)
            continue
        decay = WEIGHT_DECAY if name in DECAY else 0.0
        g = grads[name]
        expected = before[name] * (1 - LR * decay) - LR * g / (g.abs() + eps)
        torch.testing.assert_close(parameter.detach().double(), expected, rtol=1e-6, atol=1e-7, msg=name)


def test_first_step_known_numbers() -> None:
    """Numbers written out: a decayed matrix entry and the undecayed temperature after one step."""
    model = Tiny()
    set_known_state(model)
    with torch.no_grad():
        model.proj.weight.fill_(1.0)
        model.proj.weight.grad.fill_(0.5)
        model.logit_scale.fill_(2.0)
        model.logit_scale.grad.fill_(-3.0)
    create_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY).step()
    # 1 * (1 - 0.01 * 0.1) - 0.01 * 0.5 / (0.5 + 1e-6) = 0.999 - 0.00999998 = 0.98900002
    torch.testing.assert_close(model.proj.weight, torch.full((3, 4), 0.98900002), rtol=0, atol=1e-7)
    # No decay on the temperature: 2 + 0.01 * 3 / (3 + 1e-6) = 2.00999999667
    assert model.logit_scale.item() == pytest.approx(2.00999999667, abs=1e-7)


def test_steps_match_hand_configured_torch_adamw() -> None:
    """Three steps equal torch's AdamW given the two groups by hand (so decay lands on the same tensors)."""
    ours_model, reference_model = Tiny(), Tiny()
    reference_model.load_state_dict(ours_model.state_dict())
    before = ours_model.proj.weight.detach().clone()
    ours = create_optimizer(ours_model, lr=LR, weight_decay=WEIGHT_DECAY)
    params = dict(reference_model.named_parameters())
    reference = torch.optim.AdamW(
        [
            {"params": [params[n] for n in sorted(NO_DECAY)], "weight_decay": 0.0},
            {"params": [params[n] for n in sorted(DECAY)], "weight_decay": WEIGHT_DECAY},
        ],
        lr=LR,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=True,
    )
    assert ours.defaults["fused"] and not create_optimizer(Tiny(), lr=LR, fused=False).defaults["fused"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        tokens = torch.randint(0, 10, (5,), generator=generator)
        image = torch.randn(5, 3, 3, 3, generator=generator)
        for model, optimizer in ((ours_model, ours), (reference_model, reference)):
            optimizer.zero_grad()
            text = model.frozen(model.norm(model.proj(model.embed(tokens))))
            pixels = model.norm(model.proj(model.conv(image).mean(dim=(2, 3))))
            loss = (model.logit_scale.exp() * (text * pixels).sum(-1)).square().mean()
            loss.backward()
            optimizer.step()
    for name, parameter in ours_model.named_parameters():
        torch.testing.assert_close(parameter, params[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(ours_model.proj.weight, before), "the steps moved the weights"
