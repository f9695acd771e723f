"""What the core needs to know about a model family: how to build its model and its loss, and its task.

A family is "one models/ file + one JSON preset + maybe one loss": the file defines a builder and a
:class:`ModelFamily`, presets name it with ``"family": NAME``, and :mod:`polymodal.models.registry` maps the name
to it. Nothing in ``train/`` or ``cli/`` changes when a family is added.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

__all__ = ["TASK_NAMES", "LossOptions", "ModelFamily", "Task"]

# Which data a run feeds the model and how it is evaluated (recipes/tasks.py):
#   "contrastive"    image-caption pairs → batch {image, input_ids, attention_mask}; retrieval R@K on val
#   "classification" labelled images (+ captions) → batch {image, input_ids, attention_mask, labels}; accuracy
#   "vqa"            questions about images → batch {image, input_ids, attention_mask, targets (soft scores)};
#                    the official VQA accuracy, overall and per question / answer type
#   "captioning"     images with reference captions → batch {image, input_ids, attention_mask} (teacher forcing)
#                    or {image, image_index} (self-critical sampling); BLEU-1..4, ROUGE-L, CIDEr-D
Task = Literal["contrastive", "classification", "vqa", "captioning"]
TASK_NAMES: tuple[str, ...] = ("contrastive", "classification", "vqa", "captioning")


@dataclass(frozen=True)
class LossOptions:
    """Run-level loss settings (``train.*`` keys of a run config); a family's loss takes what applies to it.

    Attributes:
        label_smoothing: for cross-entropy losses (CLIP's InfoNCE, classification).
        local_loss / gather_with_grad: how a contrastive loss uses the other ranks' features (open_clip's flags).
    """

    label_smoothing: float = 0.0
    local_loss: bool = False
    gather_with_grad: bool = False


@dataclass(frozen=True)
class ModelFamily:
    """A registered model family.

    Attributes:
        name: the ``family`` value presets and configs use.
        build: ``build(config, where, for_loading) -> nn.Module``. ``config`` is the whole model config dict
            (a preset's JSON, possibly overridden); ``where`` names it in errors; ``for_loading=True`` means
            saved weights are about to overwrite the parameters (skip expensive derived initialisation).
            The model must keep ``config`` as ``model.config`` (saved as ``config.json``), and expose
            ``model.preprocess`` (an ``ImagePreprocess``) if it reads images. Its ``forward`` takes the
            batch's keys and returns a dict whose keys are the loss's keyword names.
        build_loss: ``build_loss(config, options) -> nn.Module``; the loss returns a scalar or a dict of
            named scalar terms with the total under ``"loss"`` (every term is logged).
        task: which data and evaluation a run of this family uses (see :data:`Task`).

    Optional hooks a model may define (the training loop calls them if present):
        ``after_optimizer_step()``: e.g. clamp a temperature, update a momentum encoder.
        ``log_scalars() -> dict[str, float]``: extra values for each log record.
        ``fsdp_units() -> list[nn.Module]``: submodules FSDP shards as units of their own.
        ``fsdp_forward_methods``: names of methods besides ``forward`` that run on sharded parameters.
        ``embedding_outputs``: output keys with a batch dimension whose gradients GradCache may cache; a
            model without it cannot train with ``train.grad_cache_micro_batch``.
    """

    name: str
    build: Callable[[dict[str, Any], str, bool], nn.Module]
    build_loss: Callable[[dict[str, Any], LossOptions], nn.Module]
    task: Task = "contrastive"
