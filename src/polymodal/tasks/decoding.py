"""Greedy, sampling and beam-search decoding for any autoregressive model, batched over images.

A model takes part through one function and one method (see :class:`StepFn`, :class:`DecodingCache`):

- ``step(tokens (R, t), cache, position) -> (logits (R, V) of the last position, cache)`` runs the model on
  the ``t`` new tokens at positions ``position ..``, given the state of the earlier ones;
- ``cache.reorder(indices)`` returns the state whose row ``i`` is row ``indices[i]`` (beam search's
  back-pointers, and ``B -> B * beam_size`` expansion).

``CaptionDecoder.step`` / ``DecoderCache`` are one such pair. Each function starts every row at ``bos_id``,
position 0, and feeds one token per step; a row stops at its first ``eos_id`` (rows that stopped keep being fed
``pad_id`` until the batch is done; their outputs are ignored). ``max_length`` counts generated tokens, EOS
included, so the model reads at most ``max_length`` positions (BOS and all but the last generated token).

Scores are sums of the model's log-probabilities ``log_softmax(logits)`` of the chosen tokens, EOS included.
Constraints (``min_length``, ``no_repeat_ngram_size``) only remove tokens, without renormalising the others, so
a score stays a model likelihood whatever the constraints.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class DecodingCache(Protocol):
    """A model's decoding state for ``R`` rows."""

    def reorder(self, indices: torch.Tensor) -> DecodingCache:
        """The state whose row ``i`` is this state's row ``indices[i]``; ``indices (R',)`` long."""
        ...


class StepFn(Protocol):
    """One decoding step: ``(tokens (R, t), cache, position) -> (logits (R, V) of the last position, cache)``."""

    def __call__(self, tokens: torch.Tensor, cache: Any, position: int) -> tuple[torch.Tensor, Any]: ...


@dataclass
class Decoded:
    """Decoded sequences, one per image.

    Attributes:
        sequences: token ids per image, without BOS, up to and excluding EOS.
        scores: ``(B,)`` float: the sequence's summed log-probability (for beam search, divided by the length
            penalty; see :func:`beam_search`).
    """

    sequences: list[list[int]]
    scores: torch.Tensor


def _constrain(
    logp: torch.Tensor, history: torch.Tensor, eos_id: int, min_length: int, no_repeat_ngram_size: int
) -> torch.Tensor:
    """Set to -inf (in place) the log-probabilities ``(R, V)`` of tokens the constraints forbid after ``history
    (R, t)``, the tokens generated so far (BOS excluded): EOS before ``min_length`` tokens, and any token that
    would complete an n-gram already in ``history``."""
    t = history.shape[1]
    if t < min_length:
        logp[:, eos_id] = float("-inf")
    n = no_repeat_ngram_size
    if n > 0 and t >= n:
        ngrams = history.unfold(1, n, 1)  # (R, t - n + 1, n)
        # An n-gram whose first n - 1 tokens are the last n - 1 generated ones would repeat if its last came next.
        seen = (ngrams[:, :, :-1] == history[:, None, t - n + 1:]).all(dim=-1)  # (R, t - n + 1)
        banned = torch.zeros_like(logp).scatter_add_(1, ngrams[:, :, -1], seen.to(logp.dtype))  # (R, V)
        logp.masked_fill_(banned > 0, float("-inf"))
    return logp


def _check(max_length: int, min_length: int, no_repeat_ngram_size: int) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if min_length < 0 or no_repeat_ngram_size < 0:
        raise ValueError("min_length and no_repeat_ngram_size must be >= 0")


def _single_path(
    choose: Callable[[torch.Tensor], torch.Tensor],
    step: StepFn,
    cache: DecodingCache,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    min_length: int,
    no_repeat_ngram_size: int,
    device: torch.device | str,
) -> Decoded:
    """Decode one sequence per row, ``choose`` picking the next tokens ``(R,)`` from constrained log-probs."""
    _check(max_length, min_length, no_repeat_ngram_size)
    tokens = torch.full((batch_size, max_length), pad_id, dtype=torch.long, device=device)
    lengths = torch.full((batch_size,), max_length, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    inputs = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    for t in range(max_length):
        logits, cache = step(inputs, cache, t)
        logp = logits.float().log_softmax(dim=-1)  # (R, V)
        _constrain(logp, tokens[:, :t], eos_id, min_length, no_repeat_ngram_size)
        chosen = choose(logp)  # (R,)
        chosen = torch.where(finished, pad_id, chosen)
        scores += torch.where(finished, 0.0, logp.gather(1, chosen[:, None]).squeeze(1))
        tokens[:, t] = chosen
        ended = ~finished & (chosen == eos_id)
        lengths = torch.where(ended, t, lengths)
        finished |= ended
        if bool(finished.all()):
            break
        inputs = chosen[:, None]
    return Decoded([row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())], scores)


@torch.no_grad()
def greedy(
    step: StepFn,
    cache: DecodingCache,
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    device: torch.device | str = "cpu",
) -> Decoded:
    """The most likely next token at every step.

    Args:
        step, cache: the model (see the module docstring); ``cache`` holds ``batch_size`` rows.
        batch_size: number of rows (images) decoded together.
        bos_id, eos_id, pad_id: the tokenizer's start, end and padding ids.
        max_length: most tokens generated per row, EOS included.
        min_length: EOS is forbidden until this many tokens have been generated.
        no_repeat_ngram_size: if ``n > 0``, no n-gram of generated tokens (BOS excluded) occurs twice.
        device: where the model's logits are.
    """
    return _single_path(
        lambda logp: logp.argmax(dim=-1), step, cache, batch_size, bos_id, eos_id, pad_id, max_length,
        min_length, no_repeat_ngram_size, device,
    )


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the ``top_k`` largest logits ``(R, V)`` and/or the smallest set holding ``top_p`` of the probability
    (nucleus); the rest become -inf."""
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # Drop a token once the tokens ranked above it hold top_p: the most likely token always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    return logits


@torch.no_grad()
def sample(
    step: StepFn,
    cache: DecodingCache,
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Decoded:
    """Draw each next token from the model's distribution at ``temperature``, restricted to the ``top_k`` most
    likely tokens and/or the nucleus holding ``top_p`` of the probability (top-k applies first).

    ``generator`` (on ``device``) makes the draws reproducible. Scores are log-probabilities at temperature 1,
    before top-k/top-p, so they compare with :func:`greedy`'s. Other arguments as :func:`greedy`; for several
    captions per image, decode ``cache.reorder(rows.repeat_interleave(n))``.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature <= 0.0:
        raise ValueError(f"temperature must be > 0 (use greedy for the limit), got {temperature}")

    def choose(logp: torch.Tensor) -> torch.Tensor:
        probs = _filter_logits(logp / temperature, top_k, top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _single_path(
        choose, step, cache, batch_size, bos_id, eos_id, pad_id, max_length, min_length, no_repeat_ngram_size,
        device,
    )


def _keep_best(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    new_scores: torch.Tensor,
    new_tokens: torch.Tensor,
    new_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge finished hypotheses ``(B, n)`` (-inf = none) into the per-image pool ``scores (B, K)``, ``tokens
    (B, K, L)``, ``lengths (B, K)``, keeping the ``K`` best, best first."""
    K, L = scores.shape[1], tokens.shape[2]
    scores, pick = torch.cat([scores, new_scores], dim=1).topk(K, dim=1)  # (B, K)
    tokens = torch.cat([tokens, new_tokens], dim=1).gather(1, pick[..., None].expand(-1, -1, L))  # (B, K, L)
    lengths = torch.cat([lengths, torch.full_like(new_scores, new_length, dtype=torch.long)], dim=1).gather(1, pick)
    return scores, tokens, lengths


@torch.no_grad()
def beam_search(
    step: StepFn,
    cache: DecodingCache,
    batch_size: int,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    min_length: int = 0,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    device: torch.device | str = "cpu",
) -> Decoded:
    """The highest-scoring sequence per image found by a beam of ``beam_size`` hypotheses.

    A hypothesis's score is HF-style: ``sum log p / len ** length_penalty``, ``len`` = tokens generated (EOS
    included; BOS not), not GNMT's ``((5 + len) / 6) ** alpha``. ``length_penalty`` 0 ranks by total
    log-probability (favouring short captions), 1 by mean log-probability per token; > 1 favours longer ones.

    Each step ranks the ``2 * beam_size`` best extensions of the image's beams: EOS extensions among the first
    ``beam_size`` go to the image's pool of finished hypotheses (as HF: this makes ``beam_size=1`` greedy search),
    and the best ``beam_size`` others become the new beams. An image stops when its pool holds ``beam_size``
    hypotheses that no beam can still beat (an exact bound, so stopping early never changes the result); beams
    still alive at ``max_length`` join the pool unterminated. ``cache`` holds one row per image: it is expanded
    to ``batch_size * beam_size`` rows with ``cache.reorder``. Other arguments as :func:`greedy`.
    """
    _check(max_length, min_length, no_repeat_ngram_size)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, K, L = batch_size, beam_size, max_length
    images = torch.arange(B, device=device)
    cache = cache.reorder(images.repeat_interleave(K))
    first_beam = (images * K)[:, None]  # (B, 1): row of each image's first beam
    tokens = torch.full((B * K, L), pad_id, dtype=torch.long, device=device)
    # The K beams start identical: only the first may expand, or each extension would be found K times.
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    pool_scores = torch.full((B, K), float("-inf"), device=device)
    pool_tokens = torch.full((B, K, L), pad_id, dtype=torch.long, device=device)
    pool_lengths = torch.zeros((B, K), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    top_rank = torch.arange(2 * K, device=device) < K  # (2K,)
    inputs = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
    for t in range(L):
        logits, cache = step(inputs, cache, t)
        logp = _constrain(logits.float().log_softmax(dim=-1), tokens[:, :t], eos_id, min_length, no_repeat_ngram_size)
        V = logp.shape[-1]
        candidates = (beam_scores.reshape(B * K, 1) + logp).reshape(B, K * V)
        top_scores, top = candidates.topk(2 * K, dim=1)  # (B, 2K), best first
        source = first_beam + top // V  # (B, 2K) row each candidate extends
        word = top % V  # (B, 2K)
        is_eos = word == eos_id

        finished = is_eos & top_rank & ~done[:, None] & top_scores.isfinite()
        pool_scores, pool_tokens, pool_lengths = _keep_best(
            pool_scores, pool_tokens, pool_lengths,
            torch.where(finished, top_scores / (t + 1) ** length_penalty, float("-inf")), tokens[source], t,
        )

        # At most K candidates end in EOS (one per beam), so at least K of the 2K go on.
        go_on = ~is_eos & ((~is_eos).cumsum(dim=1) <= K)  # (B, 2K), exactly K per image
        keep = go_on.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :K]  # (B, K), best first
        beam_scores = top_scores.gather(1, keep)
        source = source.gather(1, keep).reshape(B * K)
        word = word.gather(1, keep).reshape(B * K)
        tokens = tokens[source]
        tokens[:, t] = word

        # A beam's score only falls as it grows; its normalised score is best at the longest length when
        # length_penalty > 0 (dividing a negative sum by more), else at the shortest (t + 2: one more token).
        best_length = L if length_penalty > 0 else min(t + 2, L)
        bound = beam_scores.max(dim=1).values / best_length**length_penalty  # (B,)
        worst = pool_scores[:, -1]
        done |= worst.isfinite() & (worst >= bound)
        if t == L - 1 or bool(done.all()):
            break
        cache = cache.reorder(source)
        inputs = word[:, None]

    alive = torch.where(done[:, None], float("-inf"), beam_scores / (t + 1) ** length_penalty)
    pool_scores, pool_tokens, pool_lengths = _keep_best(
        pool_scores, pool_tokens, pool_lengths, alive, tokens.reshape(B, K, L), t + 1
    )
    sequences = [row[:n] for row, n in zip(pool_tokens[:, 0].tolist(), pool_lengths[:, 0].tolist())]
    return Decoded(sequences, pool_scores[:, 0])
