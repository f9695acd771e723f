"""Supervised classification evaluation of any model whose output holds ``logits``."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from polymodal.metrics.classification import topk_accuracy

__all__ = ["evaluate_classification"]


@torch.no_grad()
def evaluate_classification(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy (percent) of ``model(**batch)["logits"]`` against each batch's ``labels``.

    Args:
        batches: the model's forward keywords, ``labels (B,)`` included (the loader of a labelled set).
    """
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in batches:
        output = model(**{key: value.to(device) for key, value in batch.items()})
        if "logits" not in output:
            raise ValueError(f"{type(model).__name__} returned {sorted(output)}: classification needs 'logits'")
        logits.append(output["logits"].float().cpu())
        labels.append(batch["labels"])
    if not logits:
        raise ValueError("no batches to evaluate")
    return topk_accuracy(torch.cat(logits), torch.cat(labels), ks)
