"""Multimodal fusion: one interface (:class:`Fusion` -> :class:`FusionOutput`), one file per family.

Feature-level (early) fusions are built by name with :func:`build_fusion`; decision-level (late) fusion of
logits is :class:`LateFusion`, which also expresses hybrid fusion (see :mod:`polymodal.fusion.late`).

Kinds, their classes and their options (besides ``input_dims`` and ``dim``):

* ``concat``: :class:`ConcatFusion` (``hidden``)
* ``sum``: :class:`SumFusion`
* ``gated_multiplicative``: :class:`GatedMultiplicativeFusion`
* ``gated_additive``: :class:`GatedAdditiveFusion`
* ``attention_weighted``: :class:`AttentionWeightedFusion` (``attn_dim``)
* ``gated_unit``: :class:`GatedMultimodalUnit`
* ``tensor``: :class:`TensorFusion` (``proj_dim``)
* ``low_rank_tensor``: :class:`LowRankTensorFusion` (``rank``)
* ``bilinear``: :class:`BilinearFusion` (``rank``)
* ``film``: :class:`FiLMFusion` (``condition``, ``target``)
* ``cross_attention``: :class:`CrossAttentionFusion` (``query``, ``context``, ``layers``, ``heads``, ``mlp_ratio``,
  ``pool``, ``self_attention``)
* ``single_stream``: :class:`SingleStreamFusion` (``layers``, ``heads``, ``mlp_ratio``)
* ``co_attention``: :class:`CoAttentionFusion` (``layers``, ``heads``, ``mlp_ratio``, ``pool``, ``combine``)
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from polymodal.fusion.attention_weighted import AttentionWeightedFusion
from polymodal.fusion.base import Fusion, FusionOutput, pooled_features
from polymodal.fusion.bilinear import BilinearFusion
from polymodal.fusion.co_attention import CoAttentionFusion
from polymodal.fusion.concat_sum import ConcatFusion, SumFusion
from polymodal.fusion.cross_attention import CrossAttentionFusion
from polymodal.fusion.film import FiLMFusion
from polymodal.fusion.gated import GatedAdditiveFusion, GatedMultiplicativeFusion
from polymodal.fusion.gated_unit import GatedMultimodalUnit
from polymodal.fusion.late import LateFusion
from polymodal.fusion.single_stream import SingleStreamFusion
from polymodal.fusion.tensor import LowRankTensorFusion, TensorFusion

FUSIONS: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "gated_multiplicative": GatedMultiplicativeFusion,
    "gated_additive": GatedAdditiveFusion,
    "attention_weighted": AttentionWeightedFusion,
    "gated_unit": GatedMultimodalUnit,
    "tensor": TensorFusion,
    "low_rank_tensor": LowRankTensorFusion,
    "bilinear": BilinearFusion,
    "film": FiLMFusion,
    "cross_attention": CrossAttentionFusion,
    "single_stream": SingleStreamFusion,
    "co_attention": CoAttentionFusion,
}


def fusion_options(kind: str) -> list[str]:
    """The option names ``build_fusion`` accepts for ``kind``: its class's ``__init__`` arguments after
    ``input_dims`` and ``dim``."""
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion kind {kind!r}; known kinds: {sorted(FUSIONS)}")
    parameters = inspect.signature(FUSIONS[kind].__init__).parameters
    return [name for name in parameters if name not in ("self", "input_dims", "dim")]


def build_fusion(kind: str, input_dims: Mapping[str, int], dim: int, **options: Any) -> Fusion:
    """Build the fusion ``kind`` for modalities ``input_dims`` (ordered ``{name: width}``) with output width ``dim``.

    Raises:
        ValueError: for an unknown kind, or an option the kind does not take (naming it and the accepted ones).
    """
    accepted = fusion_options(kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"fusion kind {kind!r} got unknown option(s) {unknown}; it accepts {accepted or 'none'}")
    return FUSIONS[kind](input_dims, dim, **options)


__all__ = [
    "FUSIONS",
    "AttentionWeightedFusion",
    "BilinearFusion",
    "CoAttentionFusion",
    "ConcatFusion",
    "CrossAttentionFusion",
    "FiLMFusion",
    "Fusion",
    "FusionOutput",
    "GatedAdditiveFusion",
    "GatedMultimodalUnit",
    "GatedMultiplicativeFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "SingleStreamFusion",
    "SumFusion",
    "TensorFusion",
    "build_fusion",
    "fusion_options",
    "pooled_features",
]
