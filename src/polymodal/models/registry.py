"""The one registry of model families: ``family`` name → :class:`~polymodal.models.family.ModelFamily`.

Built-in families are registered here; a user registers their own with :func:`register_family` (as HF's
``AutoModel.register``), after which presets, ``create_model``, ``run_training`` and ``load_model`` all accept it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

from torch import nn

from polymodal.models.captioner import CAPTIONER
from polymodal.models.dual_encoder import DUAL_ENCODER
from polymodal.models.family import TASK_NAMES, LossOptions, ModelFamily, Task
from polymodal.models.fusion_model import MULTIMODAL_CLASSIFIER, VQA
from polymodal.typed_config import ConfigError

__all__ = ["build_loss", "build_model", "family_of", "list_families", "register_family"]

# Configs saved before families existed hold a dual encoder and no "family" key.
DEFAULT_FAMILY = DUAL_ENCODER.name

_FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (DUAL_ENCODER, VQA, MULTIMODAL_CLASSIFIER,
                                                                        CAPTIONER)}
# Built-in families that load other saved models (model_io imports this registry): imported on first use.
_DEFERRED_FAMILIES = {"prompt_learner": ("polymodal.models.prompt_learner", "PROMPT_LEARNER")}


def register_family(
    name: str,
    build: Callable[[dict[str, Any], str, bool], nn.Module],
    build_loss: Callable[[dict[str, Any], LossOptions], nn.Module],
    task: Task = "contrastive",
    exist_ok: bool = False,
) -> ModelFamily:
    """Make ``name`` a model family (see :class:`ModelFamily` for what ``build`` and ``build_loss`` do).

    Raises:
        ValueError: ``name`` is taken and ``exist_ok`` is false, or ``task`` is unknown.
    """
    if (name in _FAMILIES or name in _DEFERRED_FAMILIES) and not exist_ok:
        raise ValueError(f"model family {name!r} is already registered")
    if task not in TASK_NAMES:
        raise ValueError(f"task must be one of {', '.join(TASK_NAMES)}, got {task!r}")
    family = ModelFamily(name, build, build_loss, task)
    _FAMILIES[name] = family
    return family


def list_families() -> list[str]:
    return sorted({*_FAMILIES, *_DEFERRED_FAMILIES})


def family_of(config: Mapping[str, Any], where: str = "model config") -> ModelFamily:
    """The family a model config names (``"family"``; a dual encoder when absent)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: a model config is a mapping, got {type(config).__name__}")
    name = config.get("family", DEFAULT_FAMILY)
    if name not in _FAMILIES and name in _DEFERRED_FAMILIES:
        module, attribute = _DEFERRED_FAMILIES[name]
        _FAMILIES[name] = getattr(import_module(module), attribute)
    if name not in _FAMILIES:
        raise ConfigError(f"{where}: family = {name!r} is not a registered model family; known: "
                          f"{', '.join(list_families())} (register one with polymodal.register_family)")
    return _FAMILIES[name]


def build_model(config: Mapping[str, Any], where: str = "model config", for_loading: bool = False) -> nn.Module:
    """Build the model a config describes, with its family's builder (``checkpoint`` tower sections are resolved
    a layer above, by :func:`polymodal.interop.build_model_with_towers`)."""
    return family_of(config, where).build(dict(config), where, for_loading)


def build_loss(config: Mapping[str, Any], options: LossOptions | None = None) -> nn.Module:
    """The loss of the config's family."""
    return family_of(config).build_loss(dict(config), options or LossOptions())
