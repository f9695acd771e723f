"""The VQA task's torch dataset and collate: one item per question, with its soft answer scores.

Items are ``(image_tensor, question, answers)``; the collate stacks images, tokenizes the questions when it has a
tokenizer (a question-only or multimodal model) and turns every question's annotator answers into a row of soft
scores over the answer vocabulary (``targets``). With frozen towers run once ahead of training
(:class:`CachedQuestionDataset`), the image and/or the question of an item is its tower's cached outputs instead
(a dict of rows), which the collate stacks into ``image_*`` / ``text_*`` keys.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.tower_rows import CachedTower, stack_rows
from polymodal.data.vqa import AnswerVocab, soft_target_tensor

__all__ = ["CachedQuestionDataset", "QuestionCollator", "QuestionDataset", "check_questions"]


def check_questions(dataset: ImageTextSet) -> None:
    """Raise a ValueError naming the first record without a question or answers."""
    for record in dataset.records:
        if not record.question or not record.answers:
            raise ValueError(f"{dataset.name}: record {record.key} (question id {record.question_id}) has no "
                             "question or no answers: a VQA set needs both")


class QuestionDataset(Dataset):
    """Yields ``(image_tensor, question, answers)`` for every record of a VQA set.

    Raises:
        ValueError: a record has no question or no answers (named by key and question id).
    """

    def __init__(self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor] | None) -> None:
        check_questions(dataset)
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str, tuple[str, ...]]:
        record = self.dataset.records[index]
        # A question-only model never looks at the pixels: skip decoding them.
        image = None if self.transform is None else self.transform(self.dataset.image(index))
        return image, record.question, record.answers


class CachedQuestionDataset(QuestionDataset):
    """:class:`QuestionDataset` whose image and/or question is a frozen tower's cached outputs.

    Args:
        images: the image tower's outputs, ``images.row(i)`` for record i; None: pixels through ``transform``
            (or no image, for a question-only model, when ``transform`` is None too).
        questions: the text tower's outputs, ``questions.row(i)`` for record i's question; None: the text.
    """

    def __init__(self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor] | None,
                 images: CachedTower | None = None, questions: CachedTower | None = None) -> None:
        super().__init__(dataset, None if images is not None else transform)
        for name, cached in (("image", images), ("question", questions)):
            if cached is not None and len(cached) != len(dataset):
                raise ValueError(f"{len(cached)} cached {name} rows for the {len(dataset)} records of {dataset.name}")
        self.images, self.questions = images, questions

    def __getitem__(self, index: int) -> tuple:
        image, question, answers = super().__getitem__(index)
        if self.images is not None:
            image = self.images.row(index)
        if self.questions is not None:
            question = self.questions.row(index)
        return image, question, answers


class QuestionCollator:
    """Items → ``{"targets"}`` plus ``image`` (when items carry pixels) and ``input_ids`` / ``attention_mask``
    (with a tokenizer); cached tower outputs (dict items) are stacked under their own keys instead."""

    def __init__(self, vocab: AnswerVocab, num_outputs: int, tokenizer: TextTokenizer | None = None) -> None:
        if len(vocab) > num_outputs:
            raise ValueError(f"{len(vocab)} answers do not fit {num_outputs} output slots")
        self.vocab, self.num_outputs, self.tokenizer = vocab, num_outputs, tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor | None, str, tuple[str, ...]]]) -> dict[str, torch.Tensor]:
        images, questions, answers = zip(*batch)
        targets = soft_target_tensor(answers, self.vocab)  # (B, len(vocab))
        # Slots past the vocabulary (a head wider than this data's answers) are never right.
        targets = torch.nn.functional.pad(targets, (0, self.num_outputs - targets.shape[1]))  # (B, num_outputs)
        out = {"targets": targets}
        if isinstance(images[0], dict):
            out.update(stack_rows(images))
        elif images[0] is not None:
            out["image"] = torch.stack(images)
        if isinstance(questions[0], dict):
            out.update(stack_rows(questions))
        elif self.tokenizer is not None:
            out.update(self.tokenizer(list(questions)))
        return out
