"""Losses that consume model outputs: each is a function plus an ``nn.Module`` holding its hyper-parameters."""
from polymodal.losses.classification import ClassificationLoss, VQALoss, vqa_soft_bce
from polymodal.losses.contrastive import (
    ClipLoss,
    InfoNCELoss,
    NTXentLoss,
    SigLipLoss,
    clip_loss,
    infonce_loss,
    nt_xent_loss,
    siglip_loss,
)

__all__ = [
    "ClassificationLoss",
    "VQALoss",
    "vqa_soft_bce",
    "ClipLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SigLipLoss",
    "clip_loss",
    "infonce_loss",
    "nt_xent_loss",
    "siglip_loss",
]
