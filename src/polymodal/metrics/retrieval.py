"""Cross-modal retrieval metrics: recall at K and median rank in both directions, and their chance level.

An item is relevant to a query when their groups are equal (see ``ImageTextRecord.group``): an image has
several captions, and several images may show the same scene.

Ties: an irrelevant item whose score equals the best relevant score is counted *ahead* of it (pessimistic).
So a collapsed model that gives every pair the same score ranks each query's first hit last, instead of
collecting R@1 = 100 for free.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

__all__ = ["chance_recall", "retrieval_metrics"]

# Queries are ranked this many at a time, so the (queries × items) boolean temporaries stay bounded on
# large evaluation sets (5k images × 25k captions) without a Python loop per query.
_QUERY_CHUNK = 1024


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {tuple(ks)}")


def _check_groups(image_groups: Sequence[str], text_groups: Sequence[str]) -> None:
    """Every query needs at least one relevant item on the other side, else its rank is undefined."""
    if not image_groups or not text_groups:
        raise ValueError(
            f"need at least one image and one text, got {len(image_groups)} image groups "
            f"and {len(text_groups)} text groups"
        )
    images_without_text = set(image_groups) - set(text_groups)
    if images_without_text:
        raise ValueError(f"image groups with no text of the same group: {sorted(images_without_text)[:5]}")
    texts_without_image = set(text_groups) - set(image_groups)
    if texts_without_image:
        raise ValueError(f"text groups with no image of the same group: {sorted(texts_without_image)[:5]}")


def _group_codes(
    image_groups: Sequence[str], text_groups: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map group names to integers shared by both sides, so relevance is one tensor comparison."""
    codes: dict[str, int] = {}
    image_codes = [codes.setdefault(group, len(codes)) for group in image_groups]
    text_codes = [codes.setdefault(group, len(codes)) for group in text_groups]
    return torch.tensor(image_codes, device=device), torch.tensor(text_codes, device=device)


def _first_relevant_ranks(scores: torch.Tensor, query_codes: torch.Tensor, item_codes: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's best-scored relevant item, ties counted pessimistically.

    Args:
        scores: ``(Q, N)`` similarity of each query to each item.
        query_codes: ``(Q,)`` group code of each query.
        item_codes: ``(N,)`` group code of each item; every query has at least one item of its code.

    Returns:
        ``(Q,)`` long tensor in ``1..N``.
    """
    ranks = []
    for start in range(0, scores.shape[0], _QUERY_CHUNK):
        block = scores[start : start + _QUERY_CHUNK]  # (q, N)
        relevant = query_codes[start : start + _QUERY_CHUNK, None] == item_codes[None, :]  # (q, N)
        best_relevant = block.masked_fill(~relevant, float("-inf")).amax(dim=1, keepdim=True)  # (q, 1)
        # The first relevant item sits right after every irrelevant item scored at least as high.
        ahead = (block >= best_relevant) & ~relevant  # (q, N)
        ranks.append(1 + ahead.sum(dim=1))
    return torch.cat(ranks)


def _summarise(ranks: torch.Tensor, direction: str, ks: Sequence[int]) -> dict[str, float]:
    result = {f"{direction}_R@{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}
    # quantile, not median: torch.median returns the lower middle value, numpy and papers average the two.
    result[f"{direction}_median_rank"] = torch.quantile(ranks.double(), 0.5).item()
    return result


def retrieval_metrics(
    similarity: torch.Tensor,
    image_groups: Sequence[str],
    text_groups: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall at K (percent) and median rank of the first relevant item, image→text and text→image.

    Args:
        similarity: ``(n_images, n_texts)``; higher means more similar. Any device.
        image_groups: ``n_images`` group names; text j is relevant to image i when their groups are equal.
        text_groups: ``n_texts`` group names.
        ks: cut-offs for recall; a K at or above the number of items gives 100.

    Returns:
        ``image_to_text_R@{k}`` and ``text_to_image_R@{k}`` for each k, in 0..100, and
        ``image_to_text_median_rank`` / ``text_to_image_median_rank`` (1-based; the mean of the two middle
        ranks when the number of queries is even). Ties are counted against the query (module docstring).

    Raises:
        ValueError: on a shape mismatch, NaN scores, or a query group absent from the other side.
    """
    _check_ks(ks)
    if similarity.ndim != 2 or similarity.shape != (len(image_groups), len(text_groups)):
        raise ValueError(
            f"similarity must have shape (n_images, n_texts) = ({len(image_groups)}, {len(text_groups)}), "
            f"got {tuple(similarity.shape)}"
        )
    _check_groups(image_groups, text_groups)
    if torch.isnan(similarity).any():
        raise ValueError("similarity contains NaN")
    image_codes, text_codes = _group_codes(image_groups, text_groups, similarity.device)
    image_to_text = _first_relevant_ranks(similarity, image_codes, text_codes)
    text_to_image = _first_relevant_ranks(similarity.T, text_codes, image_codes)
    return {**_summarise(image_to_text, "image_to_text", ks), **_summarise(text_to_image, "text_to_image", ks)}


def _chance_recall_one_way(
    query_groups: Sequence[str], item_groups: Sequence[str], direction: str, ks: Sequence[int]
) -> dict[str, float]:
    num_items = len(item_groups)
    items_per_group = Counter(item_groups)
    # Queries with the same number r of relevant items share one probability, so sum over distinct r only.
    queries_per_relevant_count = Counter(items_per_group[group] for group in query_groups)
    result = {}
    for k in ks:
        top = min(k, num_items)
        # A random top-k misses every relevant item with probability C(n - r, k) / C(n, k); Python's int / int
        # is correctly rounded, so the big binomials cost no precision.
        expected_misses = sum(
            num_queries * math.comb(num_items - relevant, top) / math.comb(num_items, top)
            for relevant, num_queries in queries_per_relevant_count.items()
        )
        result[f"{direction}_R@{k}"] = 100.0 * (1.0 - expected_misses / len(query_groups))
    return result


def chance_recall(
    image_groups: Sequence[str], text_groups: Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Expected recall at K (percent) of a uniformly random ranking, in both directions.

    For a query with r relevant items among n, a random top K holds at least one of them with probability
    ``1 - C(n - r, K) / C(n, K)``; the result averages that over the queries. Compare it with
    :func:`retrieval_metrics` to say how far a model is above chance.

    Args:
        image_groups: group name of each image.
        text_groups: group name of each text.
        ks: cut-offs, as in :func:`retrieval_metrics`.

    Returns:
        ``image_to_text_R@{k}`` and ``text_to_image_R@{k}`` for each k, in 0..100.
    """
    _check_ks(ks)
    _check_groups(image_groups, text_groups)
    return {
        **_chance_recall_one_way(image_groups, text_groups, "image_to_text", ks),
        **_chance_recall_one_way(text_groups, image_groups, "text_to_image", ks),
    }
