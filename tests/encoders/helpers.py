"""Shared checks for the encoder tests: synthetic tasks, a learning check, a bf16 autocast check."""
import torch
import torch.nn.functional as F
from torch import nn


def fit(
    encoder: nn.Module, inputs: dict, labels: torch.Tensor, steps: int = 20, lr: float = 3e-3
) -> tuple[float, float]:
    """Train encoder + linear head with Adam on one fixed batch; return (first loss, last loss)."""
    head = nn.Linear(encoder.width, int(labels.max()) + 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(head(encoder(**inputs).pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def colour_task(n: int = 32, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose label says which of red or green is brighter: learnable by any image encoder."""
    labels = torch.arange(n) % 2
    images = 0.5 * torch.randn(n, 3, size, size)
    images[labels == 0, 0] += 1.0
    images[labels == 1, 1] += 1.0
    return images, labels


def token_task(n: int = 32, length: int = 8, vocab: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded captions of random length; label says whether token 1 occurs among the real tokens."""
    lengths = torch.randint(2, length + 1, (n,))
    mask = torch.arange(length) < lengths[:, None]  # (n, length)
    ids = torch.randint(2, vocab, (n, length))
    labels = torch.arange(n) % 2
    positions = (torch.rand(n) * lengths).long()
    ids[labels == 1, positions[labels == 1]] = 1
    return ids.masked_fill(~mask, 0), mask.long(), labels


def assert_close_in_bf16(encoder: nn.Module, inputs: dict) -> None:
    """Forward + backward under CPU bf16 autocast; pooled stays finite and near the fp32 result."""
    reference = encoder(**inputs).pooled
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(**inputs)
    assert torch.isfinite(out.pooled.float()).all()
    cos = F.cosine_similarity(out.pooled.float(), reference, dim=-1)
    assert cos.min() > 0.98, cos
    out.pooled.float().sum().backward()


def assert_padding_invariant(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, atol: float) -> None:
    """Each padded row of a batch encodes exactly as the same text alone without padding (tokens and pooled)."""
    batch = encoder(ids, mask)
    for i, length in enumerate(mask.sum(1).tolist()):
        alone = encoder(ids[i : i + 1, :length], torch.ones(1, length))
        torch.testing.assert_close(batch.pooled[i : i + 1], alone.pooled, atol=atol, rtol=1e-5)
        torch.testing.assert_close(batch.tokens[i : i + 1, :length], alone.tokens, atol=atol, rtol=1e-5)
