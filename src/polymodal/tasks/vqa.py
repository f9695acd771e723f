"""VQA inference over any model that scores a fixed answer list: answer one question, or a whole set and score
it with the official accuracy."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from polymodal.data.questions import QuestionCollator, QuestionDataset
from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.vqa import AnswerVocab
from polymodal.metrics.vqa import VQAReport, vqa_report
from polymodal.tasks.embed import ensure_eval

__all__ = ["answer_question", "answer_questions", "answer_vocab_of", "evaluate_vqa", "predict_answers",
           "question_loader", "vqa_metrics"]


def answer_vocab_of(model: nn.Module) -> AnswerVocab:
    """The answers a VQA model's output slots stand for (``config["answers"]``, filled in by training)."""
    answers = getattr(model, "config", {}).get("answers")
    if not answers:
        raise ValueError("this model has no answer list (config 'answers'): it is not a trained VQA model")
    return AnswerVocab(tuple(answers))


def question_loader(
    dataset: ImageTextSet, model: nn.Module, transform: Callable[[Image.Image], torch.Tensor] | None,
    tokenizer: TextTokenizer | None, batch_size: int = 64,
) -> DataLoader:
    """Batches of a VQA set in its order, with what ``model`` reads (pixels only if it has an image tower)."""
    reads_images = transform is not None and model.preprocess is not None
    collate = QuestionCollator(answer_vocab_of(model), model.config["num_outputs"], tokenizer)
    return DataLoader(QuestionDataset(dataset, transform if reads_images else None), batch_size=batch_size,
                      collate_fn=collate)


@torch.no_grad()
def predict_answers(model: nn.Module, batches, top_k: int = 1) -> list[list[tuple[str, float]]]:
    """Per question, the ``top_k`` answers with their probabilities (``σ(logit)``: a VQA model scores each
    answer independently, so this is its estimate that the answer is right)."""
    ensure_eval(model)
    vocab = answer_vocab_of(model)
    device = next(model.parameters()).device
    predictions = []
    for batch in batches:
        inputs = {key: value.to(device) for key, value in batch.items() if key != "targets"}
        logits = model(**inputs)["logits"].float()[:, : len(vocab)]  # slots past the vocabulary mean nothing
        scores, indices = logits.sigmoid().topk(min(top_k, len(vocab)), dim=-1)
        predictions.extend([[(vocab.answers[i], float(s)) for i, s in zip(row_i.tolist(), row_s.tolist())]
                            for row_i, row_s in zip(indices, scores)])
    return predictions


def evaluate_vqa(
    model: nn.Module, dataset: ImageTextSet, tokenizer: TextTokenizer | None,
    transform: Callable[[Image.Image], torch.Tensor] | None, batch_size: int = 64,
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> VQAReport:
    """The official VQA accuracy of ``model``'s top answer on every question of ``dataset``, overall and per
    question and answer type. ``batches``: the questions in order as the model reads them, when not through
    :func:`question_loader` (e.g. frozen towers' cached outputs)."""
    if batches is None:
        batches = question_loader(dataset, model, transform, tokenizer, batch_size)
    predictions = predict_answers(model, batches)
    records = dataset.records
    return vqa_report([answers[0][0] for answers in predictions], [record.answers for record in records],
                      [record.question_type or "unknown" for record in records],
                      [record.answer_type or "unknown" for record in records])


def answer_question(
    model: nn.Module, tokenizer: TextTokenizer | None, transform: Callable[[Image.Image], torch.Tensor] | None,
    image: Image.Image, question: str, top_k: int = 5,
) -> list[tuple[str, float]]:
    """The ``top_k`` answers to ``question`` about ``image``, with their probabilities."""
    return answer_questions(model, tokenizer, transform, [image], [question], top_k)[0]


def answer_questions(
    model: nn.Module, tokenizer: TextTokenizer | None, transform: Callable[[Image.Image], torch.Tensor] | None,
    images: Sequence[Image.Image], questions: Sequence[str], top_k: int = 5,
) -> list[list[tuple[str, float]]]:
    """Per (image, question) pair, the ``top_k`` answers with their probabilities, in one forward pass (what a
    server batching concurrent questions calls)."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions; give one image per question")
    batch: dict[str, torch.Tensor] = {}
    if model.preprocess is not None and transform is not None:
        batch["image"] = torch.stack([transform(image) for image in images])
    if tokenizer is not None:
        batch.update(tokenizer(list(questions)))
    return predict_answers(model, [batch], top_k)


def vqa_metrics(report: VQAReport) -> dict[str, float]:
    """A report as flat metrics for the training log: ``vqa_accuracy`` and ``vqa_accuracy/<type>``."""
    return {"vqa_accuracy": report.overall,
            **{f"vqa_accuracy/{name}": value for name, value in report.per_question_type.items()}}

