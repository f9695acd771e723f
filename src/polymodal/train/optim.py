"""AdamW with open_clip's parameter grouping (no weight decay on gains, biases, norms and the temperature), fused
where the parameters allow it."""
from __future__ import annotations

import torch
from torch import nn


def create_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; 1-D tensors (biases, norm gains, logit scale/bias) get no decay.

    ``fused``: None uses the fused kernel wherever the parameters allow it; False forces the multi-tensor
    (``foreach``) path, for comparison."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (are both towers and heads frozen?)")
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=(fused is not False) and _fused_supported(decay + no_decay))


def _fused_supported(parameters: list[nn.Parameter]) -> bool:
    """Whether AdamW's fused kernel (one pass over every tensor instead of one op per tensor per update term)
    can run: floating parameters on CPU or CUDA as plain tensors. FSDP2's sharded parameters (DTensor) keep
    the default multi-tensor path."""
    return all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for p in parameters
    )
