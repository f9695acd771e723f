"""The one interface every feature-level (early) fusion implements.

A fusion maps per-modality encoder outputs to one joint representation::

    {"image": EncoderOutput, "text": EncoderOutput, ...}  ──►  Fusion  ──►  FusionOutput(fused (B, dim), ...)

Modalities may have different widths ``D_m``; each fusion is built with ``input_dims`` (ordered: the order is the
order of concatenations and of ``FusionOutput.weights``) and an output width ``dim``. Families that only read
``pooled`` set ``uses_tokens = False`` so they can run on cached pooled vectors (see :func:`pooled_features`).
Decision-level (late) fusion of logits is a different interface: :class:`polymodal.fusion.late.LateFusion`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.layers.pooling import first_token, masked_mean


@dataclass(frozen=True)
class FusionOutput:
    """What every fusion returns.

    Attributes:
        fused: the joint representation, ``(B, dim)``.
        tokens: joint per-position features ``(B, N, dim)`` for families that keep a sequence (FiLM,
            cross-attention, single-stream, co-attention); None otherwise.
        mask: ``(B, N)`` bool, True = real position of ``tokens``; None when every position is real or when
            there are no tokens.
        weights: ``(B, M)`` per-modality weights in ``input_dims`` order, summing to 1 over M, for families that
            weight whole modalities (attention-weighted); None otherwise.
    """

    fused: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    weights: torch.Tensor | None = None


def check_modalities(given: Iterable[str], expected: Iterable[str], what: str = "modality") -> None:
    """Raise a ValueError naming the missing and unexpected names unless ``given`` and ``expected`` match as sets."""
    given, expected = list(given), list(expected)
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    if missing or extra:
        raise ValueError(f"missing {what} {missing}, unexpected {what} {extra}; configured: {expected}")


def check_choice(option: str, value: str, choices: Iterable[str]) -> None:
    """Raise a ValueError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not one of {choices}")


def check_roles(input_dims: Mapping[str, int], **roles: str) -> None:
    """For families that give each modality a role (``condition="text", target="image"``): the roles must name
    distinct modalities that are exactly the configured ones, so no modality is silently ignored."""
    if len(set(roles.values())) != len(roles):
        raise ValueError(f"roles must name distinct modalities, got {roles}")
    unknown = {role: name for role, name in roles.items() if name not in input_dims}
    unassigned = [name for name in input_dims if name not in roles.values()]
    if unknown or unassigned:
        raise ValueError(
            f"roles {roles} must name exactly the configured modalities {list(input_dims)}: "
            f"unknown {unknown}, without a role {unassigned}"
        )


def pooled_features(pooled: Mapping[str, torch.Tensor]) -> dict[str, EncoderOutput]:
    """Wrap cached pooled vectors ``(B, D_m)`` as encoder outputs for families with ``uses_tokens = False``.

    The single token is the pooled vector itself, so a family that did read tokens would still get valid input.
    """
    return {name: EncoderOutput(tokens=vector[:, None], pooled=vector) for name, vector in pooled.items()}


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor | None, pool: str) -> torch.Tensor:
    """``(B, N, D) -> (B, D)``: ``"mean"`` over real positions or the ``"first"`` (CLS-like) position."""
    return first_token(tokens) if pool == "first" else masked_mean(tokens, mask)


def concat_masks(tokens: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Key padding mask ``(B, Σ N_i)`` of ``torch.cat(tokens, dim=1)``: None when no part has a mask; a part
    without one is all real."""
    if all(mask is None for mask in masks):
        return None
    return torch.cat(
        [torch.ones(part.shape[:2], dtype=torch.bool, device=part.device) if mask is None else mask.bool()
         for part, mask in zip(tokens, masks, strict=True)],
        dim=1,
    )


def bool_mask(output: EncoderOutput) -> torch.Tensor | None:
    """The output's padding mask as bool (encoders may hand over 0/1 integers), or None."""
    return None if output.mask is None else output.mask.bool()


class Fusion(nn.Module):
    """Base class: validates the modalities, then calls :meth:`fuse`.

    Attributes:
        input_dims: ordered ``{modality: width}``.
        dim: output width.
        uses_tokens: whether :meth:`fuse` reads ``tokens``/``mask``; False means only ``pooled`` is read.
    """

    uses_tokens: bool = False

    def __init__(self, input_dims: Mapping[str, int], dim: int) -> None:
        super().__init__()
        if not input_dims:
            raise ValueError("input_dims must name at least one modality")
        if dim <= 0 or any(width <= 0 for width in input_dims.values()):
            raise ValueError(f"widths must be positive, got dim={dim}, input_dims={dict(input_dims)}")
        self.input_dims = dict(input_dims)
        self.dim = dim

    @property
    def modalities(self) -> list[str]:
        """Modality names in configured order."""
        return list(self.input_dims)

    def check(self, features: Mapping[str, EncoderOutput]) -> None:
        """Raise a ValueError if ``features`` lacks a configured modality, has an extra one, or a width differs."""
        check_modalities(features, self.input_dims)
        for name, width in self.input_dims.items():
            output = features[name]
            got = (output.tokens.shape[-1], output.pooled.shape[-1])
            if got != (width, width):
                raise ValueError(f"modality {name!r}: tokens/pooled widths {got}, configured {width}")

    def reads_tokens(self, modality: str) -> bool:
        """Whether :meth:`fuse` reads ``modality``'s ``tokens``/``mask`` (else only its ``pooled``): what a cache of
        frozen-tower outputs must keep for it."""
        return self.uses_tokens

    def pooled(self, features: Mapping[str, EncoderOutput]) -> list[torch.Tensor]:
        """The pooled vectors ``(B, D_m)`` in configured order."""
        return [features[name].pooled for name in self.input_dims]

    def forward(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        """Fuse ``features`` (keyed by modality) into a :class:`FusionOutput`."""
        self.check(features)
        return self.fuse(features)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        """The family's computation on already-checked features."""
        raise NotImplementedError
