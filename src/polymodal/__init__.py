"""polymodal: build, train, evaluate and serve multimodal (image-text) models with PyTorch."""
__version__ = "0.1.0"
