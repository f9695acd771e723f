"""VectorIndex: exact search against numpy, recall of the approximate kinds, save/load and crash safety."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from polymodal.index import IndexLoadError, SearchHit, VectorIndex, default_nlist, vector_index


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def clustered(count: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Unit vectors scattered around ``clusters`` random centres, like embeddings of a few concepts."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit_rows(centres[rng.integers(0, clusters, count)] + 0.5 * rng.standard_normal((count, dim)))


def make_keys(count: int, start: int = 0) -> list[str]:
    return [f"images/{i:05d}.png" for i in range(start, start + count)]


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """5,000 stored vectors and 200 queries near stored ones (D=64), fixed seed."""
    vectors = clustered(5000, 64, seed=0)
    rng = np.random.default_rng(1)
    queries = unit_rows(vectors[rng.choice(5000, 200, replace=False)] + 0.1 * rng.standard_normal((200, 64)))
    return vectors, queries


@pytest.fixture
def small() -> VectorIndex:
    return VectorIndex.build(clustered(300, 16, seed=2), make_keys(300), model_name="clip-tiny", checkpoint="ck/")


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_search_equals_numpy_brute_force(metric: str) -> None:
    vectors, queries = clustered(400, 32, seed=3), clustered(7, 32, seed=4)
    keys = make_keys(400)
    index = VectorIndex.build(vectors, keys, kind="flat", metric=metric)
    if metric == "ip":
        scores = queries @ vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    else:
        scores = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :10]
    hits = index.search(queries, k=10)
    assert len(hits) == len(queries)
    for row, row_hits in enumerate(hits):
        assert [hit.key for hit in row_hits] == [keys[i] for i in order[row]]
        assert [hit.id for hit in row_hits] == order[row].tolist()
        np.testing.assert_allclose([hit.score for hit in row_hits], scores[row, order[row]], atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_at_10_against_exact(corpus: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    vectors, queries = corpus
    keys = make_keys(len(vectors))
    exact = VectorIndex.build(vectors, keys, kind="flat").search(queries, k=10)
    approximate = VectorIndex.build(vectors, keys, kind=kind).search(queries, k=10)
    recall = np.mean([
        len({hit.id for hit in found} & {hit.id for hit in truth}) / 10
        for found, truth in zip(approximate, exact)
    ])
    assert recall >= 0.9, f"{kind} recall@10 = {recall:.3f}"


def test_ivf_defaults_and_nprobe(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = corpus
    index = VectorIndex.build(vectors[:2000], make_keys(2000), kind="ivf")
    assert default_nlist(2000) == 45  # round(sqrt(2000)); 2000 // 39 = 51 does not bind
    assert default_nlist(100) == 2  # 39 training points per list bind before sqrt(100) = 10
    index.nprobe = 45  # probing every list makes IVF exhaustive, hence exact
    exact = VectorIndex.build(vectors[:2000], make_keys(2000)).search(queries, k=5)
    assert [[h.id for h in row] for row in index.search(queries, k=5)] == [[h.id for h in row] for row in exact]
    with pytest.raises(ValueError, match="nprobe"):
        index.nprobe = 46
    with pytest.raises(AttributeError, match="ivf"):
        VectorIndex.build(vectors[:10], make_keys(10)).nprobe = 2


def test_k_larger_than_count_returns_every_vector() -> None:
    index = VectorIndex.build(clustered(3, 8, seed=5), ["a", "b", "c"])
    (hits,) = index.search(np.ones(8, dtype=np.float32), k=10)  # a (D,) query answers as one row
    assert sorted(hit.key for hit in hits) == ["a", "b", "c"]
    assert all(isinstance(hit, SearchHit) for hit in hits)


def test_never_returns_faiss_placeholders() -> None:
    # One probed list out of ten holds far fewer than k vectors, so FAISS pads its answer with id -1.
    index = VectorIndex.build(clustered(500, 16, seed=6), make_keys(500), kind="ivf", nlist=10)
    index.nprobe = 1
    (hits,) = index.search(clustered(1, 16, seed=7), k=400)
    assert 0 < len(hits) < 400
    assert all(0 <= hit.id < 500 and hit.key == f"images/{hit.id:05d}.png" for hit in hits)


def test_empty_flat_index_answers_no_hits_and_accepts_adds() -> None:
    index = VectorIndex.build(np.zeros((0, 8), dtype=np.float32), [])
    assert index.search(np.ones((2, 8)), k=3) == [[], []]
    index.add(np.ones(8), ["only"])
    assert [hit.key for hit in index.search(np.ones(8), k=3)[0]] == ["only"]


def test_normalize_makes_scores_cosine_for_build_add_and_search() -> None:
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((50, 8)) * 7.0
    index = VectorIndex.build(vectors, make_keys(50), normalize=True)
    index.add(vectors[0] * 3.0, ["scaled copy"])
    (hits,) = index.search(vectors[0] * 0.01, k=2)
    assert {hit.key for hit in hits} == {"images/00000.png", "scaled copy"}
    np.testing.assert_allclose([hit.score for hit in hits], [1.0, 1.0], atol=1e-5)
    assert np.abs(vectors[0]).max() > 1.0  # the caller's array was not normalised in place


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_gives_identical_results(tmp_path: Path, kind: str) -> None:
    vectors, queries = clustered(1000, 32, seed=9), clustered(20, 32, seed=10)
    index = VectorIndex.build(vectors, make_keys(1000), kind=kind, metadata={"dataset": "shapes", "split": "val"},
                              model_name="clip-tiny", checkpoint="runs/a/ckpt")
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.search(queries, k=7) == index.search(queries, k=7)
    assert (loaded.kind, loaded.metric, loaded.dim, len(loaded)) == (kind, "ip", 32, 1000)
    assert (loaded.model_name, loaded.checkpoint) == ("clip-tiny", "runs/a/ckpt")
    assert loaded.metadata == {"dataset": "shapes", "split": "val"}
    assert loaded.keys == index.keys
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.faiss", "keys.json", "meta.json"]
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert (meta["kind"], meta["dim"], meta["count"]) == (kind, 32, 1000)


def test_add_after_load_continues_ids(tmp_path: Path, small: VectorIndex) -> None:
    small.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    extra = clustered(5, 16, seed=11)
    loaded.add(extra, make_keys(5, start=300))
    assert len(loaded) == 305
    hits = loaded.search(extra, k=1)
    assert [row[0].id for row in hits] == [300, 301, 302, 303, 304]
    assert [row[0].key for row in hits] == make_keys(5, start=300)
    loaded.save(tmp_path)
    assert VectorIndex.load(tmp_path).search(extra, k=1) == hits


def test_a_save_interrupted_between_its_two_renames_is_put_back(tmp_path: Path, small: VectorIndex,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The old index was set aside and the new one not yet renamed in: the next load restores the old one."""
    directory = tmp_path / "index"
    small.save(directory)
    query = clustered(3, 16, seed=12)
    before = small.search(query, k=5)
    real_rename, calls = Path.rename, []

    def rename(self: Path, target: Path) -> Path:
        calls.append(target)
        if len(calls) == 2:  # the first sets the old index aside, the second would move the new one in
            raise OSError("simulated crash")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="simulated crash"):
        VectorIndex.build(clustered(300, 16, seed=14), make_keys(300)).save(directory)
    monkeypatch.undo()
    assert not directory.exists() and len(list(tmp_path.glob(".replaced-index-*"))) == 1
    assert VectorIndex.load(directory).search(query, k=5) == before  # load puts the old index back
    assert not list(tmp_path.glob(".replaced-*")) and not list(tmp_path.glob(".staging-*"))


def test_a_folder_of_other_files_is_not_replaced(tmp_path: Path, small: VectorIndex) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        small.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_dimension_mismatch_names_expected_and_got(small: VectorIndex) -> None:
    with pytest.raises(ValueError, match="dimension 15, expected 16"):
        small.search(np.ones((2, 15), dtype=np.float32))
    with pytest.raises(ValueError, match="dimension 17, expected 16"):
        small.add(np.ones((1, 17), dtype=np.float32), ["x"])


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k(small: VectorIndex, k: object) -> None:
    with pytest.raises(ValueError, match="k must be a positive integer"):
        small.search(np.ones(16), k=k)  # type: ignore[arg-type]


def test_bad_build_and_add_inputs(small: VectorIndex) -> None:
    vectors = clustered(10, 16, seed=16)
    with pytest.raises(ValueError, match="10 vectors but 9 keys"):
        VectorIndex.build(vectors, make_keys(9))
    with pytest.raises(ValueError, match="2 vectors but 1 keys"):
        small.add(vectors[:2], ["one"])
    with pytest.raises(ValueError, match="already in the index"):
        small.add(vectors[:1], ["images/00000.png"])
    with pytest.raises(ValueError, match="distinct"):
        VectorIndex.build(vectors[:2], ["same", "same"])
    with pytest.raises(TypeError, match="sequence of strings"):
        VectorIndex.build(vectors[:2], "ab")
    with pytest.raises(ValueError, match="NaN"):
        VectorIndex.build(np.full((2, 16), np.nan), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        VectorIndex.build(np.ones((2, 2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="kind"):
        VectorIndex.build(vectors, make_keys(10), kind="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric"):
        VectorIndex.build(vectors, make_keys(10), metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nlist must be between 1 and"):
        VectorIndex.build(vectors, make_keys(10), kind="ivf", nlist=11)
    assert len(small) == 300  # failed adds left the index unchanged


def test_load_missing_directory_and_files(tmp_path: Path, small: VectorIndex) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VectorIndex.load(tmp_path / "nowhere")
    small.save(tmp_path)
    for name in ("keys.json", "index.faiss", "meta.json"):
        (tmp_path / name).unlink()
        with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
            VectorIndex.load(tmp_path)
        small.save(tmp_path)


@pytest.mark.parametrize(("content", "problem"), [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not UTF-8")])
def test_load_corrupt_meta(tmp_path: Path, small: VectorIndex, content: bytes, problem: str) -> None:
    small.save(tmp_path)
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(IndexLoadError, match=rf"meta\.json: {problem}"):
        VectorIndex.load(tmp_path)


@pytest.mark.parametrize(("field", "value", "blamed"), [("count", 299, "keys.json"), ("dim", 8, "index.faiss")])
def test_load_count_and_dim_mismatch(tmp_path: Path, small: VectorIndex, field: str, value: int,
                                     blamed: str) -> None:
    small.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(IndexLoadError, match=rf"{blamed}.* says {field}={value}"):
        VectorIndex.load(tmp_path)


def test_auto_picks_exact_search_for_small_sets_and_ivf_above() -> None:
    small_set = VectorIndex.build(clustered(300, 16, seed=20), make_keys(300), kind="auto")
    assert small_set.kind == "flat"
    count = vector_index.AUTO_FLAT_MAX + 1
    large = VectorIndex.build(clustered(count, 16, seed=21), make_keys(count), kind="auto")
    assert large.kind == "ivf" and large._index.nlist == default_nlist(count)
    assert large.nprobe == min(default_nlist(count), 8)
    assert vector_index.auto_index_parameters(1_000_000) == ("ivf", 1000, 10)  # 1% of the lists at a million
    assert vector_index.auto_index_parameters(100_000) == ("ivf", 316, 8)
    with pytest.raises(ValueError, match="nlist applies to kind='ivf' only"):
        VectorIndex.build(clustered(10, 16, seed=22), make_keys(10), kind="auto", nlist=4)


def test_adding_in_chunks_builds_the_same_index(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors, keys = clustered(100, 16, seed=23), make_keys(100)
    whole = VectorIndex.build(vectors, keys, normalize=True)
    monkeypatch.setattr(vector_index, "ADD_CHUNK", 7)
    chunked = VectorIndex.build(vectors, keys, normalize=True)
    queries = clustered(5, 16, seed=24)
    assert chunked.keys == whole.keys and chunked.search(queries, k=10) == whole.search(queries, k=10)
    with pytest.raises(ValueError, match="keys must be distinct|already in the index"):
        VectorIndex.build(vectors[:10], ["a"] * 5 + ["b"] * 5)
