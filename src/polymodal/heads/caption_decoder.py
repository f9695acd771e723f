"""Autoregressive text decoder that cross-attends to image tokens, with a KV cache for fast decoding.

    input_ids (B, T) ─► token + position embeddings ─► N x [causal self-attn, cross-attn to memory, MLP]
                    ─► LayerNorm ─► @ token_embedᵀ ─► logits (B, T, V)

Options (off by default) give BERT's decoder layout, which BLIP's text decoder has (``polymodal.interop.hf_blip``):
post-norm layers, a LayerNorm on the embeddings, a dense + activation + LayerNorm transform before the output
projection, a per-token output bias, and an output matrix of its own instead of the tied embedding.

Training calls :meth:`CaptionDecoder.forward` (teacher forcing). Decoding calls :meth:`CaptionDecoder.init_cache`
once per batch of images, then :meth:`CaptionDecoder.step` once per token (``polymodal.tasks.decoding`` drives it
for greedy, sampling and beam search). The cache holds every layer's keys/values of the memory, computed once
since the image does not change between steps, and of the text positions decoded so far, so a step only runs
the new position through the layers. Decoding without it (open_clip's CoCa) re-runs the whole prefix per token.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.layers.attention import make_attn_mask
from polymodal.layers.mlp import Activation, Mlp, make_activation
from polymodal.layers.transformer import init_weights


def _split_heads(x: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    """``(B, N, parts * D)`` laid out as ``[part0; part1; ...]`` (heads contiguous inside each) -> ``parts`` x
    ``(B, nh, N, hs)``."""
    B, N, width = x.shape
    x = x.reshape(B, N, parts, num_heads, width // (parts * num_heads))  # (B, N, parts, nh, hs)
    return x.permute(2, 0, 3, 1, 4).unbind(0)  # parts x (B, nh, N, hs)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, nh, N, hs) -> (B, N, nh * hs)``."""
    B, nh, N, hs = x.shape
    return x.transpose(1, 2).reshape(B, N, nh * hs)  # (B, N, D)


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention over the whole sequence (:meth:`forward`) or a chunk appended to a KV
    cache (:meth:`step`).

    The fused ``qkv`` projection stores its rows as ``[q; k; v]`` (heads contiguous inside each), the layout of
    ``polymodal.layers.Attention`` and ``nn.MultiheadAttention.in_proj_weight``, so weights map one to one.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, D) -> (B, T, D)``; ``attn_mask`` is ``make_attn_mask(padding, causal=True)``: None means
        causal only."""
        q, k, v = _split_heads(self.qkv(x), 3, self.num_heads)  # 3 x (B, nh, T, hs)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
            dropout_p=self.attn_drop if self.training else 0.0,
        )  # (B, nh, T, hs)
        return self.proj_drop(self.proj(_merge_heads(out)))

    def step(self, x: torch.Tensor, kv: torch.Tensor, start: int) -> torch.Tensor:
        """Positions ``start .. start + t - 1``: ``x (B, t, D) -> (B, t, D)``.

        ``kv`` is this layer's cache buffer ``(2, B, nh, S, hs)`` holding keys/values of positions ``< start``;
        the new ones are written into it in place, so nothing already cached is copied.
        """
        t = x.shape[1]
        end = start + t
        q, k, v = _split_heads(self.qkv(x), 3, self.num_heads)  # 3 x (B, nh, t, hs)
        kv[0, :, :, start:end] = k
        kv[1, :, :, start:end] = v
        # One new position may see every cached one; a longer chunk is causal within itself.
        mask = None if t == 1 else torch.ones(t, end, dtype=torch.bool, device=x.device).tril(start)  # (t, end)
        out = F.scaled_dot_product_attention(
            q, kv[0, :, :, :end], kv[1, :, :, :end], attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.0,
        )  # (B, nh, t, hs)
        return self.proj_drop(self.proj(_merge_heads(out)))


class MemoryAttention(nn.Module):
    """Multi-head cross-attention from the text ``(B, T, D)`` to the memory ``(B, M, Dm)``.

    :meth:`memory_kv` is separate from :meth:`forward` so the cache computes the memory's keys/values once per
    image. ``kv`` rows are ``[k; v]`` (heads contiguous), as ``polymodal.layers.CrossAttention.kv``.
    """

    def __init__(
        self, dim: int, memory_dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(memory_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def memory_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """``memory (B, M, Dm) -> (2, B, nh, M, hs)`` keys and values."""
        return torch.stack(_split_heads(self.kv(memory), 2, self.num_heads))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, D)``, ``kv`` from :meth:`memory_kv`, ``attn_mask`` from ``make_attn_mask(memory_mask)``."""
        (q,) = _split_heads(self.q(x), 1, self.num_heads)  # (B, nh, T, hs)
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, nh, T, hs)
        return self.proj_drop(self.proj(_merge_heads(out)))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: ``x + self_attn(ln(x))``, ``x + cross_attn(ln(x), ln(memory))``, ``x + mlp(ln(x))``.

    The memory gets its own LayerNorm because it comes from another tower, whose token scale the decoder does not
    control (as open_clip's multimodal decoder, ``ln_1_kv``).

    ``post_norm=True`` gives BERT's layer instead (BLIP's text decoder): ``ln(x + self_attn(x))``,
    ``ln(x + cross_attn(x, memory))``, ``ln(x + mlp(x))``, with the memory as given (no ``norm_memory``).
    """

    def __init__(
        self, dim: int, memory_dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
        post_norm: bool = False, norm_eps: float = 1e-5, act: Activation = "gelu",
    ) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = CausalSelfAttention(dim, num_heads, attn_drop=drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        # Identity adds no parameters, so pre-norm checkpoints keep their keys.
        self.norm_memory = nn.Identity() if post_norm else nn.LayerNorm(memory_dim, eps=norm_eps)
        self.cross_attn = MemoryAttention(dim, memory_dim, num_heads, attn_drop=drop, proj_drop=drop)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, act=act)

    def _residual(
        self, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], norm: nn.Module
    ) -> torch.Tensor:
        """One sub-layer around ``branch``: ``x + branch(norm(x))``, or ``norm(x + branch(x))`` when post-norm."""
        return norm(x + branch(x)) if self.post_norm else x + branch(norm(x))

    def memory_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """``memory (B, M, Dm) -> (2, B, nh, M, hs)``."""
        return self.cross_attn.memory_kv(self.norm_memory(memory))

    def _cross_and_mlp(
        self, x: torch.Tensor, memory_kv: torch.Tensor, memory_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = self._residual(x, lambda h: self.cross_attn(h, memory_kv, memory_mask), self.norm2)
        return self._residual(x, self.mlp, self.norm3)

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The whole sequence ``x (B, T, D)``; masks are SDPA masks from ``make_attn_mask``."""
        x = self._residual(x, lambda h: self.self_attn(h, self_mask), self.norm1)
        return self._cross_and_mlp(x, memory_kv, memory_mask)

    def step(
        self,
        x: torch.Tensor,
        self_kv: torch.Tensor,
        start: int,
        memory_kv: torch.Tensor,
        memory_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """New positions ``x (B, t, D)`` starting at ``start``; extends ``self_kv`` in place."""
        x = self._residual(x, lambda h: self.self_attn.step(h, self_kv, start), self.norm1)
        return self._cross_and_mlp(x, memory_kv, memory_mask)


class HeadTransform(nn.Module):
    """``dense -> activation -> LayerNorm`` on the last hidden states before the output projection, ``(..., D) ->
    (..., D)``: BERT's LM head transform (``BertPredictionHeadTransform``), which BLIP's decoder keeps."""

    def __init__(self, dim: int, norm_eps: float = 1e-5, act: Activation = "gelu") -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = make_activation(act)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


@dataclass
class DecoderCache:
    """What :meth:`CaptionDecoder.step` needs besides the new tokens, for ``B`` rows (images, or beams).

    Attributes:
        self_kv: ``(L, 2, B, nh, S, hs)`` self-attention keys/values of every layer; positions ``< length`` hold
            the tokens decoded so far, the rest is room for ``S - length`` more (written in place by ``step``).
        memory_kv: ``(L, 2, B, nh, M, hs)`` the memory's keys/values of every layer, fixed for the whole decode.
        memory_mask: ``(B, 1, 1, M)`` SDPA mask (True = real memory token), or None when all are real.
        length: how many positions the cache holds.
    """

    self_kv: torch.Tensor
    memory_kv: torch.Tensor
    memory_mask: torch.Tensor | None
    length: int = 0

    @property
    def batch_size(self) -> int:
        return self.self_kv.shape[2]

    @property
    def capacity(self) -> int:
        """The most positions this cache can hold (``S``)."""
        return self.self_kv.shape[4]

    def reorder(self, indices: torch.Tensor) -> DecoderCache:
        """A new cache whose row ``i`` is this cache's row ``indices[i]`` (beam search's back-pointers)."""
        mask = None if self.memory_mask is None else self.memory_mask.index_select(0, indices)
        return DecoderCache(
            self.self_kv.index_select(2, indices), self.memory_kv.index_select(2, indices), mask, self.length
        )

    def expand(self, k: int) -> DecoderCache:
        """Each row repeated ``k`` times in a row (``B -> B * k``): several beams or samples per image."""
        return self.reorder(torch.arange(self.batch_size, device=self.self_kv.device).repeat_interleave(k))


@dataclass
class PrefixCache:
    """State of decoding *without* a KV cache (:meth:`CaptionDecoder.step_without_cache`): the memory and the
    tokens fed so far ``(B, t)``, all of which every step runs through the decoder again. The baseline that the
    tests and ``benchmarks/caption_decode.py`` compare the KV cache against."""

    memory: torch.Tensor
    memory_mask: torch.Tensor | None
    tokens: torch.Tensor

    def reorder(self, indices: torch.Tensor) -> PrefixCache:
        mask = None if self.memory_mask is None else self.memory_mask.index_select(0, indices)
        return PrefixCache(self.memory.index_select(0, indices), mask, self.tokens.index_select(0, indices))


class CaptionDecoder(nn.Module):
    """``input_ids (B, T), memory (B, M, Dm) -> logits (B, T, V)``: a causal text decoder conditioned on image
    tokens through cross-attention.

    The output projection is the token embedding itself (weight tying): it is applied as
    ``F.linear(h, token_embed.weight)`` rather than through a second module sharing the weight, so the state dict
    holds the matrix once (safetensors refuses tensors that share memory).

    Args:
        vocab_size: V.
        memory_dim: Dm, the width of the image tokens (may differ from ``width``).
        width: D, the decoder width.
        layers: number of decoder layers.
        heads: attention heads (``width`` must be divisible by it).
        mlp_ratio: MLP hidden width over ``width``.
        max_length: the most positions the decoder can read (learned position table size), BOS included.
        dropout: dropout on attention weights, residual branches and embeddings.
        norm_position: ``"pre"`` (pre-norm layers, a LayerNorm on the memory and after the last layer) or
            ``"post"`` (BERT's post-norm layers, whose output is already normalised: no final LayerNorm).
        embed_norm: a LayerNorm on token + position embeddings (BERT's embedding LayerNorm).
        head_transform: dense + activation + LayerNorm before the output projection (BERT's LM head transform).
        head_bias: a learned bias per output token.
        tie_embeddings: the output projection is the token embedding (else a matrix of its own, ``output_proj``).
        norm_eps: every LayerNorm's epsilon.
        act: the MLPs' (and the head transform's) activation.
    """

    def __init__(
        self,
        vocab_size: int,
        memory_dim: int,
        width: int = 512,
        layers: int = 6,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        max_length: int = 77,
        dropout: float = 0.0,
        *,
        norm_position: Literal["pre", "post"] = "pre",
        embed_norm: bool = False,
        head_transform: bool = False,
        head_bias: bool = False,
        tie_embeddings: bool = True,
        norm_eps: float = 1e-5,
        act: Activation = "gelu",
    ) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        post_norm = norm_position == "post"
        self.vocab_size = vocab_size
        self.width = width
        self.max_length = max_length
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(max_length, width))
        # Identity for every option left off: no parameters, so existing checkpoints keep their keys.
        self.embed_norm = nn.LayerNorm(width, eps=norm_eps) if embed_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(width, memory_dim, heads, mlp_ratio, dropout, post_norm, norm_eps, act) for _ in range(layers)
        )
        self.norm = nn.Identity() if post_norm else nn.LayerNorm(width, eps=norm_eps)
        self.head_transform = HeadTransform(width, norm_eps, act) if head_transform else nn.Identity()
        self.output_proj = None if tie_embeddings else nn.Linear(width, vocab_size, bias=False)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size)) if head_bias else None
        self.apply(init_weights)
        # GPT-2's scales: the embedding is also the output matrix, and unit-scale rows would start training from
        # logits of std ~sqrt(D), i.e. confidently wrong.
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    @property
    def output_weight(self) -> torch.Tensor:
        """The ``(V, D)`` output projection: the token embedding's weight when tied, else ``output_proj``'s."""
        return self.token_embed.weight if self.output_proj is None else self.output_proj.weight

    def _embed(self, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        end = start + input_ids.shape[1]
        if end > self.max_length:
            raise ValueError(f"positions up to {end} exceed the decoder's max_length {self.max_length}")
        return self.drop(self.embed_norm(self.token_embed(input_ids) + self.pos_embed[start:end]))  # (B, t, D)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.head_transform(self.norm(x)), self.output_weight, self.output_bias)  # (..., V)

    def forward(
        self,
        input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher forcing: logits ``(B, T, V)`` where position ``i`` predicts token ``i + 1``.

        Args:
            input_ids: ``(B, T)`` tokens, BOS first.
            memory: ``(B, M, Dm)`` image tokens (``EncoderOutput.tokens``).
            memory_mask: ``(B, M)``, True/1 = real image token (``EncoderOutput.mask``); None = all real.
            attention_mask: ``(B, T)`` padding of ``input_ids``, True/1 = real; None = all real.
        """
        x = self._embed(input_ids, 0)
        self_mask = make_attn_mask(attention_mask, causal=True)
        cross_mask = make_attn_mask(memory_mask)
        for layer in self.layers:
            x = layer(x, layer.memory_kv(memory), self_mask, cross_mask)
        return self._logits(x)

    @torch.no_grad()
    def init_cache(
        self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None, max_length: int | None = None
    ) -> DecoderCache:
        """An empty cache for decoding ``B`` images: computes every layer's memory keys/values once and reserves
        room for ``max_length`` positions (default: the decoder's ``max_length``; BOS counts as one).

        Inference only, as :meth:`step` (which writes into the cache in place): neither records gradients.
        """
        capacity = self.max_length if max_length is None else max_length
        if not 0 < capacity <= self.max_length:
            raise ValueError(f"max_length must be in [1, {self.max_length}], got {capacity}")
        memory_kv = torch.stack([layer.memory_kv(memory) for layer in self.layers])  # (L, 2, B, nh, M, hs)
        L, _, B, nh, _, hs = memory_kv.shape
        # Same dtype as the memory keys: under autocast both come out of a Linear in the autocast dtype.
        self_kv = memory_kv.new_empty(L, 2, B, nh, capacity, hs)
        return DecoderCache(self_kv, memory_kv, make_attn_mask(memory_mask))

    @torch.no_grad()
    def step(
        self, input_ids: torch.Tensor, cache: DecoderCache, position: int
    ) -> tuple[torch.Tensor, DecoderCache]:
        """Decode ``input_ids (B, t)`` at positions ``position .. position + t - 1`` (``t > 1`` feeds a prompt in
        one call), given the cache of every earlier position.

        Returns:
            The logits ``(B, V)`` of the last new position, and ``cache`` itself, extended by ``t`` positions.
        """
        t = input_ids.shape[1]
        if position != cache.length:
            raise ValueError(f"the cache holds {cache.length} positions, cannot decode at position {position}")
        if position + t > cache.capacity:
            raise ValueError(f"positions up to {position + t} exceed the cache's capacity {cache.capacity}")
        x = self._embed(input_ids, position)
        for layer, self_kv, memory_kv in zip(self.layers, cache.self_kv, cache.memory_kv):
            x = layer.step(x, self_kv, position, memory_kv, cache.memory_mask)
        cache.length = position + t
        return self._logits(x[:, -1]), cache

    def init_prefix_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> PrefixCache:
        """The state for :meth:`step_without_cache`."""
        return PrefixCache(memory, memory_mask, memory.new_empty(memory.shape[0], 0, dtype=torch.long))

    def step_without_cache(
        self, input_ids: torch.Tensor, cache: PrefixCache, position: int
    ) -> tuple[torch.Tensor, PrefixCache]:
        """:meth:`step` that re-runs the whole prefix through :meth:`forward` (no KV cache): same results, each
        step costing as much as a forward over every token so far."""
        if position != cache.tokens.shape[1]:
            raise ValueError(f"the prefix holds {cache.tokens.shape[1]} tokens, cannot decode at position {position}")
        tokens = torch.cat([cache.tokens, input_ids], dim=1)  # (B, t)
        logits = self(tokens, cache.memory, cache.memory_mask)[:, -1]  # (B, V)
        return logits, PrefixCache(cache.memory, cache.memory_mask, tokens)
