"""The live index alone: adds go to a copy that is saved before it is searched, a failed save changes nothing,
concurrent adds from many threads all land, and the copy keeps every search setting of the original."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from polymodal.index import VectorIndex
from polymodal.serve.live_index import LiveIndex, UploadStore


def unit_vectors(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_a_copy_is_independent_and_keeps_the_search_settings(kind):
    vectors = unit_vectors(400)
    index = VectorIndex.build(vectors, [f"k{i}" for i in range(400)], kind=kind, normalize=True)
    if kind == "ivf":
        index.nprobe = 3
    if kind == "hnsw":
        index.ef_search = 17
    copy = index.copy()
    copy.add(unit_vectors(1, seed=9), ["new"])
    assert len(index) == 400 and "new" not in index and "new" in copy and len(copy) == 401
    queries = unit_vectors(5, seed=1)
    assert copy.search(queries, 5) == index.search(queries, 5)  # the new vector is far from these queries
    assert (copy.nprobe if kind == "ivf" else copy.ef_search if kind == "hnsw" else None) == (
        3 if kind == "ivf" else 17 if kind == "hnsw" else None)


def test_an_add_is_saved_before_it_is_searched(tmp_path):
    live = LiveIndex.empty(tmp_path / "index", dim=16, checkpoint="model")
    assert not (tmp_path / "index").exists()  # nothing written until something is added
    vectors = unit_vectors(3)
    assert live.add(vectors, ["a", "b", "c"]) == 3
    saved = VectorIndex.load(tmp_path / "index")
    assert saved.keys == ["a", "b", "c"] and saved.checkpoint == "model"
    assert live.search(vectors[1], 1)[0][0].key == "b"


def test_a_failed_save_changes_nothing(tmp_path):
    live = LiveIndex.empty(tmp_path / "index", dim=16, checkpoint="model")
    live.add(unit_vectors(2), ["a", "b"])
    (tmp_path / "index" / "stray.txt").write_text("not ours")  # the save refuses a folder holding other files
    with pytest.raises(ValueError, match="holds other files"):
        live.add(unit_vectors(1, seed=5), ["c"])
    assert "c" not in live and len(live) == 2
    with pytest.raises(ValueError, match="already in the index"):
        live.add(unit_vectors(1, seed=6), ["a"])
    assert len(live) == 2


def test_concurrent_adds_from_threads_all_land(tmp_path):
    live = LiveIndex.empty(tmp_path / "index", dim=16, checkpoint="model")
    start = threading.Barrier(8)

    def add(worker: int) -> None:
        start.wait()
        for step in range(5):
            live.add(unit_vectors(1, seed=100 * worker + step), [f"w{worker}-{step}"])

    threads = [threading.Thread(target=add, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = {f"w{worker}-{step}" for worker in range(8) for step in range(5)}
    assert set(live.index.keys) == expected and set(VectorIndex.load(tmp_path / "index").keys) == expected


def test_upload_keys_and_files_never_carry_a_clients_path(tmp_path):
    store = UploadStore(tmp_path / "uploads", max_side=64)
    digest = store.digest(b"some bytes")
    for name, expected in [("../../etc/passwd", "passwd"), ("C:\\photos\\cat 1.png", "cat_1.png"),
                           ("..", "image"), (None, "image"), ("ünïcode.jpg", "n_code.jpg")]:
        key = store.key_for(digest, name)
        assert key == f"upload/{digest}-{expected}" and store.digest_of(key) == digest
    store.put(digest, Image.new("RGB", (300, 150), "red"))
    assert [path.name for path in (tmp_path / "uploads").iterdir()] == [f"{digest}.png"]
    kept = store.open(f"upload/{digest}-whatever")
    assert kept.size == (64, 32) and kept.getpixel((0, 0)) == (255, 0, 0)
    assert store.open("openmoji/1F600") is None and store.digest_of("upload/../../x") is None
