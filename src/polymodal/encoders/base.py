"""The one output type every encoder returns, so fusion and projection code never asks which tower it got."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """What an encoder returns for one modality.

    Attributes:
        tokens: per-position features, shape ``(B, N, D)``; for CNNs the flattened feature map.
        pooled: one vector per sample, shape ``(B, D)``.
        mask: ``(B, N)`` bool, True where ``tokens`` holds a real position; None when every position is real.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor | None = None


def _train_locked(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a locked module: whatever a parent asks, it (and everything below it) stays in eval mode."""
    return nn.Module.train(module, False)


def freeze(module: nn.Module) -> nn.Module:
    """Lock ``module`` (a LiT-style frozen tower): no parameter requires grad, and it stays in eval mode when a
    parent calls ``.train()`` — BatchNorm keeps its statistics, dropout stays off. Returns ``module``.

    The one freezing mechanism of polymodal: every family and every pretrained tower uses it, and
    :func:`is_frozen` tells whether it was applied.
    """
    module.requires_grad_(False)
    # An instance attribute shadows nn.Module.train, so parents' recursive .train() calls reach it; a partial
    # of a module-level function (not a bound method) keeps the module picklable.
    module.train = functools.partial(_train_locked, module)
    module.frozen = True
    return module.eval()


def is_frozen(module: nn.Module) -> bool:
    """Whether :func:`freeze` locked ``module``."""
    return bool(getattr(module, "frozen", False))
