"""Process-wide runtime choices a run makes once: which device, which seed."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when a GPU is visible, else CPU; anything else as ``torch.device`` reads it."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {str(name)!r} is not a device torch knows (auto, cpu, cuda, cuda:1, mps, ...)") from None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
