"""Contrastive losses: CLIP (softmax InfoNCE), SigLIP (pairwise sigmoid), NT-Xent (SimCLR), InfoNCE with negatives.

Each loss is a function plus a thin ``nn.Module`` holding its hyper-parameters, so the training loop can do
``loss(**model_out)`` while tests and notebooks call the function directly.

CLIP and SigLIP read the world size when called (``polymodal.distributed``): in a single process they see the
local batch; under ``torchrun`` they gather features from every rank, and row i's positive sits at column
``rank * local_batch + i`` of the gathered batch (open_clip's rank-offset labels). Under DDP, which averages
parameter gradients over ranks, the gradients then equal those of one process over the concatenated batch.
NT-Xent and InfoNCE stay per-rank.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polymodal import distributed

__all__ = [
    "ClipLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SigLipLoss",
    "clip_loss",
    "infonce_loss",
    "nt_xent_loss",
    "siglip_loss",
]


def _check_matrix(name: str, tensor: torch.Tensor) -> None:
    if tensor.ndim != 2:
        raise ValueError(f"{name} must have shape (B, D), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got {tuple(tensor.shape)}")


def _check_pair(first_name: str, first: torch.Tensor, second_name: str, second: torch.Tensor) -> None:
    """Both (B, D) with the same B and D: row i of one is the positive of row i of the other."""
    _check_matrix(first_name, first)
    _check_matrix(second_name, second)
    if first.shape != second.shape:
        raise ValueError(
            f"{first_name} and {second_name} must have the same shape (B, D), "
            f"got {tuple(first.shape)} and {tuple(second.shape)}"
        )


def _check_scalar(name: str, value: torch.Tensor | float) -> None:
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    label_smoothing: float = 0.0,
    *,
    local_loss: bool = False,
    gather_with_grad: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP: mean of the image→text and text→image cross-entropies.

    In a single process the two flags change nothing. With W > 1 ranks of local batch B:

    - global loss (default): every rank builds the ``(W·B, W·B)`` logits of the whole batch; each rank's loss
      equals the single-process loss over the concatenated batch.
    - ``local_loss=True``: the B local rows against all W·B columns, ``(B, W·B)`` logits (W times less
      memory); the mean over ranks of the per-rank losses equals the single-process loss.
    - ``gather_with_grad=True`` (default): gradients reach every rank's features from every rank's loss, so DDP's
      average gives exactly the single-process gradients in both modes. ``False`` gathers constants except the
      local slice (:func:`polymodal.distributed.gather_no_grad`): for the global loss parameter gradients come
      out ``1 / W`` of the single-process ones; for the local loss they are an approximation.

    Args:
        image_features: ``(B, D)``, normally L2-normalised by the model; row i pairs with ``text_features[i]``.
        text_features: ``(B, D)``.
        logit_scale: scalar, already exponentiated (the model stores ``log`` of it and clamps at ln 100).
        label_smoothing: passed to ``F.cross_entropy`` for both directions.
        local_loss: local rows against gathered columns instead of the whole gathered batch.
        gather_with_grad: differentiate through other ranks' copies of the features.

    Returns:
        0-d tensor.
    """
    _check_pair("image_features", image_features, "text_features", text_features)
    _check_scalar("logit_scale", logit_scale)
    gather = distributed.gather_with_grad if gather_with_grad else distributed.gather_no_grad
    all_image_features, all_text_features = gather(image_features), gather(text_features)  # (W·B, D) each
    if local_loss:
        logits_per_image = logit_scale * image_features @ all_text_features.T  # (B, W·B): local image rows
        logits_per_text = logit_scale * text_features @ all_image_features.T  # (B, W·B): local text rows
        labels = distributed.rank_offset_labels(image_features.shape[0], distributed.get_rank(), image_features.device)
    else:
        logits_per_image = logit_scale * all_image_features @ all_text_features.T  # (W·B, W·B): row = image
        logits_per_text = logits_per_image.T
        labels = torch.arange(all_image_features.shape[0], device=image_features.device)
    image_to_text = F.cross_entropy(logits_per_image, labels, label_smoothing=label_smoothing)
    text_to_image = F.cross_entropy(logits_per_text, labels, label_smoothing=label_smoothing)
    return (image_to_text + text_to_image) / 2


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
) -> torch.Tensor:
    """SigLIP pairwise sigmoid loss: every (image, text) pair is an independent binary match / no-match.

    ``-logsigmoid(label * (logit_scale * image @ text.T + logit_bias))`` summed over the ``B × B`` pairs, with
    label +1 on the diagonal and -1 elsewhere, divided by B (as in the SigLIP paper and open_clip).

    With W > 1 ranks each rank scores its B images against the texts of all ranks, gathered with gradient
    (``(B, W·B)`` pairs; open_clip passes text chunks round the ring instead, which saves memory, not math):
    the mean over ranks of the per-rank losses equals the single-process loss over the concatenated batch, and
    DDP's gradient average equals its gradients.

    Args:
        image_features: ``(B, D)``.
        text_features: ``(B, D)``.
        logit_scale: scalar, already exponentiated.
        logit_bias: scalar; starts very negative so the many negative pairs do not dominate early training.

    Returns:
        0-d tensor.
    """
    _check_pair("image_features", image_features, "text_features", text_features)
    _check_scalar("logit_scale", logit_scale)
    _check_scalar("logit_bias", logit_bias)
    all_text_features = distributed.gather_with_grad(text_features)  # (W·B, D)
    logits = logit_scale * image_features @ all_text_features.T + logit_bias  # (B, W·B)
    num_rows, num_columns = logits.shape
    positives = distributed.rank_offset_labels(num_rows, distributed.get_rank(), logits.device)  # (B,)
    # 2 * one_hot - 1: +1 for the matching pair, -1 for every other pair, so one logsigmoid covers both cases.
    labels = 2 * F.one_hot(positives, num_columns).to(logits.dtype) - 1  # (B, W·B)
    return -F.logsigmoid(labels * logits).sum() / num_rows


def nt_xent_loss(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR): two views of N samples, each of the 2N views must find its partner among the rest.

    For anchor a with positive p(a), ``l(a) = -log(exp(s(a,p)/τ) / Σ_{k≠a} exp(s(a,k)/τ))`` with s the cosine
    similarity; the loss is the mean of l over all 2N anchors.

    Args:
        z_i: ``(N, D)`` first view; need not be normalised (cosine similarity normalises).
        z_j: ``(N, D)`` second view; ``z_j[n]`` is the positive of ``z_i[n]`` and vice versa.
        temperature: τ > 0.

    Returns:
        0-d tensor.
    """
    _check_pair("z_i", z_i, "z_j", z_j)
    _check_temperature(temperature)
    num_samples = z_i.shape[0]
    views = F.normalize(torch.cat([z_i, z_j]), dim=-1)  # (2N, D)
    logits = views @ views.T / temperature  # (2N, 2N)
    # An anchor is never its own candidate: -inf drops the k == a term from the softmax denominator.
    self_mask = torch.eye(2 * num_samples, device=logits.device, dtype=torch.bool)
    logits = logits.masked_fill(self_mask, float("-inf"))
    # View n of z_i pairs with row N + n, and row N + n pairs back with row n.
    partner = torch.arange(2 * num_samples, device=logits.device).roll(num_samples)  # (2N,)
    return F.cross_entropy(logits, partner)


def infonce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE with explicit negatives: each query must pick its positive over the given negatives.

    Logits are cosine similarities divided by the temperature; the positive sits at index 0 of each row, so the
    loss is ``F.cross_entropy`` with target 0, averaged over the B queries.

    Args:
        query: ``(B, D)``.
        positive: ``(B, D)``; ``positive[b]`` is the positive of ``query[b]``.
        negatives: either ``(B, K, D)``, K negatives for each query, or ``(M, D)``, M negatives shared by all.
        temperature: τ > 0.

    Returns:
        0-d tensor.
    """
    _check_pair("query", query, "positive", positive)
    _check_temperature(temperature)
    batch, dim = query.shape
    query = F.normalize(query, dim=-1)
    positive = F.normalize(positive, dim=-1)
    negatives = F.normalize(negatives, dim=-1)
    if negatives.ndim == 3 and negatives.shape[0] == batch and negatives.shape[2] == dim:
        negative_logits = torch.einsum("bd,bkd->bk", query, negatives)  # (B, K)
    elif negatives.ndim == 2 and negatives.shape[1] == dim:
        negative_logits = query @ negatives.T  # (B, M)
    else:
        raise ValueError(
            f"negatives must have shape (B, K, D) = ({batch}, K, {dim}) or (M, D) = (M, {dim}) "
            f"for query of shape {tuple(query.shape)}, got {tuple(negatives.shape)}"
        )
    positive_logits = (query * positive).sum(dim=-1, keepdim=True)  # (B, 1)
    logits = torch.cat([positive_logits, negative_logits], dim=1) / temperature  # (B, 1 + K)
    targets = torch.zeros(batch, device=logits.device, dtype=torch.long)
    return F.cross_entropy(logits, targets)


class ClipLoss(nn.Module):
    """Module form of :func:`clip_loss`; consumes a CLIP-style model's output dict as keywords.

    Holds only hyper-parameters: rank and world size are read on every call, never stored.
    """

    def __init__(self, label_smoothing: float = 0.0, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
    ) -> torch.Tensor:
        return clip_loss(
            image_features,
            text_features,
            logit_scale,
            label_smoothing=self.label_smoothing,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
        )

    def extra_repr(self) -> str:
        return (
            f"label_smoothing={self.label_smoothing}, local_loss={self.local_loss}, "
            f"gather_with_grad={self.gather_with_grad}"
        )


class SigLipLoss(nn.Module):
    """Module form of :func:`siglip_loss`; consumes a SigLIP model's output dict (which adds ``logit_bias``).

    Always a local loss with text features gathered with gradient (see :func:`siglip_loss`).
    """

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float,
    ) -> torch.Tensor:
        return siglip_loss(image_features, text_features, logit_scale, logit_bias)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss` with a fixed temperature."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z_i, z_j, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class InfoNCELoss(nn.Module):
    """Module form of :func:`infonce_loss` with a fixed temperature."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return infonce_loss(query, positive, negatives, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
