"""polymodal: build, train, evaluate and serve multimodal (image-text) models with PyTorch."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models"]


def __getattr__(name: str) -> Any:
    # Lazy: `polymodal --help` and light imports must not pay for torch + torchvision (seconds on a CPU box).
    if name in ("create_model", "list_models"):
        from polymodal import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'polymodal' has no attribute {name!r}")
