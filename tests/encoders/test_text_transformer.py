import pytest
import torch

from polymodal.encoders import EncoderOutput, TransformerTextEncoder

from .helpers import assert_close_in_bf16, assert_padding_invariant, fit, token_task

VOCAB = 16
TINY = dict(context_length=8, width=16, layers=2, heads=2)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    return ids, mask


CONFIGS = [(False, "mean"), (False, "cls"), (False, "eos"), (True, "mean"), (True, "eos")]


@pytest.mark.parametrize(("causal", "pool"), CONFIGS)
def test_shapes(causal: bool, pool: str) -> None:
    encoder = TransformerTextEncoder(VOCAB, **TINY, causal=causal, pool=pool)
    ids, mask = _batch()
    out = encoder(ids, mask)
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (3, 6, 16)
    assert out.pooled.shape == (3, encoder.width)
    assert torch.equal(out.mask, mask.bool())
    assert encoder(ids).mask is None


@pytest.mark.parametrize(("causal", "pool"), CONFIGS)
def test_padding_invariance(causal: bool, pool: str) -> None:
    torch.manual_seed(0)
    encoder = TransformerTextEncoder(VOCAB, **TINY, causal=causal, pool=pool).eval()
    ids, mask = _batch()
    assert_padding_invariant(encoder, ids, mask.bool(), atol=1e-5)


def test_causal_mask_blocks_future_tokens() -> None:
    torch.manual_seed(0)
    ids, mask = _batch()
    changed = ids.clone()
    changed[:, 4:] = (ids[:, 4:] % (VOCAB - 1)) + 1  # a different real token at every later position
    causal = TransformerTextEncoder(VOCAB, **TINY, causal=True).eval()
    torch.testing.assert_close(causal(ids).tokens[:, :4], causal(changed).tokens[:, :4])
    bidirectional = TransformerTextEncoder(VOCAB, **TINY, causal=False).eval()
    assert not torch.allclose(bidirectional(ids).tokens[:, :4], bidirectional(changed).tokens[:, :4])


def _to_open_clip(state: dict) -> dict:
    renames = [
        ("token_embed.", "token_embedding."),
        ("pos_embed", "positional_embedding"),
        ("transformer.blocks.", "transformer.resblocks."),
        (".norm1.", ".ln_1."),
        (".norm2.", ".ln_2."),
        ("attn.qkv.weight", "attn.in_proj_weight"),
        ("attn.qkv.bias", "attn.in_proj_bias"),
        ("attn.proj.", "attn.out_proj."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
        ("norm.", "ln_final."),
    ]
    out = {}
    for k, v in state.items():
        for old, new in renames:  # in order: block norms are renamed before the final "norm." is
            k = k.replace(old, new)
        out[k] = v
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_matches_open_clip_text_transformer(causal: bool) -> None:
    open_clip_transformer = pytest.importorskip("open_clip.transformer")
    torch.manual_seed(0)
    eos = VOCAB - 1
    pool = "eos" if causal else "cls"
    ours = TransformerTextEncoder(VOCAB, **TINY, causal=causal, pool=pool).eval()
    for p in ours.parameters():  # perturb every weight so LayerNorm affines and zero biases are exercised
        p.data.add_(0.1 * torch.randn_like(p))
    peer = open_clip_transformer.TextTransformer(
        context_length=8,
        vocab_size=VOCAB,
        width=16,
        heads=2,
        layers=2,
        output_dim=None,
        no_causal_mask=not causal,
        use_pad_mask=not causal,  # open_clip masks padding only in bidirectional mode
        pad_id=0,
        eos_id=eos,
        pool_type="eos" if causal else "first",
        output_tokens=True,
    ).eval()
    peer.load_state_dict(_to_open_clip(ours.state_dict()), strict=True)
    ids = torch.randint(1, eos, (3, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 3 + [0] * 5], dtype=torch.bool)
    ids[torch.arange(3), mask.sum(1) - 1] = eos
    ids = ids.masked_fill(~mask, 0)
    out = ours(ids, mask)
    pooled, tokens = peer(ids)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-5, rtol=1e-5)
    # Padded positions differ by design (open_clip lets them attend to padding); real positions must agree.
    torch.testing.assert_close(out.tokens[mask], tokens[mask], atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    encoder = TransformerTextEncoder(VOCAB, **TINY, causal=True, pool="eos")
    ids, mask = _batch()
    encoder(ids, mask).pooled.sum().backward()
    plain = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    encoder.set_grad_checkpointing(True)
    encoder(ids, mask).pooled.sum().backward()
    for a, p in zip(plain, encoder.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_backward_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    encoder = TransformerTextEncoder(VOCAB, **TINY)
    ids, mask = _batch()
    encoder(ids, mask).pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert_close_in_bf16(encoder, {"input_ids": ids, "attention_mask": mask})


def test_rejects_bad_configs_and_long_inputs() -> None:
    with pytest.raises(ValueError):
        TransformerTextEncoder(VOCAB, **TINY, causal=True, pool="cls")
    with pytest.raises(ValueError):
        TransformerTextEncoder(VOCAB, **TINY)(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(("causal", "pool"), [(False, "mean"), (True, "eos")])
def test_learns_a_trivial_task(causal: bool, pool: str) -> None:
    torch.manual_seed(0)
    ids, mask, labels = token_task(vocab=VOCAB)
    encoder = TransformerTextEncoder(VOCAB, **TINY, causal=causal, pool=pool)
    # 40 steps: unit-scale token embeddings (see the encoder) start further from this toy optimum.
    first, last = fit(encoder, {"input_ids": ids, "attention_mask": mask}, labels, steps=40)
    assert last < 0.25 * first, (first, last)
