import pytest
import torch

from polymodal.encoders import EncoderOutput, GRUTextEncoder

from .helpers import assert_close_in_bf16, assert_padding_invariant, fit, token_task

VOCAB = 16


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    return ids, mask


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("pool", ["mean", "final"])
def test_shapes_and_mask(bidirectional: bool, pool: str) -> None:
    encoder = GRUTextEncoder(VOCAB, width=12, layers=2, bidirectional=bidirectional, pool=pool)
    ids, mask = _batch()
    out = encoder(ids, mask)
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (3, 6, 12)
    assert out.pooled.shape == (3, encoder.width) == (3, 12)
    assert out.mask.dtype == torch.bool and torch.equal(out.mask, mask.bool())
    assert (out.tokens[~out.mask] == 0).all()  # padded positions carry nothing
    assert encoder(ids).mask is None


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("pool", ["mean", "final"])
def test_padding_invariance(bidirectional: bool, pool: str) -> None:
    torch.manual_seed(0)
    encoder = GRUTextEncoder(VOCAB, width=12, layers=2, bidirectional=bidirectional, pool=pool).eval()
    ids, mask = _batch()
    assert_padding_invariant(encoder, ids, mask, atol=1e-6)


def test_final_pool_is_last_forward_state_and_first_backward_state() -> None:
    torch.manual_seed(0)
    encoder = GRUTextEncoder(VOCAB, width=12, pool="final").eval()
    ids, mask = _batch()
    out = encoder(ids, mask)
    half = 6
    for i, length in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(out.pooled[i, :half], out.tokens[i, length - 1, :half])
        torch.testing.assert_close(out.pooled[i, half:], out.tokens[i, 0, half:])


def test_bool_and_int_masks_agree_and_odd_width_rejected() -> None:
    encoder = GRUTextEncoder(VOCAB, width=8).eval()
    ids, mask = _batch()
    torch.testing.assert_close(encoder(ids, mask).pooled, encoder(ids, mask.bool()).pooled)
    with pytest.raises(ValueError):
        GRUTextEncoder(VOCAB, width=7)


def test_empty_caption_stays_finite() -> None:
    out = GRUTextEncoder(VOCAB, width=8)(torch.zeros(2, 4, dtype=torch.long), torch.tensor([[1, 1, 0, 0], [0] * 4]))
    assert torch.isfinite(out.pooled).all()


def test_backward_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    encoder = GRUTextEncoder(VOCAB, width=8, layers=2, dropout=0.1)
    ids, mask = _batch()
    encoder(ids, mask).pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert_close_in_bf16(encoder.eval(), {"input_ids": ids, "attention_mask": mask})


def test_learns_a_trivial_task() -> None:
    torch.manual_seed(0)
    ids, mask, labels = token_task(vocab=VOCAB)
    first, last = fit(GRUTextEncoder(VOCAB, width=32), {"input_ids": ids, "attention_mask": mask}, labels, lr=1e-2)
    assert last < 0.25 * first, (first, last)
