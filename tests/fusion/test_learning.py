"""A tiny fusion plus a linear head learns XOR of one bit per modality: neither modality alone is better than
chance, and a head that is linear in each modality separately cannot solve it either."""
import pytest
import torch
import torch.nn.functional as F

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion import build_fusion
from polymodal.layers.pooling import masked_mean

WIDTH = 8
DIMS = {"image": WIDTH, "text": WIDTH}


def xor_batch(bits: torch.Tensor, generator: torch.Generator) -> tuple[dict[str, EncoderOutput], torch.Tensor]:
    """``bits (B, 2)`` in {0, 1}: the image tokens carry bit 0 along one direction, the text tokens bit 1 along
    another, under noise; the text's last position is padding filled with large noise. Label: bit 0 XOR bit 1."""
    directions = torch.eye(WIDTH)[:2]
    features = {}
    for index, (name, length) in enumerate((("image", 3), ("text", 4))):
        sign = (2.0 * bits[:, index] - 1.0)[:, None, None]  # (B, 1, 1)
        tokens = sign * directions[index] + 0.3 * torch.randn(len(bits), length, WIDTH, generator=generator)
        mask = None
        if name == "text":
            mask = torch.ones(len(bits), length, dtype=torch.bool)
            mask[:, -1] = False
            tokens[:, -1] = 10.0 * torch.randn(len(bits), WIDTH, generator=generator)
        features[name] = EncoderOutput(tokens=tokens, pooled=masked_mean(tokens, mask), mask=mask)
    return features, bits[:, 0].long() ^ bits[:, 1].long()


def train_xor(kind: str, options: dict, steps: int = 200) -> float:
    """Train ``kind`` + a linear head on batches of the four cases with fresh noise; held-out accuracy."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    fusion = build_fusion(kind, DIMS, 16, **options)
    head = torch.nn.Linear(16, 2)
    optimizer = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
    # Linear decay: with batches of four, a constant rate leaves the last steps noisy enough to miss 0.95.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    every_case = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    for _ in range(steps):
        features, labels = xor_batch(every_case, generator)
        loss = F.cross_entropy(head(fusion(features).fused), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    fusion.eval()
    with torch.no_grad():
        features, labels = xor_batch(every_case.repeat(16, 1), generator)
        return (head(fusion(features).fused).argmax(-1) == labels).float().mean().item()


@pytest.mark.parametrize(
    "kind, options",
    [
        ("concat", {"hidden": 16}),
        ("tensor", {"proj_dim": 4}),
        ("low_rank_tensor", {}),
        ("bilinear", {}),
        ("gated_unit", {}),
        ("film", {}),
        ("single_stream", {"layers": 1, "heads": 2, "mlp_ratio": 2.0}),
        ("cross_attention", {"heads": 2, "mlp_ratio": 2.0}),
        ("co_attention", {"heads": 2, "mlp_ratio": 2.0}),
    ],
)
def test_learns_xor_of_the_modalities(kind: str, options: dict) -> None:
    accuracy = train_xor(kind, options)
    assert accuracy > 0.95, f"{kind}: accuracy {accuracy:.2f}"


def test_the_task_needs_an_interaction() -> None:
    # Sum fusion and a linear head are linear in each modality: no better than chance on XOR.
    assert train_xor("sum", {}) < 0.7
