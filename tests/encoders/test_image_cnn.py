import pytest
import torch

from polymodal.encoders import EncoderOutput, ResNetImageEncoder

from .helpers import assert_close_in_bf16, colour_task, fit


@pytest.mark.parametrize(("stem", "grid"), [("cifar", 8), ("imagenet", 2)])
def test_shapes(stem: str, grid: int) -> None:
    encoder = ResNetImageEncoder(layers=(1, 1, 1, 1), width=8, stem=stem)
    out = encoder(torch.randn(2, 3, 64, 64))
    assert isinstance(out, EncoderOutput)
    assert encoder.width == 64
    assert out.tokens.shape == (2, grid * grid, 64)
    assert out.pooled.shape == (2, 64)
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    assert out.mask is None


def test_matches_torchvision_resnet18() -> None:
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    ours = ResNetImageEncoder(stem="imagenet")
    for m in ours.modules():  # non-trivial BatchNorm statistics and affines, so eval mode tests them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours.eval()
    peer = models.resnet18(weights=None).eval()
    peer.fc = torch.nn.Identity()
    state = {}
    for k, v in ours.state_dict().items():
        k = k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
        if k.startswith("stages."):
            _, i, rest = k.split(".", 2)
            k = f"layer{int(i) + 1}.{rest}"
        state[k] = v
    peer.load_state_dict(state, strict=True)
    image = torch.randn(2, 3, 64, 64)
    out = ours(image)
    torch.testing.assert_close(out.pooled, peer(image), atol=1e-5, rtol=1e-5)


def test_backward_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    encoder = ResNetImageEncoder(layers=(1, 1), width=8)
    encoder(torch.randn(2, 3, 16, 16)).pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert_close_in_bf16(encoder.eval(), {"image": torch.randn(2, 3, 16, 16)})


def test_rejects_unknown_stem() -> None:
    with pytest.raises(ValueError):
        ResNetImageEncoder(stem="tiny")


def test_learns_a_trivial_task() -> None:
    torch.manual_seed(0)
    images, labels = colour_task()
    first, last = fit(ResNetImageEncoder(layers=(1, 1), width=8), {"image": images}, labels, lr=1e-2)
    assert last < 0.25 * first, (first, last)
