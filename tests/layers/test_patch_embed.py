import pytest
import torch

from polymodal.layers import PatchEmbed


def test_patch_embed_is_a_linear_map_per_row_major_patch() -> None:
    torch.manual_seed(0)
    p, D = 4, 8
    embed = PatchEmbed(p, in_channels=3, embed_dim=D)
    image = torch.randn(2, 3, 8, 12)
    tokens = embed(image)
    assert tokens.shape == (2, 6, D)
    assert embed.grid_size(8, 12) == (2, 3)
    patches = image.unfold(2, p, p).unfold(3, p, p)  # (B, C, gh, gw, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 3 * p * p)  # (B, N, C*p*p)
    expected = patches @ embed.proj.weight.reshape(D, -1).T + embed.proj.bias
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_patch_embed_rejects_sizes_it_cannot_tile() -> None:
    with pytest.raises(ValueError):
        PatchEmbed(4, 3, 8)(torch.randn(1, 3, 10, 8))
