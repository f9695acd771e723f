"""Greedy, sampling and beam search against a lookup-table "model" whose answers are known by hand, and on the real
CaptionDecoder with and without its KV cache."""
from __future__ import annotations

import math

import pytest
import torch

from polymodal.heads.caption_decoder import CaptionDecoder
from polymodal.tasks.decoding import beam_search, greedy, sample

PAD, BOS, EOS, A, B, C, D, E = range(8)
VOCAB = 8
IDS = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD}
# Tokens a table does not list get this logit: a probability of ~1e-13, so listed probabilities stay exact to 1e-12.
FLOOR = -30.0

Table = dict[tuple[int, ...], dict[int, float]]

# Greedy takes A (0.5) and ends with A C (0.5 * 0.4 = 0.2); B C has 0.4 * 0.9 = 0.36.
CLASSIC: Table = {(): {A: 0.5, B: 0.4, EOS: 0.1}, (A,): {C: 0.4, D: 0.35, EOS: 0.25}, (B,): {C: 0.9, EOS: 0.1}}
# Short [A]: log(0.6 * 0.9) = -0.616 over 2 tokens (A, EOS); long [B, C, D]: log(0.4 * 0.95**3) = -1.070 over 4.
# length_penalty 0: -0.616 > -1.070 (short wins); 1: -0.308 < -0.268 (long wins); 0.5: -0.436 > -0.535 (short).
LENGTHS: Table = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.9, C: 0.1},
    (B,): {C: 0.95, EOS: 0.05},
    (B, C): {D: 0.95, EOS: 0.05},
    (B, C, D): {EOS: 0.95, E: 0.05},
}
# Unconstrained: A B A B. After A B A, the bigram A B was seen, so a 2-gram ban takes C instead.
REPEAT: Table = {
    (): {A: 0.9, EOS: 0.1},
    (A,): {B: 0.9, EOS: 0.1},
    (A, B): {A: 0.9, EOS: 0.05, C: 0.05},
    (A, B, A): {B: 0.6, C: 0.3, EOS: 0.1},
}
SHORT: Table = {(): {EOS: 0.7, A: 0.3}, (A,): {EOS: 0.8, B: 0.2}}
SPREAD: Table = {(): {A: 0.3, B: 0.25, C: 0.2, D: 0.15, E: 0.1}}


class ToyCache:
    """Which table each row reads, and the tokens it was fed (BOS first)."""

    def __init__(self, image: torch.Tensor, history: torch.Tensor) -> None:
        self.image = image
        self.history = history

    def reorder(self, indices: torch.Tensor) -> ToyCache:
        return ToyCache(self.image[indices], self.history[indices])


class TableModel:
    """Next-token probabilities from ``tables[image][tokens generated so far]``; an unlisted prefix says EOS."""

    def __init__(self, *tables: Table) -> None:
        self.tables = tables

    def cache(self, images: list[int]) -> ToyCache:
        return ToyCache(torch.tensor(images), torch.empty(len(images), 0, dtype=torch.long))

    def step(self, tokens: torch.Tensor, cache: ToyCache, position: int) -> tuple[torch.Tensor, ToyCache]:
        assert tokens.shape == (len(cache.image), 1) and position == cache.history.shape[1]
        history = torch.cat([cache.history, tokens], dim=1)
        logits = torch.full((len(history), VOCAB), FLOOR)
        for row, (image, fed) in enumerate(zip(cache.image.tolist(), history.tolist())):
            for token, p in self.tables[image].get(tuple(fed[1:]), {EOS: 1.0}).items():
                logits[row, token] = math.log(p)
        return logits, ToyCache(cache.image, history)


def decode(method, table: Table, **kwargs):
    model = TableModel(table)
    kwargs = {"max_length": 10, **IDS, **kwargs}
    return method(model.step, model.cache([0]), 1, **kwargs)


def test_greedy_picks_the_argmax() -> None:
    out = decode(greedy, CLASSIC)
    assert out.sequences == [[A, C]]
    assert out.scores.item() == pytest.approx(math.log(0.5 * 0.4 * 1.0), abs=1e-6)


def test_beam_search_finds_what_greedy_misses() -> None:
    for penalty in (0.0, 1.0):
        out = decode(beam_search, CLASSIC, beam_size=2, length_penalty=penalty)
        assert out.sequences == [[B, C]]
        assert out.scores.item() == pytest.approx(math.log(0.4 * 0.9) / 3**penalty, abs=1e-6)


@pytest.mark.parametrize("table", [CLASSIC, LENGTHS, REPEAT, SHORT])
def test_beam_of_one_is_greedy(table: Table) -> None:
    beam = decode(beam_search, table, beam_size=1, length_penalty=0.0)
    best = decode(greedy, table)
    assert beam.sequences == best.sequences
    torch.testing.assert_close(beam.scores, best.scores)


@pytest.mark.parametrize(("penalty", "winner"), [(0.0, [A]), (0.5, [A]), (1.0, [B, C, D])])
def test_length_penalty_changes_the_winner_as_computed_by_hand(penalty: float, winner: list[int]) -> None:
    out = decode(beam_search, LENGTHS, beam_size=2, length_penalty=penalty)
    assert out.sequences == [winner]
    raw = math.log(0.6 * 0.9) if winner == [A] else math.log(0.4 * 0.95**3)
    assert out.scores.item() == pytest.approx(raw / (len(winner) + 1) ** penalty, abs=1e-6)


def test_no_repeat_ngram_blocks_a_repeat() -> None:
    assert decode(greedy, REPEAT).sequences == [[A, B, A, B]]
    assert decode(greedy, REPEAT, no_repeat_ngram_size=2).sequences == [[A, B, A, C]]
    assert decode(greedy, REPEAT, no_repeat_ngram_size=3).sequences == [[A, B, A, B]]  # A B A is no repeat
    assert decode(greedy, REPEAT, no_repeat_ngram_size=1).sequences == [[A, B]]  # A again is banned: EOS next
    out = decode(beam_search, REPEAT, beam_size=3, length_penalty=0.0, no_repeat_ngram_size=2)
    assert out.sequences == [[A, B, A, C]]
    # A banned token is removed, not renormalised around: the score is still the model's probability.
    assert out.scores.item() == pytest.approx(math.log(0.9 * 0.9 * 0.9 * 0.3), abs=1e-6)


@pytest.mark.parametrize(("min_length", "expected"), [(0, []), (1, [A]), (2, [A, B])])
def test_min_length_suppresses_eos(min_length: int, expected: list[int]) -> None:
    assert decode(greedy, SHORT, min_length=min_length).sequences == [expected]
    assert decode(beam_search, SHORT, beam_size=2, min_length=min_length).sequences == [expected]


def test_max_length_cuts_unterminated_sequences() -> None:
    assert decode(greedy, REPEAT, max_length=2).sequences == [[A, B]]
    out = decode(beam_search, REPEAT, beam_size=2, max_length=2, length_penalty=0.0)
    assert out.sequences == [[A, B]]
    assert out.scores.item() == pytest.approx(math.log(0.81), abs=1e-6)


def test_top_k_one_and_small_nucleus_are_greedy() -> None:
    for kwargs in ({"top_k": 1}, {"top_p": 0.1}, {"temperature": 1e-3}):
        model = TableModel(CLASSIC)
        out = sample(model.step, model.cache([0] * 8), 8, max_length=10, generator=torch.Generator().manual_seed(0),
                     **IDS, **kwargs)
        assert out.sequences == [[A, C]] * 8


def first_tokens(**kwargs) -> set[int]:
    model = TableModel(SPREAD)
    out = sample(model.step, model.cache([0] * 400), 400, max_length=3, generator=torch.Generator().manual_seed(0),
                 **IDS, **kwargs)
    return {sequence[0] for sequence in out.sequences}


def test_sampled_tokens_come_only_from_the_allowed_set() -> None:
    assert first_tokens() == {A, B, C, D, E}
    assert first_tokens(top_k=2) == {A, B}
    # Cumulative mass before each token: A 0, B 0.3, C 0.55, D 0.75: a nucleus of 0.5 keeps A B, of 0.6 A B C.
    assert first_tokens(top_p=0.5) == {A, B}
    assert first_tokens(top_p=0.6) == {A, B, C}
    assert first_tokens(top_k=2, top_p=0.6) == {A, B}


def test_seeded_sampling_is_reproducible() -> None:
    model = TableModel(CLASSIC)

    def draw(seed: int):
        return sample(model.step, model.cache([0] * 64), 64, max_length=10, top_p=0.9,
                      generator=torch.Generator().manual_seed(seed), **IDS)

    first, again, other = draw(1), draw(1), draw(2)
    assert first.sequences == again.sequences and torch.equal(first.scores, again.scores)
    assert first.sequences != other.sequences
    assert len({tuple(s) for s in first.sequences}) > 1


def test_batch_decodes_each_image_independently() -> None:
    model = TableModel(CLASSIC, LENGTHS, REPEAT)
    settings = [
        (greedy, {}),
        (greedy, {"no_repeat_ngram_size": 2, "min_length": 1}),
        (beam_search, {"beam_size": 2, "length_penalty": 1.0}),
        (beam_search, {"beam_size": 3, "length_penalty": 0.0, "no_repeat_ngram_size": 2}),
    ]
    for method, kwargs in settings:
        batch = method(model.step, model.cache([0, 1, 2]), 3, max_length=10, **IDS, **kwargs)
        for image in range(3):
            alone = method(model.step, model.cache([image]), 1, max_length=10, **IDS, **kwargs)
            assert batch.sequences[image] == alone.sequences[0]
            assert batch.scores[image].item() == pytest.approx(alone.scores.item(), abs=1e-6)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        decode(beam_search, CLASSIC, beam_size=0)
    with pytest.raises(ValueError):
        decode(sample, CLASSIC, top_p=0.0)
    with pytest.raises(ValueError):
        decode(sample, CLASSIC, temperature=0.0)
    with pytest.raises(ValueError):
        decode(greedy, CLASSIC, max_length=0)


# --- the real decoder -------------------------------------------------------------------------------------------

REAL_VOCAB, REAL_EOS = 40, 2
REAL_IDS = {"bos_id": 1, "eos_id": REAL_EOS, "pad_id": 0}


@pytest.fixture(scope="module")
def decoder_and_memory() -> tuple[CaptionDecoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    decoder = CaptionDecoder(REAL_VOCAB, memory_dim=24, width=32, layers=2, heads=4, mlp_ratio=2.0, max_length=16)
    # Larger random weights than the trained-from-scratch init: logits spread out (std ~sqrt(D)), so no two tokens
    # nearly tie and the cached and uncached paths, equal to ~1e-6, must pick the same ones; and the memory, not
    # only the prefix, decides the output.
    for param in decoder.parameters():
        if param.dim() == 2:
            torch.nn.init.normal_(param, std=param.shape[1] ** -0.5)
    torch.nn.init.normal_(decoder.token_embed.weight, std=1.0)
    memory = torch.randn(3, 5, 24)
    memory_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return decoder.eval(), memory, memory_mask


def test_beam_search_with_and_without_cache_agree(decoder_and_memory) -> None:
    decoder, memory, mask = decoder_and_memory
    kwargs = {"beam_size": 3, "max_length": 12, "length_penalty": 1.0, "no_repeat_ngram_size": 2, **REAL_IDS}
    cached = beam_search(decoder.step, decoder.init_cache(memory, mask, max_length=12), 3, **kwargs)
    uncached = beam_search(decoder.step_without_cache, decoder.init_prefix_cache(memory, mask), 3, **kwargs)
    assert cached.sequences == uncached.sequences
    torch.testing.assert_close(cached.scores, uncached.scores, atol=1e-5, rtol=1e-5)
    assert len({tuple(s) for s in cached.sequences}) == 3  # the images condition the output


def test_sampling_with_and_without_cache_agree(decoder_and_memory) -> None:
    decoder, memory, mask = decoder_and_memory
    kwargs = {"max_length": 12, "top_k": 10, **REAL_IDS}
    cached = sample(decoder.step, decoder.init_cache(memory, mask), 3, generator=torch.Generator().manual_seed(0),
                    **kwargs)
    uncached = sample(decoder.step_without_cache, decoder.init_prefix_cache(memory, mask), 3,
                      generator=torch.Generator().manual_seed(0), **kwargs)
    assert cached.sequences == uncached.sequences


def test_cached_greedy_is_the_argmax_of_teacher_forcing(decoder_and_memory) -> None:
    decoder, memory, mask = decoder_and_memory
    out = greedy(decoder.step, decoder.init_cache(memory, mask), 3, max_length=12, **REAL_IDS)
    for image, sequence in enumerate(out.sequences):
        ended = len(sequence) < 12
        fed = torch.tensor([[REAL_IDS["bos_id"], *sequence]])[:, : len(sequence) + ended]
        with torch.no_grad():
            logp = decoder(fed, memory[image : image + 1], mask[image : image + 1]).log_softmax(dim=-1)[0]
        targets = sequence + [REAL_EOS] * ended
        assert logp.argmax(dim=-1).tolist() == targets
        assert out.scores[image].item() == pytest.approx(logp.gather(1, torch.tensor(targets)[:, None]).sum().item(),
                                                         abs=1e-4)
