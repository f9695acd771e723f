"""Zero-shot classification: class names → prompt-ensembled text classifier → top-k accuracy."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.metrics.classification import topk_accuracy
from polymodal.tasks.embed import embed_images, embed_texts

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {}.",
)


def zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """``(C, D)`` unit-norm class embeddings: per class, the mean of its normalised prompt embeddings (CLIP's
    prompt ensembling), renormalised."""
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a '{{}}' for the class name, got {list(templates)}")
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = F.normalize(embed_texts(model, tokenizer, prompts, progress=False), dim=-1)  # (C*T, D)
    embeddings = embeddings.view(len(class_names), len(templates), -1).mean(dim=1)  # (C, D)
    return F.normalize(embeddings, dim=-1)


def classify_images(
    model: torch.nn.Module,
    dataset: ImageTextSet,
    transform: Callable[[Image.Image], torch.Tensor],
    classifier: torch.Tensor,
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Cosine logits ``(N, C)`` of every image against the class embeddings."""
    images = embed_images(model, dataset, transform, batch_size=batch_size, progress=progress)
    return images @ classifier.T


def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    dataset: ImageTextSet,
    transform: Callable[[Image.Image], torch.Tensor],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) of zero-shot classification on a labelled set."""
    if not dataset.class_names:
        raise ValueError(f"{dataset.name} has no class names: zero-shot evaluation needs a labelled set")
    labels = [record.label for record in dataset.records]
    if any(label is None for label in labels):
        raise ValueError(f"{dataset.name}: some records have no label")
    model.eval()
    classifier = zero_shot_classifier(model, tokenizer, dataset.class_names, templates)
    logits = classify_images(model, dataset, transform, classifier, batch_size=batch_size, progress=progress)
    return topk_accuracy(logits, torch.tensor(labels), ks=(1, 5))
