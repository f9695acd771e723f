"""Shared building blocks, one per file: attention, MLP, transformer block, patch/position embedding, pooling."""
from polymodal.layers.attention import Attention, CrossAttention, make_attn_mask
from polymodal.layers.mlp import Activation, Mlp, QuickGELU, make_activation
from polymodal.layers.patch_embed import PatchEmbed
from polymodal.layers.pooling import (
    AttentionPool, AttentionPoolHead, first_token, last_valid_token, masked_mean, ordered_slots,
)
from polymodal.layers.pos_embed import (
    LearnedPosEmbed2d,
    SinCosPosEmbed2d,
    resample_abs_pos_embed,
    sincos_2d_pos_embed,
)
from polymodal.layers.transformer import Block, Transformer, init_weights

__all__ = [
    "Activation",
    "Attention",
    "AttentionPool",
    "AttentionPoolHead",
    "Block",
    "CrossAttention",
    "LearnedPosEmbed2d",
    "Mlp",
    "PatchEmbed",
    "QuickGELU",
    "SinCosPosEmbed2d",
    "Transformer",
    "first_token",
    "init_weights",
    "last_valid_token",
    "make_activation",
    "make_attn_mask",
    "masked_mean",
    "ordered_slots",
    "resample_abs_pos_embed",
    "sincos_2d_pos_embed",
]
