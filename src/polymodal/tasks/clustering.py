"""Clustering of a model's image embeddings: k-means with as many clusters as the set has classes, scored
against the labels with NMI and ARI (how well the embedding space groups what the labels group, with no
training on them)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import nn

from polymodal.data.records import ImageTextSet
from polymodal.metrics.clustering import adjusted_rand_index, kmeans, normalized_mutual_info
from polymodal.tasks.embed import embed_images

__all__ = ["evaluate_clustering"]


def evaluate_clustering(
    model: nn.Module, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor], *,
    seed: int = 0, restarts: int = 5, progress: bool = False,
) -> dict[str, float]:
    """``cluster_nmi`` and ``cluster_ari`` of k-means (k = number of classes, best of ``restarts``) on the unit-norm
    image embeddings of a labelled ``dataset``.

    Raises:
        ValueError: the set has no labels, or fewer images than classes.
    """
    labels = [record.label for record in dataset.records]
    if not dataset.class_names or any(label is None for label in labels):
        raise ValueError(f"{dataset.name}: clustering is scored against class labels; this set has none")
    features = embed_images(model, dataset, transform, progress=progress)
    result = kmeans(features, len(dataset.class_names), seed=seed, restarts=restarts)
    predicted = result.labels.tolist()
    return {"cluster_nmi": normalized_mutual_info(labels, predicted),
            "cluster_ari": adjusted_rand_index(labels, predicted), "clusters": len(dataset.class_names)}
