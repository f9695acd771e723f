"""Retrieval metrics on hand-ranked cases, against a sort-based loop, and chance level against simulation."""
from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch

from polymodal.metrics import chance_recall, retrieval_metrics
from polymodal.metrics import retrieval as retrieval_module

# Images a, b, c; texts 0 and 1 both caption image a.
IMAGE_GROUPS = ["a", "b", "c"]
TEXT_GROUPS = ["a", "a", "b", "c"]
SIMILARITY = torch.tensor(
    [
        [0.90, 0.10, 0.50, 0.30],  # image a: text 0 is first             -> rank 1
        [0.80, 0.20, 0.40, 0.60],  # image b: texts 0 and 3 beat text 2    -> rank 3
        [0.70, 0.75, 0.10, 0.20],  # image c: texts 0 and 1 beat text 3    -> rank 3
    ]
)
# Text -> image (columns): text 0 -> a first (1); text 1 -> a below c and b (3); text 2 -> b below a (2);
# text 3 -> c below b and a (3).


def test_hand_ranked_case() -> None:
    metrics = retrieval_metrics(SIMILARITY, IMAGE_GROUPS, TEXT_GROUPS, ks=(1, 2, 5))
    assert metrics == pytest.approx(
        {
            "image_to_text_R@1": 100 / 3,
            "image_to_text_R@2": 100 / 3,
            "image_to_text_R@5": 100.0,
            "image_to_text_median_rank": 3.0,
            "text_to_image_R@1": 25.0,
            "text_to_image_R@2": 50.0,
            "text_to_image_R@5": 100.0,
            "text_to_image_median_rank": 2.5,  # ranks 1, 3, 2, 3: the two middle values averaged
        }
    )


def test_default_keys() -> None:
    metrics = retrieval_metrics(SIMILARITY, IMAGE_GROUPS, TEXT_GROUPS)
    assert list(metrics) == [
        "image_to_text_R@1",
        "image_to_text_R@5",
        "image_to_text_R@10",
        "image_to_text_median_rank",
        "text_to_image_R@1",
        "text_to_image_R@5",
        "text_to_image_R@10",
        "text_to_image_median_rank",
    ]


def test_group_shared_by_several_images() -> None:
    # Images 0 and 1 show the same scene "x": a text of "x" is answered by whichever of them scores higher.
    similarity = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.3]])
    metrics = retrieval_metrics(similarity, ["x", "x", "y"], ["x", "y"], ks=(1,))
    # text "x" (column 0): image 1 (0.8) is a hit at rank 1; text "y" (column 1): image 2 at 0.3 is below 0.9.
    assert metrics["text_to_image_R@1"] == pytest.approx(50.0)
    assert metrics["text_to_image_median_rank"] == pytest.approx(1.5)
    # Only image 1 ranks its own group's text first; images 0 and 2 put the other text ahead.
    assert metrics["image_to_text_R@1"] == pytest.approx(100 / 3)


def test_ties_count_against_the_query() -> None:
    # Image "a": the irrelevant text 0 ties with its relevant text 1 and is ranked ahead (rank 2).
    # Image "b": its text 0 is strictly first (rank 1).
    similarity = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.1, 0.2]])
    metrics = retrieval_metrics(similarity, ["a", "b"], ["b", "a", "b"], ks=(1, 2))
    assert metrics["image_to_text_R@1"] == 50.0
    assert metrics["image_to_text_R@2"] == 100.0
    assert metrics["image_to_text_median_rank"] == 1.5
    # Constant similarity (a collapsed model): every first hit comes after all n - r irrelevant items.
    groups = ["a", "b", "c", "d"]
    flat = retrieval_metrics(torch.zeros(4, 4), groups, groups, ks=(1, 4))
    assert flat["image_to_text_R@1"] == 0.0 and flat["text_to_image_R@1"] == 0.0
    assert flat["image_to_text_median_rank"] == 4.0 and flat["image_to_text_R@4"] == 100.0


def _sorted_ranks(similarity: torch.Tensor, query_groups: list[str], item_groups: list[str]) -> list[int]:
    """Reference: sort each query's items by score, irrelevant first among equals; 1-based first hit."""
    ranks = []
    for query, group in enumerate(query_groups):
        order = sorted(
            range(len(item_groups)),
            key=lambda item: (-similarity[query, item].item(), item_groups[item] == group),
        )
        ranks.append(1 + next(i for i, item in enumerate(order) if item_groups[item] == group))
    return ranks


def test_matches_sorting_loop_with_many_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    num_images, captions_per_image = 12, 3
    image_groups = [f"scene{i // 2}" for i in range(num_images)]  # pairs of images share a scene
    text_groups = [group for group in image_groups for _ in range(captions_per_image)]
    # Integer scores in 0..4 make ties common, so the tie rule is exercised on every query.
    similarity = torch.randint(0, 5, (num_images, len(text_groups)), generator=generator).float()
    ks = (1, 3, 10)
    metrics = retrieval_metrics(similarity, image_groups, text_groups, ks=ks)
    for direction, ranks in [
        ("image_to_text", _sorted_ranks(similarity, image_groups, text_groups)),
        ("text_to_image", _sorted_ranks(similarity.T, text_groups, image_groups)),
    ]:
        for k in ks:
            expected = 100 * sum(rank <= k for rank in ranks) / len(ranks)
            assert metrics[f"{direction}_R@{k}"] == pytest.approx(expected)
        assert metrics[f"{direction}_median_rank"] == pytest.approx(statistics.median(ranks))


def test_query_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    groups = [str(i % 9) for i in range(30)]
    similarity = torch.randn(30, 30, generator=generator)
    whole = retrieval_metrics(similarity, groups, groups)
    monkeypatch.setattr(retrieval_module, "_QUERY_CHUNK", 7)  # 30 queries -> chunks of 7, 7, 7, 7, 2
    assert retrieval_metrics(similarity, groups, groups) == whole


def test_k_beyond_the_number_of_items_is_100() -> None:
    metrics = retrieval_metrics(SIMILARITY, IMAGE_GROUPS, TEXT_GROUPS, ks=(50,))
    assert metrics["image_to_text_R@50"] == 100.0 and metrics["text_to_image_R@50"] == 100.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"similarity must have shape .*\(3, 4\), got \(4, 3\)"):
        retrieval_metrics(SIMILARITY.T, IMAGE_GROUPS, TEXT_GROUPS)
    with pytest.raises(ValueError, match=r"image groups with no text .*\['c'\]"):
        retrieval_metrics(SIMILARITY[:, :3], IMAGE_GROUPS, TEXT_GROUPS[:3])
    with pytest.raises(ValueError, match=r"text groups with no image .*\['c'\]"):
        retrieval_metrics(SIMILARITY[:2], IMAGE_GROUPS[:2], TEXT_GROUPS)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(SIMILARITY.clone().fill_(float("nan")), IMAGE_GROUPS, TEXT_GROUPS)
    with pytest.raises(ValueError, match="ks must be"):
        retrieval_metrics(SIMILARITY, IMAGE_GROUPS, TEXT_GROUPS, ks=(0, 1))


# ---------------------------------------------------------------- chance level

def test_chance_recall_closed_form_by_hand() -> None:
    # Image "a" has 2 relevant texts among 4: P(hit in top 1) = 2/4, P(hit in top 2) = 1 - C(2,2)/C(4,2) = 5/6.
    # Images "b" and "c" have 1 relevant text each: 1/4 and 2/4.
    chance = chance_recall(IMAGE_GROUPS, TEXT_GROUPS, ks=(1, 2))
    assert chance["image_to_text_R@1"] == pytest.approx(100 * (1 / 2 + 1 / 4 + 1 / 4) / 3)
    assert chance["image_to_text_R@2"] == pytest.approx(100 * (5 / 6 + 1 / 2 + 1 / 2) / 3)
    # Every text has 1 relevant image among 3.
    assert chance["text_to_image_R@1"] == pytest.approx(100 / 3)
    assert chance["text_to_image_R@2"] == pytest.approx(200 / 3)


def test_chance_recall_matches_enumeration_of_every_ranking() -> None:
    image_groups = ["a", "b"]
    text_groups = ["a", "a", "b", "a", "b"]
    ks = (1, 2, 3)
    chance = chance_recall(image_groups, text_groups, ks=ks)
    orders = list(itertools.permutations(range(len(text_groups))))
    for k in ks:
        hits = sum(
            any(text_groups[item] == group for item in order[:k]) for group in image_groups for order in orders
        )
        assert chance[f"image_to_text_R@{k}"] == pytest.approx(100 * hits / (len(orders) * len(image_groups)))


def test_chance_recall_matches_monte_carlo() -> None:
    generator = torch.Generator().manual_seed(2)
    image_groups = ["a", "a", "b", "c", "d", "e"]
    text_groups = ["a", "a", "a", "b", "b", "c", "d", "d", "e", "e", "e", "e"]
    trials = 3000
    ks = (1, 3, 5)
    chance = chance_recall(image_groups, text_groups, ks=ks)
    # Stacking the trials as extra queries scores thousands of random rankings in one vectorised call.
    # Text -> image is the image -> text direction of the transposed problem.
    image_side = retrieval_metrics(
        torch.rand(trials * len(image_groups), len(text_groups), generator=generator),
        image_groups * trials,
        text_groups,
        ks=ks,
    )
    text_side = retrieval_metrics(
        torch.rand(trials * len(text_groups), len(image_groups), generator=generator),
        text_groups * trials,
        image_groups,
        ks=ks,
    )
    for k in ks:
        for direction, simulated, num_queries in [
            ("image_to_text", image_side, trials * len(image_groups)),
            ("text_to_image", text_side, trials * len(text_groups)),
        ]:
            expected = chance[f"{direction}_R@{k}"]
            # Four standard errors of a Bernoulli mean, in percent.
            tolerance = 4 * 100 * math.sqrt(0.25 / num_queries)
            assert simulated[f"image_to_text_R@{k}"] == pytest.approx(expected, abs=tolerance)


def test_chance_recall_rejects_unmatched_groups() -> None:
    with pytest.raises(ValueError, match="text groups with no image"):
        chance_recall(["a"], ["a", "b"])
