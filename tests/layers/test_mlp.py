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


def test_mlp_dropout_only_in_training() -> None:
    mlp = Mlp(8, drop=0.5)
    x = torch.randn(4, 8)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))
