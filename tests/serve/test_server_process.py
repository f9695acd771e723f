"""`polymodal serve` as a real process on loopback: killed in the middle of an add (at every crash point of the
index save, and by a real SIGKILL) it leaves the last good index loadable and a restarted server answers as before;
fuzzed uploads over real HTTP all get a 4xx and the server stays healthy."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from polymodal.index import VectorIndex
from polymodal.io import FAULT_EXIT_CODE
from polymodal.serve import ServeSettings, create_app
from tests.serve.conftest import ServerProcess
from tests.serve.fuzz_uploads import bad_uploads, encoded, picture

pytestmark = pytest.mark.slow  # each test starts one or more servers (a few seconds each)

QUERIES = ("a red circle", "a small green triangle", "two blue squares")
# Every moment of an index save where the process may die (polymodal.io.publish_together / atomic_directory).
INDEX_CRASH_POINTS = ["index.wrote_index.faiss", "index.wrote_keys.json", "index.staged", "index.aside",
                      "index.swapped"]


def searches(url_or_client, k: int = 100) -> dict[str, list[tuple[str, float]]]:
    """Each query's full ranking (k covers the whole index)."""
    post = url_or_client.post if isinstance(url_or_client, TestClient) else (
        lambda path, **kw: httpx.post(url_or_client + path, timeout=60, **kw))
    answers = {}
    for query in QUERIES:
        body = post("/search", data={"text": query, "k": str(k)}).json()
        answers[query] = [(row["key"], round(row["score"], 5)) for row in body["results"]]
    return answers


def restarted(index, clip) -> TestClient:
    """A new service over the same directories (what a restart loads), in this process."""
    return TestClient(create_app(ServeSettings(index=index, checkpoint=clip)))


def upload(seed: int) -> list:
    return [("images", (f"photo{seed}.png", encoded(picture(40, seed=seed), "PNG"), "image/png"))]


@pytest.mark.parametrize("point", INDEX_CRASH_POINTS)
def test_a_server_killed_during_an_add_restarts_with_the_last_good_index(point, serve_world, tmp_path):
    index = serve_world.index_copy(tmp_path / "index")
    keys_before = VectorIndex.load(index).keys
    server = ServerProcess("--index", str(index), env={"POLYMODAL_FAULT": f"{point}@1"},
                           log=tmp_path / "server.log").wait_ready()
    try:
        before = searches(server.url)
        with pytest.raises(httpx.TransportError):  # the process dies mid-request: no answer at all
            httpx.post(server.url + "/index/add", files=upload(1), timeout=60)
        assert server.process.wait(30) == FAULT_EXIT_CODE, server.log_text()
    finally:
        server.stop()

    loaded = VectorIndex.load(index)  # loadable at every crash point (a set-aside index is put back)
    added = [key for key in loaded.keys if key not in keys_before]
    if point == "index.swapped":  # the new index was in place: the add survived, the reply was lost
        assert loaded.keys[: len(keys_before)] == keys_before and len(added) == 1
    else:
        assert loaded.keys == keys_before
    assert not list(tmp_path.glob(".staging-*")) and not list(tmp_path.glob(".replaced-*"))
    with restarted(index, serve_world.clip) as client:
        after = searches(client)
        assert client.get("/healthz").json()["index_size"] == len(loaded)
    for query in QUERIES:  # the same ranking and scores, the added image (when it survived) aside
        assert [hit for hit in after[query] if hit[0] not in added] == before[query], query


def test_sigkill_while_adding_keeps_every_acknowledged_add(serve_world, tmp_path):
    """A real SIGKILL at an arbitrary moment of a stream of adds: every add the server acknowledged is on disk, the
    index loads, and a restarted server process answers searches as the saved index does."""
    index = serve_world.index_copy(tmp_path / "index")
    server = ServerProcess("--index", str(index), log=tmp_path / "server.log").wait_ready()
    acknowledged, stop = [], threading.Event()

    def add_until_killed(worker: int) -> None:
        seed = 1000 * (worker + 1)
        while not stop.is_set():
            seed += 1
            try:
                response = httpx.post(server.url + "/index/add", files=upload(seed), timeout=30)
            except httpx.TransportError:
                return
            if response.status_code == 200:
                acknowledged.extend(row["key"] for row in response.json()["added"])

    threads = [threading.Thread(target=add_until_killed, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.process.pid, signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join(30)
    server.process.wait(30)
    assert len(acknowledged) >= 6, server.log_text()

    saved = VectorIndex.load(index)
    assert set(acknowledged) <= set(saved.keys)
    assert len(saved) == len(serve_world.images) + len({key for key in saved.keys if key.startswith("upload/")})
    again = ServerProcess("--index", str(index), log=tmp_path / "restart.log").wait_ready()
    try:
        assert httpx.get(again.url + "/healthz").json()["index_size"] == len(saved)
        with restarted(index, serve_world.clip) as client:
            assert searches(again.url) == searches(client)
    finally:
        again.stop()


def test_concurrent_adds_over_http_all_survive_a_restart(serve_world, tmp_path):
    index = serve_world.index_copy(tmp_path / "index")
    server = ServerProcess("--index", str(index), log=tmp_path / "server.log").wait_ready()
    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda seed: httpx.post(server.url + "/index/add", files=upload(seed),
                                                               timeout=60), range(2000, 2016)))
        keys = [row["key"] for response in responses for row in response.json()["added"]]
        assert [response.status_code for response in responses] == [200] * 16 and len(set(keys)) == 16
    finally:
        server.stop()
    assert set(keys) <= set(VectorIndex.load(index).keys)


def test_fuzzed_uploads_get_4xx_and_the_server_stays_healthy(serve_world, tmp_path):
    index = serve_world.index_copy(tmp_path / "index")
    server = ServerProcess("--index", str(index), "--max-upload-mb", "0.25", "--max-pixels", "1000000",
                           log=tmp_path / "server.log").wait_ready()
    try:
        before = searches(server.url)
        for name, (data, status, code) in bad_uploads().items():
            for endpoint, field in (("/search", "image"), ("/index/add", "images")):
                response = httpx.post(server.url + endpoint, files=[(field, ("x.png", data, "image/png"))],
                                      timeout=60)
                assert (response.status_code, response.json()["error"]) == (status, code), (name, endpoint)
        # A body far over the limit is refused from its declared length, before it is read.
        huge = httpx.post(server.url + "/search", files={"image": ("x.png", b"\0" * (64 << 20), "image/png")},
                          timeout=60)
        assert huge.status_code == 413 and huge.json()["error"] == "too_large"
        assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
        assert searches(server.url) == before  # nothing was added, nothing broke
        assert server.process.poll() is None
    finally:
        server.stop()


def test_the_load_benchmark_runs_without_failures(serve_world, tmp_path):
    """benchmarks/serve_load.py end to end at a small size: a server process, three levels of concurrent
    clients from this second process, zero failed requests, and under load calls that answer several requests."""
    index = serve_world.index_copy(tmp_path / "index")
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    done = subprocess.run([sys.executable, "serve_load.py", "--index", str(index), "--requests", "64", "--warmup",
                           "8", "--concurrency", "1", "8", "32", "--runtimes", "torch",
                           "--out", str(tmp_path / "report")],
                          cwd=benchmarks, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "serve_load.json").read_text())
    assert [row["concurrency"] for row in report["rows"]] == [1, 8, 32]
    assert all(row["requests"] == 64 and row["failed"] == 0 for row in report["rows"])
    assert report["rows"][0]["requests_per_model_call"] == 1.0 and report["rows"][2]["requests_per_model_call"] > 2
    assert report["rows"][2]["p50_ms"] >= report["rows"][0]["p50_ms"] > 0
    # The session's model reads text with a GRU, which ONNX cannot export: its onnxruntime rows are tested on a
    # transformer model in test_onnx_queries.py.
    assert "| torch | 32 | 64 | 0 |" in (tmp_path / "report" / "serve_load.md").read_text()
