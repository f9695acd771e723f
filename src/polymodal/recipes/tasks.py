"""What a run feeds a model and how it scores it, per task (a family's ``task``, ``models/family.py``).

- ``contrastive``: image–caption pairs (in memory, as tar shards, or as cached frozen-tower outputs); scored by
  retrieval R@K on the validation set.
- ``classification``: labelled images with their captions; scored by top-1/top-5 accuracy.
- ``vqa``: questions about images with their annotators' answers; scored by the official VQA accuracy.
- ``captioning``: images with reference captions; teacher-forced captions (or, with ``train.scst``, the images
  alone for self-critical sampling); scored by BLEU-1..4, ROUGE-L and CIDEr-D.

Each task builds the training dataset + collate and the per-epoch evaluator from one :class:`RunContext`.

Frozen towers run once (``train.cache_features``, on by default): a dual encoder's two locked towers, a captioner's
locked image tower, a fusion model's locked image and/or text tower are run over the training and validation
sets ahead of training (``recipes/frozen_towers.py``, cached on disk), and the datasets yield their outputs in place
of pixels or token ids. Cached images are the evaluation transform's: a frozen tower trains without augmentation.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from polymodal.data.labelled import (
    CachedLabelledDataset,
    LabelledImageCollator,
    LabelledImageDataset,
    check_labelled,
    record_texts,
)
from polymodal.data.questions import CachedQuestionDataset, QuestionCollator, QuestionDataset, check_questions
from polymodal.data.records import ImageTextSet
from polymodal.data.tower_rows import (
    CachedCaptionCollator,
    CachedCaptionDataset,
    CachedIndexDataset,
    CachedTower,
    collate_cached_index,
)
from polymodal.data.vqa import AnswerVocab, build_answer_vocab
from polymodal.data.pair_dataset import (
    CachedFeatureDataset,
    ImageCaptionCollator,
    ImageCaptionDataset,
    collate_cached_features,
)
from polymodal.data.shards import CaptionPairStream
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.distributed import DistInfo, barrier, main_rank_first
from polymodal.encoders.base import is_frozen
from polymodal.losses.captioning import SCSTLoss
from polymodal.precision import resolve_precision
from polymodal.recipes.config import RunConfig
from polymodal.recipes.data import RunData
from polymodal.recipes.frozen_towers import (
    evaluate_cached,
    has_frozen_towers,
    image_tower_outputs,
    text_tower_outputs,
    tower_features,
)
from polymodal.tasks.captioning import CiderReward, ImageIndexDataset, collate_image_index, evaluate_captioning
from polymodal.tasks.classification import evaluate_classification, labelled_loader
from polymodal.tasks.retrieval import evaluate_retrieval
from polymodal.tasks.vqa import evaluate_vqa, vqa_metrics

__all__ = ["CaptioningTask", "ClassificationTask", "ContrastiveTask", "RunContext", "TASKS", "VQATask"]

log = logging.getLogger("polymodal")

Collate = Callable[[list[Any]], dict[str, torch.Tensor]]
Evaluator = Callable[[nn.Module], dict[str, float]]


@dataclass
class RunContext:
    """What a task needs to build its data and evaluator (all built once, at the edge)."""

    config: RunConfig
    data: RunData
    model: nn.Module
    tokenizer: TextTokenizer | None
    info: DistInfo
    device: torch.device
    progress: bool

    @property
    def evaluates(self) -> bool:
        """Rank 0 evaluates; under FSDP every rank does (a sharded forward needs them all)."""
        return self.info.is_main or self.config.train.fsdp

    @property
    def tower_precision(self) -> str:
        """The autocast frozen towers run in ahead of training: the run's, so cached outputs are what the towers
        would have given inside the training step."""
        return resolve_precision(self.config.train.precision, self.device)

    def fills_cache_first(self, evaluating: bool = False):
        """Rank 0 runs the towers and fills the on-disk cache, then the other ranks read it (for evaluation only
        under FSDP, where every rank evaluates)."""
        if evaluating and not self.config.train.fsdp:
            return contextlib.nullcontext()
        return main_rank_first(self.info)


def _on_evaluating_ranks(context: RunContext, score: Callable[[nn.Module], dict[str, float]] | None) -> Evaluator:
    """``score`` on the evaluating ranks; every rank then waits at a barrier rather than inside its next
    collective. Without a validation set (``score`` None) the metrics are empty."""

    def evaluate(trained: nn.Module) -> dict[str, float]:
        metrics = score(trained) if score is not None and context.evaluates else {}
        barrier(context.info)
        return metrics

    return evaluate


def _frozen_fusion_towers(context: RunContext) -> list[str]:
    """The modalities whose frozen towers a fusion model's run computes once (none unless ``train.cache_features``
    and the model reads cached outputs); an unfrozen tower keeps running in every step."""
    model = context.model
    if not context.config.train.cache_features or not hasattr(model, "cached_parts"):
        return []
    return [name for name, encoder in model.encoders.items() if is_frozen(encoder)]


def _fusion_tower_outputs(context: RunContext, modalities: list[str], dataset: ImageTextSet, texts: list[str],
                          progress: bool) -> tuple[CachedTower | None, CachedTower | None]:
    """A fusion model's frozen image tower over ``dataset``'s distinct images and frozen text tower over ``texts``'
    distinct texts, keeping what its fusion reads (:meth:`~polymodal.models.fusion_model.FusionModel.cached_parts`)."""
    model, precision = context.model, context.tower_precision
    # A model around another one (a prompt learner around its dual encoder) names its towers' config sections.
    tower_config = getattr(model, "tower_config", lambda modality: model.config[modality])
    images = texts_out = None
    if "image" in modalities:
        images = image_tower_outputs(model.encoders["image"], tower_config("image"), model.preprocess, dataset,
                                     context.device, model.cached_parts("image"), precision, progress)
    if "text" in modalities:
        texts_out = text_tower_outputs(model.encoders["text"], tower_config("text"), context.tokenizer, texts,
                                       context.device, model.cached_parts("text"), precision, progress)
    _log_cache(dataset, images, texts_out)
    return images, texts_out


def _log_cache(dataset: ImageTextSet, *cached: CachedTower | None) -> None:
    held = [tower for tower in cached if tower is not None]
    if held:
        log.info("frozen towers of %s: %s rows, %.1f MB cached", dataset.name,
                 " + ".join(str(len(next(iter(tower.parts.values())))) for tower in held),
                 sum(tower.nbytes() for tower in held) / 2**20)


class ContrastiveTask:
    """Image–caption pairs; frozen towers train on their cached outputs (a shard stream runs its towers)."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.cached = (context.config.train.cache_features and has_frozen_towers(context.model)
                       and context.data.shard_dir is None)

    def train_data(self) -> tuple[Dataset | IterableDataset, Collate]:
        context, opt = self.context, self.context.config.train
        if self.cached:
            with main_rank_first(context.info):  # rank 0 fills the on-disk feature cache, the others read it
                features = tower_features(context.model, context.tokenizer, context.data.train_set, context.device,
                                          context.progress)
            dataset = CachedFeatureDataset(features.images, features.captions, features.caption_offsets, opt.seed)
            return dataset, collate_cached_features
        transform = image_transform(context.model.preprocess, train=True)
        if context.data.shard_dir is not None:
            stream = CaptionPairStream(context.data.shard_dir, rank=context.info.rank,
                                       world_size=context.info.world_size,
                                       shuffle_buffer=context.config.data.shuffle_buffer, seed=opt.seed,
                                       transform=transform)
            return stream, ImageCaptionCollator(context.tokenizer)
        return ImageCaptionDataset(context.data.train_set, transform, opt.seed), ImageCaptionCollator(context.tokenizer)

    def evaluator(self) -> Evaluator:
        """Validation retrieval. Call before the model is sharded: with cached features the evaluating ranks
        run the (still whole) towers over the validation set here."""
        context, val_set = self.context, self.context.data.val_set
        if val_set is None:
            return _on_evaluating_ranks(context, None)
        if self.cached and context.evaluates:
            # Under FSDP rank 0 fills the on-disk feature cache, then the others read it.
            with main_rank_first(context.info) if context.config.train.fsdp else contextlib.nullcontext():
                features = tower_features(context.model, context.tokenizer, val_set, context.device, progress=False)
            return _on_evaluating_ranks(context, lambda trained: evaluate_cached(trained, features, val_set))
        transform = image_transform(context.model.preprocess)
        return _on_evaluating_ranks(context, lambda trained: evaluate_retrieval(
            trained, context.tokenizer, val_set, transform, progress=False))


class ClassificationTask:
    """Labelled images (+ a caption each when the set has them, tokenized if the model reads text)."""

    def __init__(self, context: RunContext) -> None:
        if context.data.shard_dir is not None:
            raise ValueError("classification runs read their data in memory: data.train cannot be a shard directory")
        self.context = context
        config, classes = context.model.config, context.data.train_set.class_names
        if "num_outputs" in config:  # a model whose config says how many classes it scores
            if config["num_outputs"] < len(classes):
                raise ValueError(f"model.num_outputs = {config['num_outputs']}, but {context.data.train_set.name} "
                                 f"has {len(classes)} classes: set model.num_outputs={len(classes)}")
            if not config.get("class_names"):
                config["class_names"] = list(classes)  # saved in config.json: what each output means
        if hasattr(context.model, "use_class_names"):  # a model that builds its classifier from the names (CoOp)
            context.model.use_class_names(classes)
        self.frozen = _frozen_fusion_towers(context)

    def _cached_dataset(self, dataset: ImageTextSet, transform, seed: int, progress: bool) -> CachedLabelledDataset:
        check_labelled(dataset)  # before any tower runs
        images, texts = _fusion_tower_outputs(self.context, self.frozen, dataset, record_texts(dataset)[0], progress)
        return CachedLabelledDataset(dataset, transform, seed, images, texts)

    def train_data(self) -> tuple[Dataset, Collate]:
        context = self.context
        transform = image_transform(context.model.preprocess, train=True)
        if self.frozen:
            with context.fills_cache_first():
                dataset = self._cached_dataset(context.data.train_set, transform, context.config.train.seed,
                                               context.progress)
            return dataset, LabelledImageCollator(context.tokenizer)
        return (LabelledImageDataset(context.data.train_set, transform, context.config.train.seed),
                LabelledImageCollator(context.tokenizer))

    def evaluator(self) -> Evaluator:
        """Top-1/top-5 accuracy on the validation set (from its cached tower outputs when towers are frozen)."""
        context, val_set = self.context, self.context.data.val_set
        if val_set is None:
            return _on_evaluating_ranks(context, None)
        transform = image_transform(context.model.preprocess)
        if self.frozen and context.evaluates:
            with context.fills_cache_first(evaluating=True):
                # Seed 0, epoch 0: the caption labelled_loader shows the uncached evaluation.
                dataset = self._cached_dataset(val_set, transform, seed=0, progress=False)
            loader = DataLoader(dataset, batch_size=context.config.train.batch_size,
                                collate_fn=LabelledImageCollator(context.tokenizer))
        else:
            loader = labelled_loader(val_set, transform, context.tokenizer, context.config.train.batch_size)
        return _on_evaluating_ranks(context, lambda trained: evaluate_classification(trained, loader))


class VQATask:
    """Questions about images, scored against every answer of the model's answer list.

    The answer list is the training set's ``num_outputs`` most frequent answers, stored in the model's config as
    ``answers`` (so a checkpoint knows what its outputs mean); a resumed run keeps the checkpoint's list.
    Images are not augmented: a crop can cut away an object a counting or position question is about.
    """

    def __init__(self, context: RunContext) -> None:
        if context.data.shard_dir is not None:
            raise ValueError("VQA runs read their data in memory: data.train cannot be a shard directory")
        self.context = context
        config = context.model.config
        if not config.get("answers"):
            vocab = build_answer_vocab(context.data.train_set.records, top_k=config["num_outputs"])
            config["answers"] = list(vocab.answers)
        self.vocab = AnswerVocab(tuple(config["answers"]))
        preprocess = context.model.preprocess
        self.transform = image_transform(preprocess) if preprocess is not None else None
        self.frozen = _frozen_fusion_towers(context)

    def _collate(self) -> QuestionCollator:
        return QuestionCollator(self.vocab, self.context.model.config["num_outputs"], self.context.tokenizer)

    def _cached_dataset(self, dataset: ImageTextSet, progress: bool) -> CachedQuestionDataset:
        """Image tower once per distinct image (a VQA set has ~10 questions per image), text tower once per
        distinct question."""
        check_questions(dataset)  # before any tower runs
        questions = [record.question for record in dataset.records]
        images, texts = _fusion_tower_outputs(self.context, self.frozen, dataset, questions, progress)
        return CachedQuestionDataset(dataset, self.transform, images, texts)

    def train_data(self) -> tuple[Dataset, Collate]:
        context = self.context
        if self.frozen:
            with context.fills_cache_first():
                return self._cached_dataset(context.data.train_set, context.progress), self._collate()
        return QuestionDataset(context.data.train_set, self.transform), self._collate()

    def evaluator(self) -> Evaluator:
        """The official VQA accuracy on the validation set, overall and per question type (from its cached tower
        outputs when towers are frozen)."""
        context, val_set = self.context, self.context.data.val_set
        if val_set is None:
            return _on_evaluating_ranks(context, None)
        batch_size, batches = context.config.train.batch_size, None
        if self.frozen and context.evaluates:
            with context.fills_cache_first(evaluating=True):
                batches = DataLoader(self._cached_dataset(val_set, progress=False), batch_size=batch_size,
                                     collate_fn=self._collate())
        return _on_evaluating_ranks(context, lambda trained: vqa_metrics(evaluate_vqa(
            trained, val_set, context.tokenizer, self.transform, batch_size, batches=batches)))


class CaptioningTask:
    """Images with reference captions.

    Cross-entropy training sees each image once per epoch with one of its captions (drawn per epoch, as the
    contrastive task). With ``train.scst`` it sees each image once per epoch alone: the model samples
    ``train.scst_samples`` captions and the loss (:class:`~polymodal.losses.captioning.SCSTLoss`) rewards them
    with CIDEr-D against the image's references, document frequencies from all training references.
    The tokenizer's special ids go into the model's config, so generation knows where captions start and end.
    A frozen image tower (``train.cache_features``) runs once over the training and validation images; both
    objectives and the per-epoch evaluation then read its cached tokens.
    """

    def __init__(self, context: RunContext) -> None:
        if context.data.shard_dir is not None:
            raise ValueError("captioning runs read their data in memory: data.train cannot be a shard directory")
        self.context = context
        model, tokenizer = context.model, context.tokenizer
        if tokenizer.vocab_size > model.decoder.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the decoder only "
                             f"{model.decoder.vocab_size}: set model.text.vocab_size >= {tokenizer.vocab_size}")
        special = {"bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
        model.config.update(special)
        model.bos_id, model.eos_id, model.pad_id = special["bos_id"], special["eos_id"], special["pad_id"]
        opt = context.config.train
        model.scst_samples = opt.scst_samples if opt.scst else 0
        self.cached = opt.cache_features and is_frozen(model.image_encoder)

    def _image_tokens(self, dataset: ImageTextSet, progress: bool) -> CachedTower:
        """The frozen image tower's tokens (the decoder's memory) of every record's image."""
        model = self.context.model
        images = image_tower_outputs(model.image_encoder, model.config["image"], model.preprocess, dataset,
                                     self.context.device, ("tokens",), self.context.tower_precision, progress)
        _log_cache(dataset, images)
        return images

    def train_data(self) -> tuple[Dataset, Collate]:
        context = self.context
        if self.cached:
            with context.fills_cache_first():
                images = self._image_tokens(context.data.train_set, context.progress)
            if context.config.train.scst:
                return CachedIndexDataset(images), collate_cached_index
            return (CachedCaptionDataset(context.data.train_set, images, context.config.train.seed),
                    CachedCaptionCollator(context.tokenizer))
        transform = image_transform(context.model.preprocess, train=not context.config.train.scst)
        if context.config.train.scst:
            return ImageIndexDataset(context.data.train_set, transform), collate_image_index
        return (ImageCaptionDataset(context.data.train_set, transform, context.config.train.seed),
                ImageCaptionCollator(context.tokenizer))

    def training_loss(self, loss: nn.Module) -> nn.Module:
        """The family's cross-entropy, or SCST's policy gradient with a CIDEr-D reward under ``train.scst``."""
        context = self.context
        if not context.config.train.scst:
            return loss
        references = [record.captions for record in context.data.train_set.records]
        return SCSTLoss(CiderReward(references, context.tokenizer.decode), context.config.train.scst_baseline)

    def evaluator(self) -> Evaluator:
        """BLEU-1..4, ROUGE-L and CIDEr-D of greedy captions of the validation images (beam search is the
        model's default for ``eval`` and ``caption``; greedy keeps per-epoch evaluation cheap)."""
        context, val_set = self.context, self.context.data.val_set
        if val_set is None:
            return _on_evaluating_ranks(context, None)
        transform, batch_size, batches = image_transform(context.model.preprocess), context.config.train.batch_size, None
        if self.cached and context.evaluates:
            # The validation images' tokens once, not the tower on every evaluation.
            with context.fills_cache_first(evaluating=True):
                batches = DataLoader(CachedIndexDataset(self._image_tokens(val_set, progress=False)),
                                     batch_size=batch_size, collate_fn=collate_cached_index)
        return _on_evaluating_ranks(context, lambda trained: evaluate_captioning(
            trained, val_set, context.tokenizer, transform, batch_size, batches=batches, method="greedy").scores)


TASKS: dict[str, type[ContrastiveTask] | type[ClassificationTask] | type[VQATask] | type[CaptioningTask]] = {
    "contrastive": ContrastiveTask,
    "classification": ClassificationTask,
    "vqa": VQATask,
    "captioning": CaptioningTask,
}
