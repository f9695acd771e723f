"""BERT's embedding layer as a text tower of its own: word pieces embedded, no transformer.

A single-stream model (ViLT, Kim et al. 2021) contextualises text and image in one shared transformer, so its
text tower is only this layer; the fusion (``single_stream``) then does all the attending.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.layers import first_token, masked_mean


class EmbeddingTextEncoder(nn.Module):
    """``input_ids (B, L), attention_mask (B, L) -> EncoderOutput(tokens (B, L, D), pooled (B, D), mask (B, L))``.

    ``tokens = Dropout(LN(word + segment_0 + position))``, BERT's embeddings in BERT's order of sums (so an
    imported checkpoint reproduces them to the last bit the sums allow).

    Args:
        vocab_size: rows of the word-piece table.
        context_length: the longest text, i.e. rows of the position table (ViLT: 40).
        width: embedding width (the fusion's width when the fusion does not project, as ViLT's).
        segments: rows of BERT's segment (token type) table. Every text is segment 0, as a single question
            is; the other rows are kept so a BERT-style checkpoint maps tensor for tensor. 0: no segment table.
        norm_eps: the LayerNorm's epsilon (BERT and ViLT: 1e-12).
        dropout: after the LayerNorm.
        pool: ``"mean"`` over real tokens, or ``"cls"`` (the first token: BERT's ``[CLS]``). Only fusions that
            read pooled vectors use it; a single-stream fusion reads the tokens.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 40,
        width: int = 768,
        segments: int = 0,
        norm_eps: float = 1e-12,
        dropout: float = 0.0,
        pool: Literal["mean", "cls"] = "mean",
    ) -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.width = width
        self.context_length = context_length
        self.pool = pool
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Embedding(context_length, width)
        self.segment_embed = nn.Embedding(segments, width) if segments else None
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.drop = nn.Dropout(dropout)
        # BERT's initialisation of every table.
        for table in (self.token_embed, self.pos_embed, self.segment_embed):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        """``attention_mask``: 1/True = real token, int or bool; None means every position is real."""
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"sequence length {length} exceeds context_length {self.context_length}")
        mask = None if attention_mask is None else attention_mask.bool()
        x = self.token_embed(input_ids)  # (B, L, D)
        if self.segment_embed is not None:
            x = x + self.segment_embed.weight[0]
        x = x + self.pos_embed.weight[:length]
        tokens = self.drop(self.norm(x))  # (B, L, D)
        pooled = first_token(tokens) if self.pool == "cls" else masked_mean(tokens, mask)
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=mask)
