"""Top-k accuracy on hand-computed cases, ties, clipping, and against a torch.topk reference."""
from __future__ import annotations

import pytest
import torch

from polymodal.metrics import topk_accuracy


def test_hand_computed_case() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.7, 0.2, 0.0],  # label 1: first
            [0.5, 0.1, 0.4, 0.3],  # label 2: second
            [0.9, 0.8, 0.7, 0.6],  # label 3: last
        ]
    )
    labels = torch.tensor([1, 2, 3])
    expected = {"top1": 100 / 3, "top2": 200 / 3, "top3": 200 / 3}
    assert topk_accuracy(logits, labels, ks=(1, 2, 3)) == pytest.approx(expected)


def test_default_keys_and_k_clipped_to_the_number_of_classes() -> None:
    logits = torch.tensor([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    # Three classes: top5 is top3, which always holds the label.
    assert topk_accuracy(logits, torch.tensor([0, 2])) == {"top1": 0.0, "top5": 100.0}


def test_ties_count_against_the_sample() -> None:
    # Constant logits (an untrained or collapsed model) must not score by luck of sort order.
    assert topk_accuracy(torch.zeros(5, 4), torch.arange(4).repeat(2)[:5], ks=(1, 3, 4)) == {
        "top1": 0.0,
        "top3": 0.0,
        "top4": 100.0,
    }
    # One other class tied with the label pushes it to second place.
    assert topk_accuracy(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([1]), ks=(1, 2)) == {"top1": 0.0, "top2": 100.0}


def test_matches_topk_reference_without_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    result = topk_accuracy(logits, labels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        assert result[f"top{k}"] == pytest.approx(100 * hits.float().mean().item())
    assert 0 < result["top1"] < result["top5"] < 100  # the random case is not trivially all-or-nothing


def test_bad_inputs_raise() -> None:
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(3,\), got \(2,\)"):
        topk_accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..3, got values from 0 to 4"):
        topk_accuracy(logits, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="integer class indices"):
        topk_accuracy(logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
        topk_accuracy(torch.randn(4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(torch.full((3, 4), float("nan")), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="ks must be"):
        topk_accuracy(logits, torch.tensor([0, 1, 2]), ks=())
