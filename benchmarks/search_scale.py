"""Vector search at scale: exact vs IVF vs HNSW on N x 512 vectors, side by side on this machine.

For each N: build time, index memory, p50/p99 latency of one query and of a batch of 100, and recall@10 against
exact search, at each nprobe (IVF) / efSearch (HNSW) of a sweep. The data are clustered synthetic unit vectors
whose clusters overlap (embeddings cluster by topic; uniform random vectors would make every approximate index
look bad, well-separated clusters every one look perfect), and the queries are fresh points from the same
clusters. ``polymodal index build --kind auto`` takes its choices from
these measurements (see ``polymodal.index.vector_index.auto_index_parameters``).

    python benchmarks/search_scale.py [--sizes 100000 1000000] [--hnsw-max 100000] [--queries 200]
"""
from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

from polymodal.index import VectorIndex

DIM = 512


def clustered(count: int, clusters: int, seed: int, centres: np.ndarray | None = None,
              spread: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``count`` unit vectors around ``clusters`` centres that lie in a 32-dimensional subspace, plus isotropic
    noise of norm ~``spread``: neighbouring clusters overlap, as topics of real embeddings do, so an approximate index
    has to search more than one cluster to find the true neighbours."""
    rng = np.random.default_rng(seed)
    if centres is None:
        basis = np.linalg.qr(rng.standard_normal((DIM, 32)))[0].astype(np.float32)  # (512, 32) orthonormal
        centres = rng.standard_normal((clusters, 32), dtype=np.float32) @ basis.T
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((count, DIM), dtype=np.float32)
    for start in range(0, count, 100_000):  # in chunks: the noise of a million rows at once doubles the memory
        stop = min(start + 100_000, count)
        rows = centres[rng.integers(0, clusters, stop - start)]
        rows += rng.standard_normal(rows.shape, dtype=np.float32) * (spread / np.sqrt(DIM))
        vectors[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return vectors, centres


def latencies(index: VectorIndex, queries: np.ndarray) -> tuple[float, float, float]:
    """p50 and p99 milliseconds of single queries, and milliseconds of one batch of 100."""
    single = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None], k=10)
        single.append((time.perf_counter() - start) * 1e3)
    batch = []
    for _ in range(3):
        start = time.perf_counter()
        index.search(queries[:100], k=10)
        batch.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(single, 50)), float(np.percentile(single, 99)), float(np.median(batch))


def recall_at_10(index: VectorIndex, queries: np.ndarray, truth: list[set[int]]) -> float:
    hits = index.search(queries, k=10)
    return float(np.mean([len({hit.id for hit in row} & expected) / 10 for row, expected in zip(hits, truth)]))


def memory_mb(index: VectorIndex) -> float:
    return faiss.serialize_index(index._index).nbytes / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this N (slow to build)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[4, 8, 12, 16, 32, 64])
    parser.add_argument("--efs", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--spread", type=float, default=2.0, help="noise norm around a unit cluster centre")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs, D={DIM}")
    print(f"{'N':>9} {'index':26} {'build s':>8} {'MB':>7} {'p50 ms':>7} {'p99 ms':>7} {'x100 ms':>8} {'R@10':>6}")
    for size in args.sizes:
        vectors, centres = clustered(size, args.clusters, seed=0, spread=args.spread)
        queries, _ = clustered(args.queries, args.clusters, seed=1, centres=centres, spread=args.spread)
        keys = [str(i) for i in range(size)]
        start = time.perf_counter()
        exact = VectorIndex.build(vectors, keys, kind="flat")
        built = time.perf_counter() - start
        truth = [{hit.id for hit in row} for row in exact.search(queries, k=10)]
        p50, p99, batch = latencies(exact, queries)
        print(f"{size:9d} {'flat (exact)':26} {built:8.1f} {memory_mb(exact):7.0f} {p50:7.2f} {p99:7.2f} {batch:8.1f} "
              f"{1.0:6.3f}", flush=True)
        del exact
        kinds = [("ivf", "nprobe", args.nprobes)]
        if size <= args.hnsw_max:
            kinds.append(("hnsw", "ef_search", args.efs))
        for kind, knob, values in kinds:
            start = time.perf_counter()
            index = VectorIndex.build(vectors, keys, kind=kind)
            built = time.perf_counter() - start
            label = f"nlist={index._index.nlist}" if kind == "ivf" else "M=32"
            for value in values:
                setattr(index, knob, value)
                p50, p99, batch = latencies(index, queries)
                name = f"{kind} {label} {knob}={value}"
                print(f"{size:9d} {name:26} {built:8.1f} {memory_mb(index):7.0f} {p50:7.2f} {p99:7.2f} {batch:8.1f} "
                      f"{recall_at_10(index, queries, truth):6.3f}", flush=True)
            del index


if __name__ == "__main__":
    main()
