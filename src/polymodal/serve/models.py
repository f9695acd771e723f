"""The models a service loads once at start-up, and their batched calls (what the micro-batchers run).

Each call takes a batch of requests and returns one result per request, computed in one forward pass: the
batched forms of :func:`polymodal.tasks.search.embed_queries`, :func:`polymodal.tasks.vqa.answer_questions`
and :func:`polymodal.tasks.captioning.generate_captions`, so a request gets the same answer alone or batched.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polymodal.model_io import LoadedModel, load_for_inference
from polymodal.models.registry import family_of
from polymodal.tasks.captioning import generate_captions
from polymodal.tasks.search import embed_queries
from polymodal.tasks.vqa import answer_questions

__all__ = ["Answers", "answer_batch", "caption_images", "embed_images", "embed_texts", "load_task_model"]

# (answer, probability) pairs, best first.
Answers = list[tuple[str, float]]


def load_task_model(checkpoint: str | Path, task: str, option: str, device: str) -> LoadedModel:
    """The model at ``checkpoint`` on ``device``, refused unless its family serves ``task``; the message names
    the option that gave it (``--vqa-checkpoint runs/x holds a contrastive model, not a vqa model``)."""
    loaded = load_for_inference(checkpoint, device)
    held = family_of(loaded.model.config).task
    if held != task:
        raise ValueError(f"{option} {checkpoint} holds a {held} model, not a {task} model")
    return loaded


def embed_texts(search: LoadedModel, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm query embeddings ``(Q, D)`` of ``texts``."""
    return embed_queries(search.model, search.tokenizer, texts=list(texts)).numpy()


def embed_images(search: LoadedModel, images: Sequence[Image.Image]) -> np.ndarray:
    """Unit-norm embeddings ``(Q, D)`` of ``images``."""
    return embed_queries(search.model, transform=search.transform, images=list(images)).numpy()


def answer_batch(vqa: LoadedModel, questions: Sequence[tuple[Image.Image, str, int]]) -> list[Answers]:
    """Per ``(image, question, k)``, the top ``k`` answers with their probabilities."""
    top_k = max(k for _, _, k in questions)
    answers = answer_questions(vqa.model, vqa.tokenizer, vqa.transform, [image for image, _, _ in questions],
                               [question for _, question, _ in questions], top_k)
    return [row[:k] for row, (_, _, k) in zip(answers, questions)]


def caption_images(captioner: LoadedModel, images: Sequence[Image.Image]) -> list[str]:
    """One caption per image, decoded as the model's ``generate`` settings say."""
    pixels = torch.stack([captioner.transform(image) for image in images])
    return generate_captions(captioner.model, captioner.tokenizer, [{"image": pixels}])
