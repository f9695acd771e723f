"""NMI and ARI against scikit-learn (the reference, used here only), and k-means on generated blobs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from polymodal.metrics import KMeansResult, adjusted_rand_index, kmeans, normalized_mutual_info

_EDGE_CASES = {
    "identical": ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
    "renamed labels": ([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 9, 9]),
    "string labels": (["a", "a", "b", "b"], ["y", "y", "x", "x"]),
    "both one cluster": ([0, 0, 0, 0], [7, 7, 7, 7]),
    "true one cluster": ([0, 0, 0, 0], [0, 1, 2, 3]),
    "pred one cluster": ([0, 1, 0, 1, 2], [4, 4, 4, 4, 4]),
    "both singletons": ([0, 1, 2, 3], [3, 2, 1, 0]),
    "singletons vs pairs": ([0, 1, 2, 3], [0, 0, 1, 1]),
    "independent": ([0, 0, 1, 1], [0, 1, 0, 1]),
    "one sample": ([3], [8]),
    "nested": ([0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3]),
}


@pytest.mark.parametrize("case", list(_EDGE_CASES))
def test_edge_cases_match_sklearn(case: str) -> None:
    labels_true, labels_pred = _EDGE_CASES[case]
    assert normalized_mutual_info(labels_true, labels_pred) == pytest.approx(
        normalized_mutual_info_score(labels_true, labels_pred), abs=1e-12
    )
    assert adjusted_rand_index(labels_true, labels_pred) == pytest.approx(
        adjusted_rand_score(labels_true, labels_pred), abs=1e-12
    )


def test_hand_computed_values() -> None:
    # Perfect agreement up to renaming.
    assert normalized_mutual_info([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    # Independent halves: MI = 0; ordered pairs TP = 0, FN = FP = 4, TN = 4 -> ARI = 2 (0 - 16) / (4*8 + 4*8) = -0.5.
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == -0.5
    # Classes split into singletons refine the truth, so MI = H_U = ln 2; H_V = ln 4 = 2 ln 2
    # -> NMI = ln 2 / ((ln 2 + 2 ln 2) / 2) = 2/3.
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 2, 3]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(8))
def test_random_labelings_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels_true = rng.integers(0, rng.integers(1, 12), n)
    labels_pred = rng.integers(0, rng.integers(1, 12), n)
    # Half the draws share structure, so values away from 0 are covered too.
    if seed % 2:
        labels_pred = np.where(rng.random(n) < 0.7, labels_true + 10, labels_pred)
    assert normalized_mutual_info(labels_true, labels_pred) == pytest.approx(
        normalized_mutual_info_score(labels_true, labels_pred), abs=1e-12
    )
    assert adjusted_rand_index(labels_true, labels_pred) == pytest.approx(
        adjusted_rand_score(labels_true, labels_pred), abs=1e-12
    )


def test_accepts_tensors_and_many_distinct_labels() -> None:
    labels = torch.arange(20_000)
    # 20 000 singletons on both sides: only non-zero cells are stored, never a 20 000 x 20 000 table.
    assert adjusted_rand_index(labels, labels.flip(0)) == 1.0
    assert normalized_mutual_info(labels, labels) == pytest.approx(1.0)


def test_label_errors() -> None:
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        adjusted_rand_index([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        normalized_mutual_info([], [])
    with pytest.raises(ValueError, match="1-D"):
        adjusted_rand_index([[0, 1]], [[0, 1]])


# ---------------------------------------------------------------------------------------------------- k-means
def _blobs(seed: int, std: float, centers: int = 5, n: int = 400) -> tuple[torch.Tensor, np.ndarray]:
    x, y = make_blobs(n_samples=n, centers=centers, n_features=4, cluster_std=std, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), y


@pytest.mark.parametrize("seed", range(4))
def test_recovers_well_separated_blobs(seed: int) -> None:
    x, y = _blobs(seed, std=0.3)
    result = kmeans(x, 5, seed=seed, restarts=3)
    assert isinstance(result, KMeansResult)
    assert result.labels.dtype == torch.long and result.labels.shape == (400,)
    assert result.centroids.shape == (5, 4)
    assert adjusted_rand_index(y, result.labels) == 1.0
    # Inertia is the summed squared distance to the assigned centroids.
    expected = float(((x - result.centroids[result.labels]) ** 2).sum())
    assert result.inertia == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_inertia_within_one_percent_of_sklearn(seed: int) -> None:
    x, _ = _blobs(seed, std=2.5, centers=8, n=600)  # overlapping blobs: local optima exist
    ours = kmeans(x, 8, seed=seed, restarts=10).inertia
    reference = KMeans(n_clusters=8, n_init=10, random_state=seed).fit(x.double().numpy()).inertia_
    assert ours <= reference * 1.01


def test_seeded_runs_are_deterministic() -> None:
    x, _ = _blobs(0, std=3.0, centers=6)
    first, second = kmeans(x, 6, seed=7), kmeans(x, 6, seed=7)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.centroids, second.centroids)
    assert first.inertia == second.inertia


def test_small_edge_cases() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]])
    one = kmeans(x, 1)
    assert torch.equal(one.labels, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(one.centroids, x.mean(0, keepdim=True))
    every = kmeans(x, 3)  # k = N: each point its own cluster
    assert sorted(every.labels.tolist()) == [0, 1, 2] and every.inertia == 0.0
    # Fewer distinct points than clusters: empty clusters are re-seeded without error, inertia stays 0.
    repeated = kmeans(torch.tensor([[1.0, 2.0]] * 4 + [[3.0, 4.0]] * 4), 3)
    assert repeated.inertia == 0.0
    # float64 stays float64; integer input is computed in float32.
    assert kmeans(x.double(), 2).centroids.dtype == torch.float64
    assert kmeans(torch.tensor([[0, 0], [0, 1], [9, 9]]), 2).centroids.dtype == torch.float32


def test_kmeans_bad_inputs_raise() -> None:
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k must lie in 1..N = 1..5, got 0"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="got 6"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        kmeans(torch.randn(5), 2)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        kmeans(torch.randn(2, 3, 4), 2)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="infinite"):
        kmeans(torch.tensor([[0.0, float("inf")], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="restarts"):
        kmeans(x, 2, restarts=0)
    with pytest.raises(ValueError, match="tolerance"):
        kmeans(x, 2, tolerance=-1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_features_device() -> None:
    x, y = _blobs(0, std=0.3)
    result = kmeans(x.cuda(), 5, restarts=3)
    assert result.labels.is_cuda and result.centroids.is_cuda
    assert adjusted_rand_index(y, result.labels) == 1.0


def test_empty_cluster_is_reseeded_with_the_farthest_point() -> None:
    from polymodal.metrics.clustering import _lloyd

    x = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 10.0], [10.0, 10.1], [20.0, 0.0]])
    # The middle centroid is nearest to no point; (20, 0) is the point farthest from its own centroid.
    start = torch.tensor([[0.0, 0.05], [100.0, 100.0], [10.0, 10.05]])
    centroids = _lloyd(x, (x * x).sum(1), start, iterations=10, shift_limit=0.0)
    assert torch.allclose(centroids, torch.tensor([[0.0, 0.05], [20.0, 0.0], [10.0, 10.05]]))
