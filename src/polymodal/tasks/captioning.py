"""Captioning inference over a captioner: caption images, score a set with the field's metrics, write COCO
results, and the CIDEr-D reward self-critical training optimises."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.io import write_json
from polymodal.metrics.caption import caption_scores, cider_d, cider_document_frequency, ptb_tokenize
from polymodal.tasks.embed import ensure_eval

__all__ = ["CaptionReport", "CiderReward", "ImageIndexDataset", "caption_batches", "coco_image_id", "coco_results",
           "collate_image_index", "evaluate_captioning", "generate_captions", "write_coco_results"]


class ImageIndexDataset(Dataset):
    """Yields ``(image_tensor, index)`` for every record of a set: what captioning inference and self-critical
    training read (the references are looked up by index, never batched as text)."""

    def __init__(self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.dataset.image(index)), index


def collate_image_index(batch: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    images, indices = zip(*batch)
    return {"image": torch.stack(images), "image_index": torch.tensor(indices, dtype=torch.long)}


def caption_batches(dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor],
                    batch_size: int = 64) -> DataLoader:
    """The set's images in order, ``batch_size`` at a time (``{"image", "image_index"}``)."""
    return DataLoader(ImageIndexDataset(dataset, transform), batch_size=batch_size, collate_fn=collate_image_index)


@torch.no_grad()
def generate_captions(model: nn.Module, tokenizer: TextTokenizer, batches: Iterable[Mapping[str, torch.Tensor]],
                      **generation: Any) -> list[str]:
    """One caption per image of every batch (``image``, or a frozen tower's cached ``image_tokens``), decoded to
    text; ``generation`` overrides the model's defaults (``method``, ``beam_size``, ``max_length``, ...)."""
    ensure_eval(model)
    device = next(model.parameters()).device
    captions = []
    for batch in batches:
        inputs = {key: value.to(device) for key, value in batch.items() if key != "image_index"}
        decoded = model.generate(**inputs, **generation)
        captions.extend(tokenizer.decode(ids).strip() for ids in decoded.sequences)
    return captions


@dataclass
class CaptionReport:
    """A captioner scored on a set.

    Attributes:
        scores: ``BLEU-1`` .. ``BLEU-4``, ``ROUGE-L``, ``CIDEr-D`` (pycocoevalcap's scale: fractions, CIDEr-D x10).
        captions: the generated caption of every image, by record key.
    """

    scores: dict[str, float]
    captions: dict[str, str]


def evaluate_captioning(model: nn.Module, dataset: ImageTextSet, tokenizer: TextTokenizer,
                        transform: Callable[[Image.Image], torch.Tensor] | None, batch_size: int = 64,
                        batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
                        **generation: Any) -> CaptionReport:
    """Caption every image of ``dataset`` and score the captions against its references.

    ``batches``: the set's images in order as the model reads them, when not its pixels through ``transform``
    (e.g. a frozen tower's cached ``image_tokens``).
    """
    missing = [record.key for record in dataset.records if not record.captions]
    if missing:
        raise ValueError(f"{dataset.name}: {len(missing)} images have no reference caption (first: {missing[0]})")
    if batches is None:
        batches = caption_batches(dataset, transform, batch_size)
    generated = generate_captions(model, tokenizer, batches, **generation)
    keys = [record.key for record in dataset.records]
    captions = dict(zip(keys, generated))
    scores = caption_scores(captions, {record.key: list(record.captions) for record in dataset.records})
    return CaptionReport(scores, captions)


def coco_image_id(key: Any) -> int | str:
    """The COCO ``image_id`` of a record key: an integer key, or the number a COCO file name ends with
    (``COCO_val2014_000000391895.jpg`` -> 391895); any other key stays a string."""
    if isinstance(key, int):
        return key
    digits = re.search(r"(\d+)$", Path(str(key)).stem)
    return int(digits.group(1)) if digits else str(key)


def coco_results(captions: Mapping[Any, str]) -> list[dict[str, Any]]:
    """Captions as the COCO results format (``[{"image_id", "caption"}]``) that the official tools score."""
    results = [{"image_id": coco_image_id(key), "caption": caption} for key, caption in captions.items()]
    ids = [row["image_id"] for row in results]
    if len(set(ids)) != len(ids):
        raise ValueError("two images map to the same COCO image_id; name the images with unique numbers")
    return results


def write_coco_results(path: str | Path, captions: Mapping[Any, str]) -> None:
    """Write :func:`coco_results` as JSON (atomically)."""
    write_json(path, coco_results(captions))


class CiderReward:
    """CIDEr-D of generated captions against the references of the images they were generated for, with
    document frequencies from all the references (the training set's, in self-critical training).

    Args:
        references: per image index, its reference captions (raw; PTB-tokenised here once).
        decode: token ids -> text (the tokenizer's ``decode``).
    """

    def __init__(self, references: Sequence[Sequence[str]], decode: Callable[[list[int]], str]) -> None:
        if not references or any(not refs for refs in references):
            raise ValueError("every image needs at least one reference caption for a CIDEr-D reward")
        self.references = [[ptb_tokenize(text) for text in refs] for refs in references]
        self.document_frequency = cider_document_frequency(dict(enumerate(self.references)))
        self.decode = decode

    def __call__(self, image_index: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
        """``(len(sequences),)`` rewards; ``image_index[i]`` is the image of ``sequences[i]``."""
        candidates = {row: ptb_tokenize(self.decode(ids)) for row, ids in enumerate(sequences)}
        references = {row: self.references[index] for row, index in enumerate(image_index.tolist())}
        _, per_caption = cider_d(candidates, references, document_frequency=self.document_frequency)
        return torch.tensor(per_caption, dtype=torch.float32)
