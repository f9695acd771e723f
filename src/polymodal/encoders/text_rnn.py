"""Bidirectional GRU text encoder (the VSE++ / SCAN family), trained from scratch."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from polymodal.encoders.base import EncoderOutput
from polymodal.layers import masked_mean


class GRUTextEncoder(nn.Module):
    """``input_ids (B, L), attention_mask (B, L) -> EncoderOutput(tokens (B, L, D), pooled (B, D), mask (B, L))``.

    ``width`` is the *total* feature size D. With ``bidirectional=True`` each direction has ``width // 2``
    hidden units and their outputs are concatenated, so tokens and pooled are ``width`` wide with no extra
    projection (``width`` must then be even).

    Sequences are packed by their lengths, so the GRU never reads padding in either direction; padded
    token positions come back as zeros. Padding must be on the right (real tokens first), which is what
    ``attention_mask.sum(1)`` as a length assumes.

    ``pool`` picks the sentence vector:

    - ``"mean"`` (default): mean of the token features over real tokens. Every word contributes directly,
      which trains more easily than relying on a single state (the choice of VSE-infinity and SCAN).
    - ``"final"``: concatenated final hidden states of the last layer -- the forward direction after the
      last real token, the backward direction after the first -- as in VSE++.
    """

    def __init__(
        self,
        vocab_size: int,
        width: int = 256,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        pool: Literal["mean", "final"] = "mean",
    ) -> None:
        super().__init__()
        if bidirectional and width % 2:
            raise ValueError(f"a bidirectional GRU splits width across two directions; got odd width {width}")
        if pool not in ("mean", "final"):
            raise ValueError(f"pool must be 'mean' or 'final', got {pool!r}")
        self.width = width
        self.pool = pool
        self.embed = nn.Embedding(vocab_size, width)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(
            width,
            width // 2 if bidirectional else width,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            # nn.GRU applies dropout between layers only, and warns when there is no "between".
            dropout=dropout if layers > 1 else 0.0,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        """``attention_mask``: 1/True = real token, int or bool, right-padded; None means no padding."""
        B, L = input_ids.shape
        mask = (
            torch.ones(B, L, dtype=torch.bool, device=input_ids.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        # pack_padded_sequence wants CPU lengths >= 1; an empty caption reads one pad token instead of failing,
        # and its mask (all False) still keeps that token out of mean pooling.
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        x = self.drop(self.embed(input_ids))  # (B, L, D)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h_n = self.gru(packed)  # h_n: (layers * directions, B, D / directions)
        tokens, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, D)
        if self.pool == "mean":
            pooled = masked_mean(tokens, mask)
        else:
            directions = 2 if self.gru.bidirectional else 1
            # The last layer's states; nn.GRU already returns h_n in the input batch order for unsorted packs.
            pooled = h_n[-directions:].transpose(0, 1).reshape(B, self.width)  # (B, D)
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=None if attention_mask is None else mask)
