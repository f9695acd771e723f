"""Supervised classification evaluation of any model whose output holds ``logits``."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from polymodal.data.labelled import LabelledImageCollator, LabelledImageDataset
from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.metrics.classification import topk_accuracy

__all__ = ["evaluate_classification", "evaluate_labelled_set", "labelled_loader"]


def labelled_loader(
    dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor], tokenizer: TextTokenizer | None,
    batch_size: int = 64,
) -> DataLoader:
    """Batches of a labelled set in its order: ``image``, ``labels`` and, with a tokenizer, the captions' tokens."""
    # A private generator: evaluation in the middle of training must not advance the global RNG.
    return DataLoader(LabelledImageDataset(dataset, transform), batch_size=batch_size,
                      collate_fn=LabelledImageCollator(tokenizer), generator=torch.Generator().manual_seed(0))


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


def evaluate_labelled_set(
    model: nn.Module, tokenizer: TextTokenizer | None, dataset: ImageTextSet,
    transform: Callable[[Image.Image], torch.Tensor], batch_size: int = 64,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) of a classifier on a labelled set."""
    return evaluate_classification(model, labelled_loader(dataset, transform, tokenizer, batch_size))
