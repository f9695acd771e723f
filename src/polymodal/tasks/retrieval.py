"""Image↔text retrieval evaluation of a dual encoder on an :class:`ImageTextSet`."""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.metrics.retrieval import retrieval_metrics
from polymodal.tasks.embed import all_captions, embed_images, embed_texts


def retrieval_from_embeddings(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, dataset: ImageTextSet
) -> dict[str, float]:
    """R@1/5/10 and median rank both ways; a hit is an item of the query's ``group`` (the same scene)."""
    _, text_groups, _ = all_captions(dataset)
    similarity = image_embeddings @ text_embeddings.T  # (N_images, N_captions)
    return retrieval_metrics(similarity, [r.group for r in dataset.records], text_groups)


def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    dataset: ImageTextSet,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int = 64,
    precision: str = "fp32",
    progress: bool = True,
) -> dict[str, float]:
    """Embed every image and every caption of ``dataset`` and score retrieval in both directions."""
    model.eval()
    captions, _, _ = all_captions(dataset)
    images = embed_images(model, dataset, transform, batch_size=batch_size, precision=precision, progress=progress)
    texts = embed_texts(model, tokenizer, captions, precision=precision, progress=progress)
    return retrieval_from_embeddings(images, texts, dataset)
