"""What passes between a model, its loss and the loop: outputs in full precision, loss results as named terms."""
from __future__ import annotations

import torch

__all__ = ["batch_size_of", "full_precision", "loss_terms"]


def full_precision(output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating outputs in fp32 (autocast may have made them bf16/fp16); integer ones (labels, ids) as they are."""
    return {key: value.float() if value.is_floating_point() else value for key, value in output.items()}


def loss_terms(result: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A loss's result as named terms with the total under ``"loss"`` (a bare scalar is the total alone)."""
    if isinstance(result, dict):
        if "loss" not in result:
            raise ValueError(f"a loss that returns named terms must put the total under 'loss', got {sorted(result)}")
        return result
    return {"loss": result}


def batch_size_of(batch: dict[str, torch.Tensor]) -> int:
    """Rows in a batch: the first dimension of its first tensor that has one."""
    return next(value.shape[0] for value in batch.values() if value.ndim > 0)
