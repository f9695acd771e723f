"""polymodal: build, train, evaluate and serve multimodal (image-text) models with PyTorch."""
from polymodal.factory import create_model, list_models

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models"]
