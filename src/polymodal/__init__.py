"""polymodal: build, train, evaluate and serve multimodal (image-text) models with PyTorch.

The public API (imported lazily: ``polymodal --help`` and light imports must not pay for torch + torchvision):

- models: ``create_model``, ``list_models``, ``save_model``, ``load_model``, ``register_family``
- runs: ``load_run_config``, ``run_training`` (returns a ``TrainResult``)
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "polymodal.factory",
    "list_models": "polymodal.factory",
    "save_model": "polymodal.model_io",
    "load_model": "polymodal.model_io",
    "register_family": "polymodal.models.registry",
    "load_run_config": "polymodal.recipes.config",
    "RunConfig": "polymodal.recipes.config",
    "run_training": "polymodal.recipes.training",
    "TrainResult": "polymodal.recipes.training",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polymodal' has no attribute {name!r}")
