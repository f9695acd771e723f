"""AdamW with open_clip's parameter grouping: no weight decay on gains, biases, norms and the temperature."""
from __future__ import annotations

import torch
from torch import nn


def create_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; 1-D tensors (biases, norm gains, logit scale/bias) get no decay."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (are both towers and heads frozen?)")
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
