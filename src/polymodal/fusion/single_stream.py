"""Single-stream fusion (ViLT, UNITER, VisualBERT; seed article 004, 5.2.2 and 5.3.2): all modalities' tokens in one
sequence, one transformer, so every layer attends within and across modalities alike::

    x = [CLS; P_1 T_1 + e_1; ...; P_M T_M + e_M]        (B, 1 + Σ N_m, dim)
    x = Transformer(x, key padding mask = [1; mask_1; ...; mask_M])     pre-norm blocks
    fused = LN(x)_0                                     the CLS position

``P_m`` projects modality ``m``'s tokens to ``dim`` and ``e_m`` is its learned type embedding, which tells the
shared layers which modality a position came from. No position embedding is added: the inputs are encoder outputs,
which already carry their own positions (ViLT adds them because it embeds raw patches and word pieces).

ViLT itself is this fusion over towers that only embed (a ViT with no layers and no final norm, BERT's embedding
layer): ``project=False`` (the embeddings are already ``dim`` wide), ``pool_token="text"`` (no CLS of the fusion's
own: the text's ``[CLS]`` is pooled), ``pooler=True`` (BERT's ``tanh(W x_0 + b)``) and ``norm_eps=1e-12``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput, check_choice, concat_masks
from polymodal.layers.transformer import Transformer, init_weights


class SingleStreamFusion(Fusion):
    """``[CLS; P_m T_m + e_m ...]`` through a pre-norm :class:`~polymodal.layers.transformer.Transformer`.

    ``tokens`` is the whole normalised sequence, CLS first (when the fusion has its own), then the modalities in
    configured order; ``mask`` its key padding mask (None when no modality had one).

    Args:
        layers: transformer blocks.
        heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        project: project each modality's tokens to ``dim`` (``P_m``); False feeds them as they are, which needs
            every modality ``dim`` wide.
        pool_token: the position whose output is ``fused``: ``"cls"``, a CLS token of the fusion's own, or a
            modality's name: that modality's first token (its own CLS, e.g. BERT's ``[CLS]``), with no extra one.
        pooler: pass ``fused`` through ``tanh(W x + b)``, BERT's and ViLT's pooler.
        norm_eps: epsilon of every LayerNorm (ViLT: 1e-12).
    """

    uses_tokens = True

    def __init__(
        self, input_dims: Mapping[str, int], dim: int, layers: int = 2, heads: int = 8, mlp_ratio: float = 4.0,
        project: bool = True, pool_token: str = "cls", pooler: bool = False, norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(input_dims, dim)
        check_choice("pool_token", pool_token, ["cls", *self.input_dims])
        if project:
            self.proj = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in self.input_dims.items()})
        else:
            narrower = {name: width for name, width in self.input_dims.items() if width != dim}
            if narrower:
                raise ValueError(f"project=False needs every modality {dim} wide (dim), got {narrower}")
            self.proj = None
        self.pool_token = pool_token
        # Keyed by modality, so a model for a subset of the modalities loads the matching weights by name.
        self.type_embed = nn.ParameterDict({name: nn.Parameter(torch.empty(dim)) for name in self.input_dims})
        self.cls = nn.Parameter(torch.empty(1, 1, dim)) if pool_token == "cls" else None
        self.transformer = Transformer(dim, layers, heads, mlp_ratio, norm_eps=norm_eps)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pooler = nn.Linear(dim, dim) if pooler else None
        self.apply(init_weights)
        for parameter in [self.cls, *self.type_embed.values()]:
            if parameter is not None:
                nn.init.trunc_normal_(parameter, std=0.02)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        batch = features[self.modalities[0]].tokens.shape[0]
        parts, masks, starts = [], [], {}
        if self.cls is not None:
            parts.append(self.cls.expand(batch, -1, -1))  # (B, 1, dim)
            masks.append(None)
        for name in self.input_dims:
            starts[name] = sum(part.shape[1] for part in parts)
            tokens = features[name].tokens if self.proj is None else self.proj[name](features[name].tokens)
            parts.append(tokens + self.type_embed[name])  # (B, N_m, dim)
            masks.append(features[name].mask)
        x = torch.cat(parts, dim=1)  # (B, [1 +] Σ N_m, dim)
        mask = concat_masks(parts, masks)  # (B, [1 +] Σ N_m) or None
        x = self.norm(self.transformer(x, mask))
        fused = x[:, starts.get(self.pool_token, 0)]  # the fusion's CLS, or the pooled modality's first token
        if self.pooler is not None:
            fused = torch.tanh(self.pooler(fused))
        return FusionOutput(fused=fused, tokens=x, mask=mask)
