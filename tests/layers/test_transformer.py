import pytest
import torch

from polymodal.layers import Block, Transformer


def test_block_is_pre_norm_residual() -> None:
    torch.manual_seed(0)
    block = Block(8, 2).eval()
    x = torch.randn(2, 5, 8)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))


def _grads(model: Transformer, x: torch.Tensor, mask: torch.Tensor, causal: bool) -> list[torch.Tensor]:
    torch.manual_seed(1)  # same dropout draws for both runs
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    model(x, mask=mask, causal=causal).square().sum().backward()
    return [x.grad] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("causal", [False, True])
def test_grad_checkpointing_gives_same_gradients(causal: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(8, layers=2, heads=2, drop=0.1, attn_drop=0.1).train()
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    plain = _grads(model, x, mask, causal)
    model.grad_checkpointing = True
    checkpointed = _grads(model, x, mask, causal)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)
