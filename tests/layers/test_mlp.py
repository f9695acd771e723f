import math

import torch
import torch.nn.functional as F

from polymodal.layers import Mlp


def test_mlp_is_linear_gelu_linear() -> None:
    torch.manual_seed(0)
    mlp = Mlp(8, 32, out_features=4).eval()
    x = torch.randn(2, 3, 8)
    expected = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    out = mlp(x)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, expected)


def reference_mlp(mlp: Mlp, x: torch.Tensor, mask1: torch.Tensor | None, mask2: torch.Tensor | None, p: float):
    """linear -> exact GELU -> (mask1 / (1 - p)) -> linear -> (mask2 / (1 - p)), written with plain ops."""
    hidden = x @ mlp.fc1.weight.T + mlp.fc1.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    if mask1 is not None:
        hidden = hidden * (mask1 / (1 - p))
    out = hidden @ mlp.fc2.weight.T + mlp.fc2.bias
    if mask2 is not None:
        out = out * (mask2 / (1 - p))
    return out


def test_mlp_eval_mode_has_no_dropout() -> None:
    """In eval mode even p = 0.5 leaves the exact linear -> GELU -> linear."""
    torch.manual_seed(0)
    mlp = Mlp(8, 16, out_features=4, drop=0.5).eval()
    x = torch.randn(6, 8)
    torch.testing.assert_close(mlp(x), reference_mlp(mlp, x, None, None, 0.5), rtol=1e-6, atol=1e-6)


def test_mlp_train_mode_applies_both_dropout_masks() -> None:
    """With a seeded RNG the output is the formula with the two Bernoulli(1 - p) masks nn.Dropout draws.

    nn.Dropout draws ``bernoulli_(1 - p)`` over a tensor shaped like its input, first after the GELU, then
    after fc2; reseeding and drawing the same two masks reproduces them.
    """
    p = 0.25
    torch.manual_seed(0)
    mlp = Mlp(8, 16, out_features=4, drop=p).train()
    x = torch.randn(6, 8)
    torch.manual_seed(123)
    out = mlp(x)
    torch.manual_seed(123)
    mask1 = torch.empty(6, 16).bernoulli_(1 - p)
    mask2 = torch.empty(6, 4).bernoulli_(1 - p)
    assert 0 < mask1.sum() < mask1.numel() and 0 < mask2.sum() < mask2.numel()  # both masks drop something
    torch.testing.assert_close(out, reference_mlp(mlp, x, mask1, mask2, p), rtol=1e-6, atol=1e-6)
    assert torch.equal(out == 0, mask2 == 0)
    # The dropout-free output differs, so the comparison above is not vacuous.
    assert not torch.allclose(out, reference_mlp(mlp, x, None, None, p))


def test_mlp_dropout_zeroes_or_rescales_each_entry() -> None:
    """Independent of how masks are drawn: each dropout output entry is 0 or its input / (1 - p)."""
    p = 0.5
    torch.manual_seed(1)
    mlp = Mlp(8, 32, drop=p).train()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in ("drop1", "drop2"):
        getattr(mlp, name).register_forward_hook(
            lambda module, args, output, name=name: seen.__setitem__(name, (args[0].detach(), output.detach()))
        )
    x = torch.randn(64, 8)
    out = mlp(x)
    hidden_in, hidden_out = seen["drop1"]
    torch.testing.assert_close(hidden_in, F.gelu(mlp.fc1(x)))
    fc2_in, fc2_out = seen["drop2"]
    torch.testing.assert_close(fc2_in, mlp.fc2(hidden_out))
    torch.testing.assert_close(out, fc2_out)
    for before, after in ((hidden_in, hidden_out), (fc2_in, fc2_out)):
        kept = after != 0
        torch.testing.assert_close(after[kept], before[kept] / (1 - p))
        assert 0.35 < kept.double().mean() < 0.65  # about half kept, p = 0.5
    mlp.eval()
    torch.testing.assert_close(mlp(x), reference_mlp(mlp, x, None, None, p), rtol=1e-6, atol=1e-6)
