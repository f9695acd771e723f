"""Zero-shot classification: class names → prompt-ensembled text classifier → labels of images, or top-k accuracy
of a labelled set."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.metrics.classification import topk_accuracy
from polymodal.tasks.embed import embed_images, embed_texts, model_device, require_embedding
from polymodal.tasks.prompt_templates import TEMPLATE_SETS, resolve_templates

DEFAULT_TEMPLATES = TEMPLATE_SETS["default"]


def zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    class_names: Sequence[str],
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """``(C, D)`` unit-norm class embeddings: per class, the mean of its normalised prompt embeddings (CLIP's
    prompt ensembling), renormalised. ``templates``: a template set by name (``imagenet``: CLIP's 80) or a list."""
    if not class_names:
        raise ValueError("class_names is empty")
    templates = resolve_templates(templates)
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
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
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


def class_probabilities(model: torch.nn.Module, cosine: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(N, C)`` → what the model's own loss reads as probabilities: a softmax over the
    classes of ``logit_scale * cos`` for a CLIP-trained model; for a SigLIP-trained one (it has a ``logit_bias``),
    an independent sigmoid of ``logit_scale * cos + logit_bias`` per class (so they need not sum to 1)."""
    logits = model.temperature().detach().float().cpu() * cosine
    bias = getattr(model, "logit_bias", None)
    if bias is not None:
        return torch.sigmoid(logits + bias.detach().float().cpu())
    return logits.softmax(dim=-1)


@torch.inference_mode()
def zero_shot_predict(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    transform: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    class_names: Sequence[str],
    templates: str | Sequence[str] = "imagenet",
    top_k: int = 5,
    batch_size: int = 32,
) -> list[list[tuple[str, float]]]:
    """Per image, its ``top_k`` labels and probabilities (:func:`class_probabilities`), likeliest first.

    The class embeddings follow CLIP's recipe: every label under every template, normalised, averaged per label
    (``templates="imagenet"``: the paper's 80 ImageNet templates).
    """
    if len(set(class_names)) != len(class_names):
        duplicated = next(name for name in class_names if list(class_names).count(name) > 1)
        raise ValueError(f"label {duplicated!r} is given twice")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    require_embedding(model, "encode_image")
    model.eval()
    classifier = zero_shot_classifier(model, tokenizer, class_names, templates)  # (C, D), on the CPU
    device = model_device(model)
    embeddings = torch.cat([
        model.encode_image(torch.stack([transform(image) for image in images[start:start + batch_size]]).to(device))
        .float().cpu()
        for start in range(0, len(images), batch_size)
    ])
    probabilities = class_probabilities(model, embeddings @ classifier.float().T)
    best = probabilities.topk(min(top_k, len(class_names)), dim=-1)
    return [[(class_names[index], float(probability)) for probability, index in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(best.values, best.indices)]
