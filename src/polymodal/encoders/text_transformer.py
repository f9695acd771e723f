"""Transformer text encoder trained from scratch: bidirectional (BERT-like) or causal (CLIP's text tower)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.layers import Activation, Transformer, first_token, last_valid_token, masked_mean


class TransformerTextEncoder(nn.Module):
    """``input_ids (B, L), attention_mask (B, L) -> EncoderOutput(tokens (B, L, D), pooled (B, D), mask (B, L))``.

    Token + learned absolute position embeddings, pre-norm blocks that never attend to padding, final
    LayerNorm. ``pool`` picks the sentence vector:

    - ``"mean"``: mean over real tokens.
    - ``"cls"``: the first token (the tokenizer must put a CLS/BOS there); needs ``causal=False``.
    - ``"eos"``: the last real token. With ``causal=True`` this is CLIP's text tower, where the EOS token is
      the only position that has seen the whole caption.
    - ``"argmax"``: the position of the largest token id, as OpenAI CLIP and open_clip pool: their end-of-text
      token is the last id of the vocabulary, so this finds it without an attention mask (open_clip's
      tokenizer pads with id 0 and returns none).
    - ``"last"``: the last position, padding or not, as SigLIP pools: its tokenizer pads every text to the
      context length (``TextTokenizer(pad_to_context=True)``), so it is always the same slot, and with
      ``causal=False`` it reads the whole text.

    ``act`` is the blocks' MLP activation (``"quick_gelu"`` for OpenAI CLIP) and ``norm_eps`` every LayerNorm's
    epsilon.

    Padding must not be attended to, so padded and unpadded copies of a caption give the same ``pooled``.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 77,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        causal: bool = False,
        pool: Literal["mean", "cls", "eos", "argmax", "last"] = "mean",
        dropout: float = 0.0,
        act: Activation = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if pool not in ("mean", "cls", "eos", "argmax", "last"):
            raise ValueError(f"pool must be 'mean', 'cls', 'eos', 'argmax' or 'last', got {pool!r}")
        if causal and pool == "cls":
            # Under a causal mask the first token attends only to itself: it carries no sentence information.
            raise ValueError("pool='cls' with causal=True would pool a token that has seen nothing else")
        self.width = width
        self.context_length = context_length
        self.causal = causal
        self.pool = pool
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(context_length, width))
        # CLIP's initialisation for both tables.
        # Unit-scale token embeddings (nn.Embedding's default) rather than CLIP's 0.02: with small embeddings
        # every caption starts out nearly identical after pooling and training sits on a long plateau
        # (measured on the shapes world: contrastive loss 3.7 vs 2.3 after 140 steps).
        nn.init.normal_(self.token_embed.weight, std=1.0)
        nn.init.normal_(self.pos_embed, std=0.5)
        self.drop = nn.Dropout(dropout)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, drop=dropout, norm_eps=norm_eps, act=act)
        self.norm = nn.LayerNorm(width, eps=norm_eps)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations during backward to save memory."""
        self.transformer.grad_checkpointing = enable

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The token embedding table (what ``inputs_embeds`` replaces the lookup of)."""
        return self.token_embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> EncoderOutput:
        """``attention_mask``: 1/True = real token, int or bool; None means every position is real.

        ``inputs_embeds (B, L, width)``: token embeddings to use instead of looking ``input_ids`` up (prompt
        learning puts learned vectors among real tokens); position embeddings are still added, and
        ``input_ids`` still marks the pooled position for ``pool="argmax"``.
        """
        L = input_ids.shape[1]
        if L > self.context_length:
            raise ValueError(f"sequence length {L} exceeds context_length {self.context_length}")
        mask = None if attention_mask is None else attention_mask.bool()
        tokens_in = self.token_embed(input_ids) if inputs_embeds is None else inputs_embeds
        x = tokens_in + self.pos_embed[:L]  # (B, L, D)
        x = self.transformer(self.drop(x), mask=mask, causal=self.causal)
        tokens = self.norm(x)  # (B, L, D)
        if self.pool == "mean":
            pooled = masked_mean(tokens, mask)
        elif self.pool == "cls":
            pooled = first_token(tokens)
        elif self.pool == "eos":
            pooled = last_valid_token(tokens, mask)
        elif self.pool == "last":
            pooled = tokens[:, -1]
        else:
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), input_ids.argmax(dim=1)]  # (B, D)
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=mask)
