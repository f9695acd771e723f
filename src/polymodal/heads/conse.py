"""ConSE: convex combination of semantic embeddings (Norouzi et al. 2014), a training-free image -> text bridge.

An ImageNet classifier says *which classes* an image looks like; a text tower says *where those class names
sit* in its embedding space. ConSE maps an image to the probability-weighted mean of the embeddings of its
top-T classes, so the image lands in the text tower's space and can be compared with any caption by cosine,
with no paired image-text training at all.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

def imagenet_class_names() -> list[str]:
    """The 1000 readable ImageNet-1k class names in logit order (from torchvision's weight metadata, offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def build_imagenet_class_embeddings(
    encode_text: Callable[[list[str]], torch.Tensor],
    templates: Sequence[str],
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Embed every class name under every template; return ``(C, D)`` L2-normalised class embeddings.

    Each template's embeddings are normalised before averaging so that no phrasing dominates by norm; the
    mean is renormalised because a mean of unit vectors is shorter than one.

    Args:
        encode_text: maps N strings to ``(N, D)`` embeddings (e.g. ``MiniLMTextTower.encode_text``).
        templates: format strings with one ``{}`` for the class name (prompt ensembling, as CLIP does for
            zero-shot: a bare class name is a poor "sentence" for a sentence encoder, and averaging several
            phrasings smooths out the quirks of any single one).
        class_names: defaults to ``imagenet_class_names()``.
    """
    names = list(class_names) if class_names is not None else imagenet_class_names()
    if not templates:
        raise ValueError("need at least one template")
    total = None
    for template in templates:
        embeddings = F.normalize(encode_text([template.format(name) for name in names]).float(), dim=-1)
        total = embeddings if total is None else total + embeddings
    return F.normalize(total, dim=-1)


class ConSEBridge(nn.Module):
    """``logits (B, C) -> (B, D)``: the ConSE embedding of each image in the text tower's space.

    ``p = softmax(logits / temperature)``; keep the ``top_k`` largest probabilities, renormalise them to
    sum to one, and return ``sum_t p_t * s_t`` over those classes, where ``s_t`` is the unit-norm text
    embedding of class ``t``. The output is a convex combination of unit vectors, so its norm is <= 1;
    L2-normalise it before cosine retrieval.

    Args:
        class_text_embeddings: ``(C, D)`` text embeddings of the C class names (normalised here, kept as a
            buffer so ``.to(device)`` and ``state_dict`` carry them).
        top_k: T, the number of most probable classes combined (10 in the paper).
        temperature: divides the logits before the softmax; above 1 spreads weight over more of the T classes.
    """

    def __init__(self, class_text_embeddings: torch.Tensor, top_k: int = 10, temperature: float = 1.0) -> None:
        super().__init__()
        if class_text_embeddings.ndim != 2:
            raise ValueError(f"class_text_embeddings must be (C, D), got {tuple(class_text_embeddings.shape)}")
        num_classes = class_text_embeddings.shape[0]
        if not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be in [1, {num_classes}], got {top_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.top_k = top_k
        self.temperature = temperature
        self.register_buffer("class_embeddings", F.normalize(class_text_embeddings.detach().float(), dim=-1))

    @property
    def width(self) -> int:
        """Dimension of the output (the text tower's embedding size)."""
        return self.class_embeddings.shape[1]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.class_embeddings.shape[0]:
            raise ValueError(f"expected {self.class_embeddings.shape[0]} class logits, got {logits.shape[-1]}")
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)  # (B, C)
        top_probs, top_index = probs.topk(self.top_k, dim=-1)  # (B, T) each
        weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (B, T), rows sum to 1
        class_embeddings = self.class_embeddings[top_index]  # (B, T, D)
        return torch.einsum("bt,btd->bd", weights, class_embeddings)
