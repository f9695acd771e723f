"""CaptionDecoder: shapes, causality, memory masking, weight tying, the KV cache against teacher forcing, and a tiny
learning check."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save

from polymodal.heads.caption_decoder import CaptionDecoder
from polymodal.tasks.decoding import greedy

V, DM, M, T = 50, 24, 6, 9


def make_decoder(**kwargs) -> CaptionDecoder:
    torch.manual_seed(0)
    config = {"width": 32, "layers": 2, "heads": 4, "mlp_ratio": 2.0, "max_length": 16, **kwargs}
    return CaptionDecoder(V, DM, **config).eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, V, (3, T))
    memory = torch.randn(3, M, DM)
    memory_mask = torch.tensor([[1] * M, [1] * 4 + [0] * 2, [1] + [0] * 5], dtype=torch.bool)
    return ids, memory, memory_mask


def test_shapes(inputs) -> None:
    ids, memory, mask = inputs
    decoder = make_decoder()
    assert decoder(ids, memory).shape == (3, T, V)
    # An all-real padding mask is a no-op (it only switches SDPA from is_causal to an explicit mask).
    torch.testing.assert_close(decoder(ids, memory, mask, torch.ones(3, T)), decoder(ids, memory, mask))
    logits, cache = decoder.step(ids[:, :1], decoder.init_cache(memory, mask), 0)
    assert logits.shape == (3, V) and cache.length == 1 and cache.batch_size == 3
    assert cache.self_kv.shape == (2, 2, 3, 4, 16, 8) and cache.memory_kv.shape == (2, 2, 3, 4, M, 8)
    with pytest.raises(ValueError):
        decoder(torch.zeros(1, 17, dtype=torch.long), memory[:1])
    with pytest.raises(ValueError):
        decoder.step(ids[:, :1], cache, 0)  # the cache already holds position 0


def test_causal(inputs) -> None:
    ids, memory, mask = inputs
    decoder = make_decoder()
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % V
    before, after = decoder(ids, memory, mask), decoder(changed, memory, mask)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_memory_mask_is_respected(inputs) -> None:
    ids, memory, mask = inputs
    decoder = make_decoder()
    noisy = torch.where(mask[..., None], memory, torch.randn_like(memory) * 10)
    torch.testing.assert_close(decoder(ids, memory, mask), decoder(ids, noisy, mask))
    # Masked tokens behave as if absent.
    alone = decoder(ids[2:], memory[2:, :1])
    torch.testing.assert_close(decoder(ids, memory, mask)[2:], alone, atol=1e-5, rtol=1e-5)
    # ... and the memory does condition the output.
    assert not torch.allclose(decoder(ids, memory), decoder(ids, noisy))


def test_output_projection_is_the_token_embedding(inputs) -> None:
    ids, memory, _ = inputs
    decoder = make_decoder()
    assert decoder.output_weight is decoder.token_embed.weight
    hidden = {}
    decoder.norm.register_forward_hook(lambda module, args, out: hidden.setdefault("h", out))
    logits = decoder(ids, memory)
    torch.testing.assert_close(logits, hidden["h"] @ decoder.token_embed.weight.T)
    # Stored once: no second (V, D) tensor, and safetensors (which refuses shared storage) can write it.
    assert sum(tuple(t.shape) == (V, 32) for t in decoder.state_dict().values()) == 1
    save(decoder.state_dict())


@pytest.mark.parametrize("chunks", [[1] * T, [4, 1, 1, 3]])
def test_cached_steps_equal_the_full_forward(inputs, chunks: list[int]) -> None:
    ids, memory, mask = inputs
    decoder = make_decoder()
    with torch.no_grad():
        full = decoder(ids, memory, mask)
        cache = decoder.init_cache(memory, mask, max_length=T)
        position = 0
        for size in chunks:
            logits, cache = decoder.step(ids[:, position : position + size], cache, position)
            position += size
            torch.testing.assert_close(logits, full[:, position - 1], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError):
            decoder.step(ids[:, :1], cache, position)  # full: max_length=T


def test_cache_reorder_and_expand(inputs) -> None:
    ids, memory, mask = inputs
    decoder = make_decoder()
    with torch.no_grad():
        full = decoder(ids, memory, mask)
        cache = decoder.init_cache(memory, mask)
        _, cache = decoder.step(ids[:, :3], cache, 0)
        order = torch.tensor([2, 0, 1, 0])
        logits, reordered = decoder.step(ids[order, 3:4], cache.reorder(order), 3)
        assert reordered.batch_size == 4 and reordered.length == 4
        torch.testing.assert_close(logits, full[order, 3], atol=1e-5, rtol=1e-5)

        cache = decoder.init_cache(memory, mask).expand(2)
        assert cache.batch_size == 6
        repeated = ids.repeat_interleave(2, dim=0)
        logits, _ = decoder.step(repeated[:, :4], cache, 0)
        torch.testing.assert_close(logits, full[:, 3].repeat_interleave(2, dim=0), atol=1e-5, rtol=1e-5)


def test_memory_width_may_differ_and_gradient_reaches_every_parameter(inputs) -> None:
    ids, memory, mask = inputs
    decoder = make_decoder(dropout=0.1).train()
    logits = decoder(ids, memory, mask, attention_mask=torch.ones_like(ids))
    F.cross_entropy(logits.reshape(-1, V), ids.roll(-1, dims=1).reshape(-1)).backward()
    for name, param in decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_learns_to_caption_the_class_token_of_each_image() -> None:
    """Each "image" shows one of 8 classes; its caption is that class's fixed 5-token sequence."""
    torch.manual_seed(0)
    bos, eos, pad, classes, length = 1, 2, 0, 8, 5
    captions = torch.randint(3, V, (classes, length))
    prototypes = torch.randn(classes, M, DM)
    decoder = CaptionDecoder(V, DM, width=32, layers=2, heads=4, mlp_ratio=2.0, max_length=8)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    inputs = torch.cat([torch.full((classes, 1), bos), captions], dim=1)  # (C, 6)
    targets = torch.cat([captions, torch.full((classes, 1), eos)], dim=1)  # (C, 6)
    losses = []
    for _ in range(300):
        label = torch.randint(0, classes, (32,))
        memory = prototypes[label] + 0.1 * torch.randn(32, M, DM)
        logits = decoder(inputs[label], memory)
        loss = F.cross_entropy(logits.reshape(-1, V), targets[label].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.2 * sum(losses[:10]) / 10
    decoder.eval()
    out = greedy(decoder.step, decoder.init_cache(prototypes), classes, bos_id=bos, eos_id=eos, pad_id=pad,
                 max_length=8)
    assert out.sequences == captions.tolist()
