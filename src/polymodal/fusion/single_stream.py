"""Single-stream fusion (ViLT, UNITER, VisualBERT; seed article 004, 5.2.2 and 5.3.2): all modalities' tokens in one
sequence, one transformer, so every layer attends within and across modalities alike::

    x = [CLS; P_1 T_1 + e_1; ...; P_M T_M + e_M]        (B, 1 + Σ N_m, dim)
    x = Transformer(x, key padding mask = [1; mask_1; ...; mask_M])     pre-norm blocks
    fused = LN(x)_0                                     the CLS position

``P_m`` projects modality ``m``'s tokens to ``dim`` and ``e_m`` is its learned type embedding, which tells the
shared layers which modality a position came from. No position embedding is added: the inputs are encoder outputs,
which already carry their own positions (ViLT adds them because it embeds raw patches and word pieces).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput, concat_masks
from polymodal.layers.transformer import Transformer, init_weights


class SingleStreamFusion(Fusion):
    """``[CLS; P_m T_m + e_m ...]`` through a pre-norm :class:`~polymodal.layers.transformer.Transformer`.

    ``tokens`` is the whole normalised sequence, CLS first, then the modalities in configured order; ``mask``
    its key padding mask (None when no modality had one).

    Args:
        layers: transformer blocks.
        heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
    """

    uses_tokens = True

    def __init__(
        self, input_dims: Mapping[str, int], dim: int, layers: int = 2, heads: int = 8, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__(input_dims, dim)
        self.proj = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in self.input_dims.items()})
        # Keyed by modality, so a model for a subset of the modalities loads the matching weights by name.
        self.type_embed = nn.ParameterDict({name: nn.Parameter(torch.empty(dim)) for name in self.input_dims})
        self.cls = nn.Parameter(torch.empty(1, 1, dim))
        self.transformer = Transformer(dim, layers, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)
        for parameter in [self.cls, *self.type_embed.values()]:
            nn.init.trunc_normal_(parameter, std=0.02)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        batch = features[self.modalities[0]].tokens.shape[0]
        parts = [self.cls.expand(batch, -1, -1)]  # (B, 1, dim)
        masks = [None]
        for name in self.input_dims:
            parts.append(self.proj[name](features[name].tokens) + self.type_embed[name])  # (B, N_m, dim)
            masks.append(features[name].mask)
        x = torch.cat(parts, dim=1)  # (B, 1 + Σ N_m, dim)
        mask = concat_masks(parts, masks)  # (B, 1 + Σ N_m) or None
        x = self.norm(self.transformer(x, mask))
        return FusionOutput(fused=x[:, 0], tokens=x, mask=mask)
