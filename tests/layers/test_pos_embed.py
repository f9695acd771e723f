import numpy as np
import pytest
import torch

from polymodal.layers import LearnedPosEmbed2d, SinCosPosEmbed2d, resample_abs_pos_embed, sincos_2d_pos_embed


def _mae_sincos(dim: int, gh: int, gw: int) -> np.ndarray:
    """MAE's reference (facebookresearch/mae util/pos_embed.py), transcribed for a rectangular grid."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)), axis=0)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_sincos_matches_mae_reference() -> None:
    table = sincos_2d_pos_embed(16, (3, 5))
    assert table.shape == (15, 16)
    np.testing.assert_allclose(table.numpy(), _mae_sincos(16, 3, 5), atol=1e-6)
    with pytest.raises(ValueError):
        sincos_2d_pos_embed(10, (2, 2))


def test_sincos_module_zero_prefix_recompute_and_not_saved() -> None:
    pos = SinCosPosEmbed2d(8, (2, 2), num_prefix_tokens=1)
    x = torch.zeros(1, 5, 8)
    out = pos(x, (2, 2))
    assert torch.equal(out[0, 0], torch.zeros(8))
    torch.testing.assert_close(out[0, 1:], sincos_2d_pos_embed(8, (2, 2)))
    torch.testing.assert_close(pos(torch.zeros(1, 10, 8), (3, 3))[0, 1:], sincos_2d_pos_embed(8, (3, 3)))
    assert "table" not in pos.state_dict()


def test_learned_pos_embed_adds_and_resamples() -> None:
    torch.manual_seed(0)
    pos = LearnedPosEmbed2d(8, (2, 3), num_prefix_tokens=1)
    x = torch.randn(2, 7, 8)
    torch.testing.assert_close(pos(x, (2, 3)), x + pos.weight)
    assert pos(torch.zeros(1, 1 + 16, 8), (4, 4)).shape == (1, 17, 8)
    same = resample_abs_pos_embed(pos.weight, (2, 3), (2, 3), num_prefix_tokens=1)
    torch.testing.assert_close(same, pos.weight, atol=1e-5, rtol=1e-5)


def test_resample_matches_timm() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    posemb = torch.randn(1, 1 + 4 * 6, 8)
    for new in [(8, 12), (2, 3), (5, 5)]:
        expected = timm_layers.resample_abs_pos_embed(posemb, list(new), [4, 6], num_prefix_tokens=1)
        torch.testing.assert_close(resample_abs_pos_embed(posemb, new, (4, 6), 1), expected)
