"""Queries → a vector index: embed text or image queries with a dual encoder and search."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.index import SearchHit, VectorIndex
from polymodal.tasks.embed import ensure_eval, model_device, require_embedding

__all__ = ["embed_queries", "search_index"]


@torch.no_grad()
def embed_queries(
    model: nn.Module,
    tokenizer: TextTokenizer | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    texts: Sequence[str] | None = None,
    images: Sequence[Image.Image] | None = None,
) -> torch.Tensor:
    """Unit-norm query embeddings ``(Q, D)`` (float32, CPU) of ``texts`` (with ``tokenizer``) or ``images``
    (with ``transform``)."""
    if (texts is None) == (images is None):
        raise ValueError("give either texts or images to embed as queries")
    require_embedding(model, "encode_text" if texts is not None else "encode_image")
    ensure_eval(model)
    device = model_device(model)
    if texts is not None:
        if not texts or any(not text.strip() for text in texts):
            raise ValueError("a text query must not be empty")
        if tokenizer is None:
            raise ValueError("text queries need the model's tokenizer")
        tokens = {key: value.to(device) for key, value in tokenizer(list(texts)).items()}
        return model.encode_text(**tokens).float().cpu()
    if transform is None:
        raise ValueError("image queries need the model's image transform")
    pixels = torch.stack([transform(image) for image in images]).to(device)
    return model.encode_image(pixels).float().cpu()


def search_index(
    index: VectorIndex,
    model: nn.Module,
    tokenizer: TextTokenizer | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    texts: Sequence[str] | None = None,
    images: Sequence[Image.Image] | None = None,
    k: int = 5,
) -> list[list[SearchHit]]:
    """The ``k`` nearest items of ``index`` for each text or image query, best first."""
    return index.search(embed_queries(model, tokenizer, transform, texts, images).numpy(), k=k)
