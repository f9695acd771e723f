"""Tiny features and per-kind options shared by the fusion tests."""
from __future__ import annotations

import torch

from polymodal.encoders.base import EncoderOutput
from polymodal.layers.pooling import masked_mean

DIMS = {"image": 12, "text": 8}
DIM = 16
LENGTHS = {"image": 5, "text": 4, "audio": 3}
# Batch of three with padding at the end of some rows; every row keeps at least one real token.
MASKS = {
    "image": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool),
    "text": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool),
    "audio": None,
}
# Small attention stacks so every test stays fast; all other kinds run with their defaults. Cross-attention runs
# with its optional self-attention, so the shared padding and gradient tests reach that path too.
OPTIONS = {
    "cross_attention": {"heads": 2, "self_attention": True},
    "single_stream": {"heads": 2, "layers": 1, "mlp_ratio": 2.0},
    "co_attention": {"heads": 2, "mlp_ratio": 2.0},
}
TOKEN_LENGTH = {  # N of FusionOutput.tokens for DIMS
    "film": LENGTHS["image"],
    "cross_attention": LENGTHS["text"],
    "single_stream": 1 + LENGTHS["image"] + LENGTHS["text"],
    "co_attention": LENGTHS["image"] + LENGTHS["text"],
}
TWO_MODALITY_KINDS = {"film", "cross_attention", "co_attention"}  # built around exactly two named roles/streams


def make_features(
    dims: dict[str, int] = DIMS, seed: int = 0, dtype: torch.dtype = torch.float32, masked: bool = True
) -> dict[str, EncoderOutput]:
    """Random ``EncoderOutput`` per modality (batch 3); ``pooled`` is the masked mean of ``tokens``."""
    generator = torch.Generator().manual_seed(seed)
    features = {}
    for name, width in dims.items():
        tokens = torch.randn(3, LENGTHS[name], width, generator=generator, dtype=dtype)
        mask = MASKS[name] if masked else None
        features[name] = EncoderOutput(tokens=tokens, pooled=masked_mean(tokens, mask), mask=mask)
    return features


def perturb_padding(features: dict[str, EncoderOutput]) -> dict[str, EncoderOutput]:
    """Same features with large (finite) values written into every padded token position."""
    perturbed = {}
    for name, output in features.items():
        tokens = output.tokens.clone()
        if output.mask is not None:
            tokens[~output.mask] = 100.0 * torch.randn_like(tokens[~output.mask])
        perturbed[name] = EncoderOutput(tokens=tokens, pooled=output.pooled, mask=output.mask)
    return perturbed


def outputs_close(a: torch.Tensor | None, b: torch.Tensor | None, mask: torch.Tensor | None = None) -> None:
    """Assert two optional outputs match, comparing only real positions when ``mask`` is given."""
    assert (a is None) == (b is None)
    if a is not None:
        if mask is not None:
            a, b = a[mask], b[mask]
        torch.testing.assert_close(a, b)
