"""Clustering: agreement between two labelings (NMI, ARI) and k-means in torch.

NMI and ARI follow scikit-learn's ``normalized_mutual_info_score`` (arithmetic normalisation) and
``adjusted_rand_score``, edge cases included, computed here from the non-zero cells of the contingency table so
that many distinct labels (e.g. all singletons) never build an N x N table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = ["KMeansResult", "adjusted_rand_index", "kmeans", "normalized_mutual_info"]


def _contingency_cells(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[np.ndarray, ...]:
    """Non-zero contingency cells ``(rows, cols, counts)`` and the margins ``(row_sums, col_sums)``, all int64."""
    arrays = []
    for name, labels in (("labels_true", labels_true), ("labels_pred", labels_pred)):
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        array = np.asarray(labels)
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
        arrays.append(array)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"labelings differ in length: {arrays[0].shape[0]} vs {arrays[1].shape[0]}")
    if arrays[0].size == 0:
        raise ValueError("labelings are empty")
    (_, true_codes), (_, pred_codes) = (np.unique(array, return_inverse=True) for array in arrays)
    num_pred = int(pred_codes.max()) + 1
    cells, counts = np.unique(true_codes.astype(np.int64) * num_pred + pred_codes, return_counts=True)
    return cells // num_pred, cells % num_pred, counts, np.bincount(true_codes), np.bincount(pred_codes)


def normalized_mutual_info(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Normalised mutual information with arithmetic-mean normalisation, in 0..1 (natural logarithms).

    With ``n_ij`` the contingency table, ``a_i`` / ``b_j`` its row / column sums and ``N`` the sample count::

        MI  = sum_ij (n_ij / N) * log(N * n_ij / (a_i * b_j))
        H_U = -sum_i (a_i / N) * log(a_i / N),   H_V likewise with b_j
        NMI = MI / ((H_U + H_V) / 2)

    Invariant to renaming labels and symmetric. Two single-cluster labelings agree perfectly and give 1.0;
    if exactly one is a single cluster, MI = 0 and NMI = 0.0 (both as scikit-learn).

    Raises:
        ValueError: if the labelings are not 1-D, differ in length or are empty.
    """
    rows, cols, counts, row_sums, col_sums = _contingency_cells(labels_true, labels_pred)
    if row_sums.size == 1 and col_sums.size == 1:
        return 1.0
    n = float(counts.sum())
    mutual_info = float(np.sum(counts / n * (np.log(n * counts) - np.log(row_sums[rows] * col_sums[cols]))))
    # Independent labelings give MI = 0 up to rounding, which can come out a hair below zero.
    if mutual_info <= 0.0:
        return 0.0

    def entropy(sums: np.ndarray) -> float:
        return float(-np.sum(sums / n * np.log(sums / n)))

    return mutual_info / ((entropy(row_sums) + entropy(col_sums)) / 2)


def adjusted_rand_index(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985): pair agreement corrected for chance, 1.0 at best.

    Over ordered pairs of distinct samples, TP = same cluster in both, FN = same only in ``labels_true``,
    FP = same only in ``labels_pred``, TN = different in both::

        ARI = 2 (TP * TN - FN * FP) / ((TP + FN)(FN + TN) + (TP + FP)(FP + TN))

    which equals ``(RI - E[RI]) / (max RI - E[RI])`` under the permutation model. Near 0 for random labelings,
    negative when worse than chance. Labelings with FN = FP = 0 (identical up to renaming, one sample
    included) give 1.0, as scikit-learn.

    Raises:
        ValueError: if the labelings are not 1-D, differ in length or are empty.
    """
    _, _, counts, row_sums, col_sums = _contingency_cells(labels_true, labels_pred)
    # Python ints: the products below reach N**4 and would overflow int64.
    n = int(counts.sum())
    both = int(np.sum(counts**2))
    true_pairs = int(np.sum(row_sums**2)) - n
    pred_pairs = int(np.sum(col_sums**2)) - n
    tp = both - n
    fn = true_pairs - tp
    fp = pred_pairs - tp
    tn = n * (n - 1) - tp - fn - fp
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


@dataclass(frozen=True)
class KMeansResult:
    """Output of ``kmeans``.

    Attributes:
        labels: ``(N,)`` long tensor, index of each sample's nearest centroid.
        centroids: ``(k, D)`` cluster centres, on the input's device.
        inertia: sum over samples of the squared distance to their centroid.
    """

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: float


def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    # Expanded form: one matmul instead of an (N, k, D) difference tensor; rounding can dip below zero.
    return (x_sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]).clamp_min_(0)


def _kmeans_plus_plus(x: torch.Tensor, x_sq: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (as scikit-learn): each step draws 2 + ln k candidates with probability proportional
    to the squared distance to the nearest chosen centre, and keeps the one that lowers the potential most."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    # Uniforms come from a CPU generator and are mapped through a cumulative sum on the device, so a seed picks
    # the same points on any device, up to rounding.
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    closest = _squared_distances(x, x_sq, x[first : first + 1])[:, 0]
    for _ in range(1, k):
        cumulative = closest.double().cumsum(0)
        targets = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device) * cumulative[-1]
        # side='right' never lands on a zero-weight point, i.e. one already chosen.
        candidates = torch.searchsorted(cumulative, targets, right=True).clamp_max_(n - 1)
        potentials = torch.minimum(closest[:, None], _squared_distances(x, x_sq, x[candidates]))  # (N, trials)
        best = potentials.sum(0).argmin()
        closest = potentials[:, best]
        centres.append(x[candidates[best]])
    return torch.stack(centres)


def _lloyd(
    x: torch.Tensor, x_sq: torch.Tensor, centroids: torch.Tensor, iterations: int, shift_limit: float
) -> torch.Tensor:
    k = centroids.shape[0]
    for _ in range(iterations):
        distances = _squared_distances(x, x_sq, centroids)
        labels = distances.argmin(1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        updated = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = counts == 0
        num_empty = int(empty.sum())
        if num_empty:
            # Re-seed each empty cluster with one of the points worst served by the current centroids.
            own_distance = distances.gather(1, labels[:, None])[:, 0]
            updated[empty] = x[own_distance.topk(num_empty).indices]
        shift = float(((updated - centroids) ** 2).sum())
        centroids = updated
        if shift <= shift_limit:
            break
    return centroids


def kmeans(
    features: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    iterations: int = 100,
    tolerance: float = 1e-4,
    restarts: int = 1,
) -> KMeansResult:
    """Lloyd's k-means with greedy k-means++ initialisation, on the device ``features`` lives on.

    Minimises the inertia ``sum_n min_c ||x_n - mu_c||^2``. Each iteration assigns every sample to its nearest
    centroid and moves each centroid to the mean of its samples; a cluster left empty is re-seeded with the
    sample farthest from its centroid. Iteration stops after ``iterations`` steps or once the summed squared
    centroid shift is at most ``tolerance`` times the mean per-feature variance (scikit-learn's criterion).
    With ``restarts`` > 1 the run with the lowest inertia is kept. Memory is O(N k) for the distance matrix.

    Args:
        features: ``(N, D)`` samples; computed in float64 if given float64, else float32.
        k: number of clusters, ``1 <= k <= N``.
        seed: seeds the initialisation; equal seeds give equal results on the same device.
        iterations: maximum Lloyd iterations per restart, >= 1.
        tolerance: relative convergence threshold, >= 0.
        restarts: number of independent initialisations, >= 1.

    Raises:
        ValueError: for non-2-D or empty ``features``, NaN or infinite values, ``k`` outside ``1..N``, or
            non-positive ``iterations`` / ``restarts`` or negative ``tolerance``.
    """
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features must have shape (N, D) with N, D >= 1, got {tuple(features.shape)}")
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..N = 1..{n}, got {k}")
    if iterations < 1 or restarts < 1:
        raise ValueError(f"iterations and restarts must be >= 1, got {iterations} and {restarts}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    x = features.detach()
    x = x if x.dtype == torch.float64 else x.float()
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    x_sq = (x * x).sum(1)
    shift_limit = tolerance * float(x.var(0, unbiased=False).mean())
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(restarts):
        centroids = _lloyd(x, x_sq, _kmeans_plus_plus(x, x_sq, k, generator), iterations, shift_limit)
        # Final assignment, so labels belong to the centroids returned; inertia from exact differences.
        labels = _squared_distances(x, x_sq, centroids).argmin(1)
        inertia = float(((x - centroids[labels]) ** 2).sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels=labels, centroids=centroids, inertia=inertia)
    assert best is not None  # restarts >= 1
    return best
