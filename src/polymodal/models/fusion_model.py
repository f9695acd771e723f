"""Fusion models: per-modality encoders → a fusion → a head, for VQA and multimodal classification.

Two families share this model (``"family": "vqa"`` and ``"family": "multimodal_classifier"``); they differ in the
data they train on (recipes/tasks.py) and the loss: VQA scores every answer of a vocabulary against soft targets
with binary cross-entropy, classification picks one class with softmax cross-entropy.

The fusion section says how the modalities meet (seed articles 001 §2–3, 003 §2.3)::

    "fusion": {"level": "early",  "kind": "concat", "dim": 256, "options": {...}}   head(fusion(features))
    "fusion": {"level": "late",   "combine": "gate"}                                 LateFusion(per-modality heads)
    "fusion": {"level": "hybrid", "kind": "gated_unit", "dim": 256, "combine": "weighted"}   both

``kind`` is any :func:`polymodal.fusion.build_fusion` kind and ``options`` its options; ``"image_positions":
"sincos"`` adds 2-D position embeddings to a CNN's image token grid (:class:`GridPositions`), ``"sincos_channels"``
appends them as extra channels (:class:`GridPositionChannels`). A model with only an ``image`` or only a ``text``
section is the single-modality baseline (image-only / question-only VQA): the fusion then sees one modality.

A frozen tower (``"frozen": true`` in its section) may be run once ahead of training: ``forward`` then takes its
cached outputs instead of pixels or token ids, ``{m}_pooled (B, F)`` and, where the fusion reads tokens
(:meth:`FusionModel.cached_parts`), ``{m}_tokens (B, N, F)`` + ``{m}_token_mask (B, N)``, for ``m`` = image, text.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.encoders.build import build_encoder
from polymodal.fusion import Fusion, LateFusion, build_fusion, pooled_features
from polymodal.layers.pos_embed import sincos_2d_pos_embed
from polymodal.losses import ClassificationLoss, VQALoss
from polymodal.models.family import LossOptions, ModelFamily
from polymodal.typed_config import ConfigError, dataclass_from_mapping

MODALITIES = ("image", "text")


@dataclass
class FusionSection:
    """The ``fusion`` section of a fusion model's config."""

    level: Literal["early", "late", "hybrid"] = "early"
    kind: str = "concat"
    dim: int = field(default=256, metadata={"min": 1})
    options: dict[str, Any] = field(default_factory=dict)
    combine: Literal["mean", "weighted", "gate"] = "mean"  # late and hybrid: how branch predictions combine
    # CNN towers emit a token grid without positions (a ViT's tokens carry their own): "sincos" adds MAE's fixed
    # 2-D table, times a learned per-channel scale, to the image tokens before fusion (GridPositions);
    # "sincos_channels" appends it as extra channels (GridPositionChannels).
    image_positions: Literal["none", "sincos", "sincos_channels"] = "none"
    # γ's starting value. 0 begins as the position-free model, which learns colour and shape fastest; on the
    # shapes world's relation questions γ then stayed near 0.03, positions never got in. 1 lets them in from the
    # start but slows everything else (docs/position_curriculum.md).
    image_positions_scale: float = 0.0
    # "sincos_channels": the table is appended as this many extra channels instead of added (content untouched).
    image_position_channels: int = field(default=64, metadata={"min": 4})


@dataclass
class FusionModelConfig:
    """A fusion model's config (a preset's JSON).

    Attributes:
        num_outputs: answer slots (VQA: the vocabulary's size at most) or classes.
        answers: VQA only, filled in by training: the answer of every output slot (HF's ``id2label``).
        class_names: classification only, filled in by training: the name of every class.
        head_norm: where the MLP head's LayerNorm sits: ``"after_act"`` (Linear, GELU, LayerNorm) or
            ``"before_act"`` (Linear, LayerNorm, GELU: ViLT's VQA classifier).
    """

    family: str
    num_outputs: int = field(metadata={"min": 1})
    fusion: dict[str, Any]
    description: str = ""
    image: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    head_hidden: int | None = field(default=None, metadata={"min": 1})
    dropout: float = field(default=0.1, metadata={"min": 0, "max": 1})
    answers: list[str] | None = None
    class_names: list[str] | None = None
    head_norm: Literal["after_act", "before_act"] = "after_act"


def classifier_head(width: int, hidden: int | None, outputs: int, dropout: float,
                    norm: Literal["after_act", "before_act"] = "after_act") -> nn.Module:
    """``(B, width) -> (B, outputs)``: a linear layer, or an MLP with one hidden GELU layer and a LayerNorm
    after the activation (Anderson et al. 2018; LXMERT) or before it (``norm="before_act"``: ViLT)."""
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, outputs))
    middle = [nn.GELU(), nn.LayerNorm(hidden)] if norm == "after_act" else [nn.LayerNorm(hidden), nn.GELU()]
    return nn.Sequential(nn.Linear(width, hidden), *middle, nn.Dropout(dropout), nn.Linear(hidden, outputs))


def grid_side(count: int) -> int:
    """The side of the square token grid ``count`` tokens make (row-major), or a ValueError."""
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"image_positions needs a square token grid; the image encoder gave {count} tokens")
    return side


class GridPositions(nn.Module):
    """``tokens + γ ⊙ P``: MAE's fixed 2-D sin-cos table ``P`` (row-major square grid) times a learned per-channel
    scale ``γ`` that starts at ``initial_scale`` (default zero).

    A frozen CNN's features are sparse non-negative maps (EfficientNet's ReLU6 lies in [0, 6]) that ``P`` at full
    strength (±1 in every channel) swamps: on the shapes world (EfficientNet-Lite0 tokens, cross-attention, 6,000
    scenes, 3 epochs) ``tokens + P`` reached 58.8% (colour questions 18.8%), ``tokens + γ ⊙ P`` 67.3% (59.7%).
    Starting from ``γ = 0`` the model begins as the position-free one and learns how much position each channel
    carries. The table is fixed, so cached tower outputs stay valid.
    """

    def __init__(self, width: int, initial_scale: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((width,), float(initial_scale)))

    def forward(self, output: EncoderOutput) -> EncoderOutput:
        side = grid_side(output.tokens.shape[1])
        table = sincos_2d_pos_embed(output.tokens.shape[2], (side, side)).to(output.tokens)
        return dataclasses.replace(output, tokens=output.tokens + self.scale.to(output.tokens) * table)


class GridPositionChannels(nn.Module):
    """``[tokens; P]``: MAE's fixed 2-D sin-cos table ``P`` (``channels`` wide, row-major square grid) appended to
    every image token, so positions reach the fusion without changing a single content channel.

    Added positions (:class:`GridPositions`) share the content's channels: starting at full strength they swamp a
    frozen CNN's sparse features, starting at zero they may never get in. Appended ones are neither: the fusion's
    input projection learns how much of each to read.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"image_position_channels must be a multiple of 4, got {channels}")
        self.channels = channels

    def forward(self, output: EncoderOutput) -> EncoderOutput:
        batch, side = output.tokens.shape[0], grid_side(output.tokens.shape[1])
        table = sincos_2d_pos_embed(self.channels, (side, side)).to(output.tokens)
        # A pooled vector has no position: it gets zeros, so every consumer of this modality sees one width (and
        # it is the same whether the tokens came along or only the cached pooled vector did).
        return dataclasses.replace(
            output, tokens=torch.cat([output.tokens, table.expand(batch, -1, -1)], dim=-1),
            pooled=torch.cat([output.pooled, output.pooled.new_zeros(batch, self.channels)], dim=-1))


class FusionModel(nn.Module):
    """``{image, input_ids, attention_mask} → logits (B, num_outputs)`` through encoders, fusion and heads.

    Args:
        encoders: one encoder per modality present (``"image"``: pixels; ``"text"``: token ids and mask).
        level: ``"early"``, ``"late"`` or ``"hybrid"`` (see the module docstring).
        fusion: the feature-level fusion (early and hybrid), None for late.
        heads: ``"fused"`` (early, hybrid) and one per modality (late, hybrid): each maps its features to logits.
        late: the decision-level combiner (late, hybrid), None for early.
        target_key: the batch key of the training targets (``"targets"``: VQA soft scores; ``"labels"``: classes),
            passed through to the loss.
        image_positions: adds 2-D positions to the image tokens before fusion, whether they come from the encoder
            or from a cache (None: the tokens go to the fusion as they are).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        level: str,
        fusion: Fusion | None,
        heads: dict[str, nn.Module],
        late: LateFusion | None,
        target_key: str,
        image_positions: GridPositions | GridPositionChannels | None = None,
    ) -> None:
        super().__init__()
        self.image_positions = image_positions
        self.encoders = nn.ModuleDict(encoders)
        self.level = level
        self.fusion = fusion
        self.heads = nn.ModuleDict(heads)
        self.late = late
        self.target_key = target_key

    def cached_parts(self, modality: str) -> tuple[str, ...]:
        """What a cache of ``modality``'s frozen tower must keep for this model: ``"pooled"`` always (late heads,
        gates and pooled-vector fusions read it), plus ``"tokens"`` (with their mask) when the fusion reads them."""
        reads_tokens = self.fusion is not None and self.fusion.reads_tokens(modality)
        return ("pooled", "tokens") if reads_tokens else ("pooled",)

    def _cached(self, modality: str, tokens: torch.Tensor | None, mask: torch.Tensor | None,
                pooled: torch.Tensor | None) -> EncoderOutput | None:
        """A modality's cached tower outputs as its ``EncoderOutput`` (None when none were given)."""
        if tokens is None and pooled is None:
            return None
        if pooled is None:
            raise ValueError(f"cached {modality} tower outputs need `{modality}_pooled`")
        if tokens is None:
            if "tokens" in self.cached_parts(modality):
                raise ValueError(f"this model's fusion reads {modality} tokens: pass `{modality}_tokens`")
            return pooled_features({modality: pooled})[modality]  # never read: one token, the pooled vector
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=mask)

    def encode(self, image: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None, *, image_tokens: torch.Tensor | None = None,
               image_token_mask: torch.Tensor | None = None, image_pooled: torch.Tensor | None = None,
               text_tokens: torch.Tensor | None = None, text_token_mask: torch.Tensor | None = None,
               text_pooled: torch.Tensor | None = None) -> dict[str, EncoderOutput]:
        """Each present modality's ``EncoderOutput``: its encoder's, or its frozen tower's cached outputs."""
        features = {}
        if "image" in self.encoders:
            cached = self._cached("image", image_tokens, image_token_mask, image_pooled)
            if cached is None and image is None:
                raise ValueError("this model reads images: pass `image` (or its cached `image_pooled`)")
            features["image"] = cached if cached is not None else self.encoders["image"](image)
        if "text" in self.encoders:
            cached = self._cached("text", text_tokens, text_token_mask, text_pooled)
            if cached is None and input_ids is None:
                raise ValueError("this model reads text: pass `input_ids` (and `attention_mask`), or its cached "
                                 "`text_pooled`")
            features["text"] = cached if cached is not None else self.encoders["text"](input_ids, attention_mask)
        if self.image_positions is not None and "image" in features:
            features["image"] = self.image_positions(features["image"])
        return features

    def forward(
        self,
        image: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **cached: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``logits (B, num_outputs)``, plus the batch's ``targets`` or ``labels`` for the loss when given.
        ``cached``: frozen towers' outputs in place of ``image`` / ``input_ids`` (see :meth:`encode`)."""
        features = self.encode(image, input_ids, attention_mask, **cached)
        branch_logits = {}
        if self.fusion is not None:
            branch_logits["fused"] = self.heads["fused"](self.fusion(features).fused)
        if self.late is None:
            logits = branch_logits["fused"]
        else:
            pooled = {name: output.pooled for name, output in features.items()}
            branch_logits.update({name: self.heads[name](vector) for name, vector in pooled.items()})
            logits = self.late(branch_logits, pooled if self.late.mode == "gate" else None)
        output = {"logits": logits}
        target = targets if self.target_key == "targets" else labels
        if target is not None:
            output[self.target_key] = target
        return output


def build_fusion_model(config: dict[str, Any], where: str = "model config", for_loading: bool = False) -> FusionModel:
    """Build a :class:`FusionModel` from its config (see :class:`FusionModelConfig`)."""
    spec = dataclass_from_mapping(FusionModelConfig, config, where)
    section = dataclass_from_mapping(FusionSection, spec.fusion, where, prefix="fusion.")
    built = {name: build_encoder(name, getattr(spec, name), where) for name in MODALITIES
             if getattr(spec, name) is not None}
    if not built:
        raise ConfigError(f"{where}: a fusion model needs an `image` or a `text` section (or both)")
    widths = {name: encoder.encoder.width for name, encoder in built.items()}
    positions = None
    if "image_position_channels" in spec.fusion and section.image_positions != "sincos_channels":
        raise ConfigError(f"{where}: fusion.image_position_channels applies to image_positions 'sincos_channels' only, "
                          f"not {section.image_positions!r}")
    if section.image_positions != "none":
        if "image" not in widths:
            raise ConfigError(f"{where}: fusion.image_positions = {section.image_positions!r} needs an `image` section")
        if section.image_positions == "sincos":
            positions = GridPositions(widths["image"], section.image_positions_scale)
        else:  # what the fusion and heads see is wider than the tower's output
            try:
                positions = GridPositionChannels(section.image_position_channels)
            except ValueError as error:
                raise ConfigError(f"{where}: fusion.{error}") from None
            widths["image"] += section.image_position_channels
    fusion, late, heads = None, None, {}
    if section.level in ("early", "hybrid"):
        try:
            fusion = build_fusion(section.kind, widths, section.dim, **section.options)
        except ValueError as error:
            raise ConfigError(f"{where}: fusion: {error}") from None
        heads["fused"] = classifier_head(section.dim, spec.head_hidden, spec.num_outputs, spec.dropout,
                                         spec.head_norm)
    if section.level in ("late", "hybrid"):
        heads.update({name: classifier_head(width, spec.head_hidden, spec.num_outputs, spec.dropout, spec.head_norm)
                      for name, width in widths.items()})
        branches = list(widths) + (["fused"] if fusion is not None else [])
        late = LateFusion(branches, section.combine, widths if section.combine == "gate" else None)
    target_key = "targets" if spec.family == VQA.name else "labels"
    model = FusionModel({name: encoder.encoder for name, encoder in built.items()}, section.level, fusion, heads,
                        late, target_key, positions)
    model.config = copy.deepcopy(config)
    model.preprocess = built["image"].preprocess if "image" in built else None
    return model


def build_vqa_loss(config: dict[str, Any], options: LossOptions) -> nn.Module:
    return VQALoss()


def build_classification_loss(config: dict[str, Any], options: LossOptions) -> nn.Module:
    return ClassificationLoss(options.label_smoothing)


VQA = ModelFamily("vqa", build_fusion_model, build_vqa_loss, task="vqa")
MULTIMODAL_CLASSIFIER = ModelFamily("multimodal_classifier", build_fusion_model, build_classification_loss,
                                    task="classification")
