"""Every endpoint through FastAPI's TestClient, over real (briefly trained) models: answers equal what the library
computes for the same inputs, alone or micro-batched; every error is a 4xx (or 503) with a JSON body and no
stack trace; uploads, keys and file names cannot reach files the index does not name."""
from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from polymodal.data.records import open_image_file
from polymodal.index import VectorIndex
from polymodal.model_io import load_for_inference
from polymodal.serve import ServeSettings, UploadLimits, create_app
from polymodal.tasks.captioning import generate_captions
from tests.serve.conftest import reference_answers, reference_zero_shot
from tests.serve.fuzz_uploads import (
    MAX_BYTES,
    MAX_PIXELS,
    bad_uploads,
    encoded,
    good_uploads,
    picture,
)

LIMITS = UploadLimits(max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def world(serve_world, tmp_path_factory):
    """The session's models with this module's own copy of the index (the tests add to it)."""
    root = tmp_path_factory.mktemp("app")
    return serve_world, serve_world.index_copy(root / "index")


@pytest.fixture(scope="module")
def client(world):
    models, index = world
    settings = ServeSettings(index=index, vqa_checkpoint=models.vqa, caption_checkpoint=models.caption,
                             limits=LIMITS, max_images_per_add=4, batch_wait_ms=5)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def search_only(world, tmp_path_factory):
    """A second server: search only (no VQA, no captioner), writes need a key."""
    models, _ = world
    index = models.index_copy(tmp_path_factory.mktemp("keyed") / "index")
    with TestClient(create_app(ServeSettings(index=index, api_key="s3cret", limits=LIMITS))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def clip(world):
    return load_for_inference(world[0].clip, "cpu")


def png_file(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/png")


def assert_error(response, status: int, code: str | None = None, says: str | None = None) -> dict:
    """A refusal as the service promises it: the status, a JSON body {error, detail}, no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["detail"], str), body
    assert "Traceback" not in response.text and 'File "' not in response.text
    if code is not None:
        assert body["error"] == code, body
    if says is not None:
        assert says in body["detail"], body
    return body


# --- search ---------------------------------------------------------------------------------------------------

def reference_text_search(clip, index: Path, text: str, k: int) -> list[tuple[str, float]]:
    """The same search without the service: the model's own text embedding against the saved index."""
    with torch.no_grad():
        query = clip.model.encode_text(**clip.tokenizer([text])).numpy()
    return [(hit.key, hit.score) for hit in VectorIndex.load(index).search(query, k)[0]]


def test_text_search_returns_what_the_index_returns_for_the_models_embedding(client, clip, world):
    body = client.post("/search", data={"text": "a red circle left of a blue square", "k": "5"}).json()
    expected = reference_text_search(clip, world[1], "a red circle left of a blue square", 5)
    assert [row["key"] for row in body["results"]] == [key for key, _ in expected]
    np.testing.assert_allclose([row["score"] for row in body["results"]], [s for _, s in expected], atol=1e-5)
    assert [row["rank"] for row in body["results"]] == [1, 2, 3, 4, 5]
    assert body["query"] == {"text": "a red circle left of a blue square"} and body["k"] == 5
    first = body["results"][0]
    assert first["thumbnail"] == "/thumbnail?key=" + first["key"].replace("/", "%2F")


def model_calls(client, batcher: str) -> float:
    """How many model calls the batcher has made (its batch-size histogram's count)."""
    prefix = f'polymodal_batch_size_count{{batcher="{batcher}"}} '
    return next((float(line[len(prefix):]) for line in client.get("/metrics").text.splitlines()
                 if line.startswith(prefix)), 0.0)


def test_concurrent_searches_are_batched_and_each_gets_its_own_answer(client, clip, world):
    queries = [f"a {colour} {shape}" for colour in ("red", "green", "blue", "yellow")
               for shape in ("circle", "square", "triangle", "star")]
    calls_before = model_calls(client, "search_text")
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda q: client.post("/search", data={"text": q, "k": 3}).json(), queries))
    assert model_calls(client, "search_text") - calls_before < len(queries), "no model call answered two requests"
    for query, body in zip(queries, bodies):
        expected = reference_text_search(clip, world[1], query, 3)
        assert [row["key"] for row in body["results"]] == [key for key, _ in expected], query
        np.testing.assert_allclose([row["score"] for row in body["results"]], [s for _, s in expected], atol=1e-5)


def test_image_search_by_upload_and_by_key_find_the_image_itself_first(client, world):
    image = world[0].images[3]
    by_upload = client.post("/search", files={"image": png_file(image)}, data={"k": "3"}).json()
    by_key = client.post("/search", data={"key": str(image), "k": "3"}).json()
    assert by_upload["results"][0]["key"] == str(image)
    assert by_upload["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert by_key["results"] == by_upload["results"]
    assert by_key["query"] == {"key": str(image)} and by_upload["query"] == {"image": image.name}


# --- VQA, captions, zero-shot ------------------------------------------------------------------------------------

def test_vqa_answers_as_the_library_does(client, world):
    vqa = load_for_inference(world[0].vqa, "cpu")
    image = world[0].images[0]
    questions = ["what color is the largest shape?", "how many shapes are there?", "is there a circle?"]
    with ThreadPoolExecutor(3) as pool:  # concurrently: batched together, still each its own answers
        bodies = list(pool.map(lambda q: client.post("/vqa", data={"question": q, "key": str(image), "k": 3}).json(),
                               questions))
    for question, body in zip(questions, bodies):
        expected = reference_answers(vqa, open_image_file(image), question, 3)
        assert [row["answer"] for row in body["answers"]] == [answer for answer, _ in expected]
        np.testing.assert_allclose([row["probability"] for row in body["answers"]], [p for _, p in expected],
                                   atol=1e-5)
        assert body["question"] == question


def test_caption_is_the_models_own_caption(client, world):
    captioner = load_for_inference(world[0].caption, "cpu")
    images = world[0].images[:4]
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda path: client.post("/caption", files={"image": png_file(path)}).json(), images))
    for path, body in zip(images, bodies):
        pixels = captioner.transform(open_image_file(path))[None]
        expected = generate_captions(captioner.model, captioner.tokenizer, [{"image": pixels}])[0]
        assert body == {"caption": expected}


def test_zero_shot_gives_the_models_probabilities(client, clip, world):
    image = world[0].images[5]
    labels = ["circle", "square", "triangle", "star"]
    body = client.post("/zero-shot", data={"labels": "circle, square,\ntriangle, star", "key": str(image),
                                           "templates": "photo", "k": 4}).json()
    expected = reference_zero_shot(clip, image, labels, "photo")
    got = {row["label"]: row["probability"] for row in body["labels"]}
    assert set(got) == set(labels) and body["templates"] == "photo"
    np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-5)
    assert [row["probability"] for row in body["labels"]] == sorted(got.values(), reverse=True)


# --- thumbnails, page, health, metrics, docs -------------------------------------------------------------------

def test_thumbnails_are_the_indexed_images_shrunk_never_enlarged(client, world):
    image = world[0].images[2]
    response = client.get("/thumbnail", params={"key": str(image)})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumbnail = np.asarray(Image.open(io.BytesIO(response.content)), np.float32)
    source = np.asarray(open_image_file(image), np.float32)
    assert thumbnail.shape == source.shape == (32, 32, 3)  # a 32-pixel scene is sent at its own size
    assert np.abs(thumbnail - source).mean() < 6  # JPEG noise only: the same picture
    big = picture(600, seed=3)
    added = client.post("/index/add", files=[("images", ("big.png", encoded(big, "PNG"), "image/png"))]).json()
    shrunk = Image.open(io.BytesIO(client.get(added["added"][0]["thumbnail"]).content))
    assert shrunk.size == (256, 256)
    expected = np.asarray(big.resize((256, 256), Image.Resampling.LANCZOS), np.float32)
    assert np.abs(np.asarray(shrunk, np.float32) - expected).mean() < 6


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>polymodal</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("static/app.js", "static/style.css"):
        assert client.get(f"/{asset}").status_code == 200
    assert_error(client.get("/static/../serve/app.py"), 404)
    assert_error(client.get("/static/%2e%2e/app.py"), 404)


def test_healthz_reports_the_configuration(client, search_only):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["tasks"] == {"search": True, "zero_shot": True, "vqa": True,
                                                            "caption": True}
    assert health["write_requires_key"] is False and health["limits"]["max_bytes"] == MAX_BYTES
    other = search_only.get("/healthz").json()
    assert other["tasks"]["vqa"] is False and other["tasks"]["caption"] is False and other["write_requires_key"]


def test_metrics_count_requests_by_route_and_status(client):
    def count(text: str, route: str, status: int) -> float:
        prefix = f'polymodal_requests_total{{route="{route}",method="POST",status="{status}"}} '
        return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)

    before = client.get("/metrics")
    assert before.headers["content-type"].startswith("text/plain; version=0.0.4")
    client.post("/search", data={"text": "a blue star"})
    client.post("/search", data={"text": "   "})
    after = client.get("/metrics").text
    assert count(after, "/search", 200) == count(before.text, "/search", 200) + 1
    assert count(after, "/search", 400) == count(before.text, "/search", 400) + 1
    size = next(line for line in after.splitlines() if line.startswith("polymodal_index_size "))
    assert float(size.split()[1]) == client.get("/healthz").json()["index_size"]


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/vqa", "/caption", "/zero-shot", "/index/add", "/thumbnail", "/healthz", "/metrics"} <= set(
        spec["paths"])
    assert client.get("/docs").status_code == 200


# --- adding to the index -------------------------------------------------------------------------------------------

def test_added_images_are_searchable_saved_and_refused_twice(client, world):
    image = picture(40, seed=7)
    data = encoded(image, "PNG")
    body = client.post("/index/add", files=[("images", ("../../etc/new photo.png", data, "image/png"))]).json()
    key = body["added"][0]["key"]
    assert key.startswith("upload/") and key.endswith("-new_photo.png") and ".." not in key
    saved = VectorIndex.load(world[1])
    assert key in saved and len(saved) == body["index_size"]
    hits = client.post("/search", files={"image": ("same.png", data, "image/png")}, data={"k": 1}).json()
    assert hits["results"][0]["key"] == key and hits["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    thumbnail = client.get(body["added"][0]["thumbnail"])
    assert thumbnail.status_code == 200
    # The store holds re-encoded pixels under content hashes only: no name a client chose reaches the disk.
    store = world[1].with_name("index-uploads")
    assert (store / (key[len("upload/"):].split("-")[0] + ".png")).is_file()
    assert all(re.fullmatch(r"[0-9a-f]{16}\.png", path.name) for path in store.iterdir())
    assert not list(world[1].parent.rglob("*new photo*")) and not list(world[1].parent.rglob("etc"))
    assert_error(client.post("/index/add", files=[("images", ("other name.png", data, "image/png"))]), 409,
                 "already_indexed", key)


def test_concurrent_adds_lose_nothing(client, world):
    uploads = [encoded(picture(36, seed=100 + i), "PNG") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda data: client.post("/index/add", files=[("images", ("p.png", data, "image/png"))]),
                               uploads))
    keys = [body.json()["added"][0]["key"] for body in bodies]
    assert all(body.status_code == 200 for body in bodies) and len(set(keys)) == 8
    saved = VectorIndex.load(world[1])
    assert all(key in saved for key in keys)
    assert len(saved) == client.get("/healthz").json()["index_size"]


def test_several_images_in_one_add(client):
    files = [("images", (f"{i}.png", encoded(picture(30, seed=200 + i), "PNG"), "image/png")) for i in range(3)]
    body = client.post("/index/add", files=files).json()
    assert [row["key"].rsplit("-", 1)[1] for row in body["added"]] == ["0.png", "1.png", "2.png"]
    assert_error(client.post("/index/add", files=files[:1] * 2), 409, "duplicate_upload")
    too_many = [("images", (f"{i}.png", encoded(picture(30, seed=300 + i), "PNG"), "image/png")) for i in range(5)]
    assert_error(client.post("/index/add", files=too_many), 413, "too_many_files")


def test_writes_need_the_key_when_one_is_set(search_only):
    files = [("images", ("k.png", encoded(picture(30, seed=400), "PNG"), "image/png"))]
    assert_error(search_only.post("/index/add", files=files), 401, "unauthorized")
    assert_error(search_only.post("/index/add", files=files, headers={"Authorization": "Bearer wrong"}), 403,
                 "forbidden")
    assert_error(search_only.post("/index/add", files=files, headers={"X-API-Key": "s3cret!"}), 403)
    assert search_only.post("/index/add", files=files, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    other = [("images", ("k.png", encoded(picture(30, seed=401), "PNG"), "image/png"))]
    assert search_only.post("/index/add", files=other, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert search_only.post("/search", data={"text": "a circle"}).status_code == 200  # reads need no key


# --- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(bad_uploads()))
@pytest.mark.parametrize("endpoint", ["/search", "/index/add", "/caption"])
def test_every_bad_upload_class_gets_its_4xx_everywhere(client, endpoint, name):
    data, status, code = bad_uploads()[name]
    field = "images" if endpoint == "/index/add" else "image"
    response = client.post(endpoint, files=[(field, ("upload.png", data, "image/png"))])
    assert_error(response, status, code)
    assert client.get("/healthz").json()["status"] == "ok"


@pytest.mark.parametrize(("endpoint", "form", "status", "says"), [
    ("/search", {}, 400, "give the image"),
    ("/search", {"text": "   "}, 400, "text is empty"),
    ("/search", {"text": "x" * 1001}, 400, "at most 1000"),
    ("/search", {"text": "a", "key": "k"}, 400, "not both"),
    ("/search", {"text": "a", "k": "0"}, 422, "k: "),
    ("/search", {"text": "a", "k": "101"}, 422, "k: "),
    ("/search", {"text": "a", "k": "many"}, 422, "k: "),
    ("/search", {"key": "../../etc/passwd"}, 404, "no such key"),
    ("/vqa", {"key": "KEY"}, 422, "question: "),
    ("/vqa", {"question": " ", "key": "KEY"}, 400, "question is empty"),
    ("/vqa", {"question": "what?"}, 400, "give the image"),
    ("/zero-shot", {"labels": "cat", "key": "KEY"}, 400, "at least two labels"),
    ("/zero-shot", {"labels": "cat, cat", "key": "KEY"}, 400, "'cat' is given twice"),
    ("/zero-shot", {"labels": "cat, dog", "key": "KEY", "templates": "fancy"}, 400, "unknown set 'fancy'"),
    ("/caption", {"key": "/etc/hostname"}, 404, "no such key"),
])
def test_bad_requests_name_the_field(client, world, endpoint, form, status, says):
    form = {name: str(world[0].images[0]) if value == "KEY" else value for name, value in form.items()}
    assert_error(client.post(endpoint, data=form), status, says=says)


def test_unconfigured_tasks_answer_503(search_only, world):
    image = str(world[0].images[0])
    assert_error(search_only.post("/vqa", data={"question": "what?", "key": image}), 503, "not_configured",
                 "--vqa-checkpoint")
    assert_error(search_only.post("/caption", data={"key": image}), 503, "not_configured", "--caption-checkpoint")


def test_no_client_can_read_a_file_the_index_does_not_name(client, world):
    not_indexed = world[0].root / "images" / "pairs.jsonl"
    for key in (str(not_indexed), "../../../../etc/passwd", "/etc/passwd", str(world[0].images[0]) + "/..",
                "upload/0123456789abcdef-../../x.png"):
        assert_error(client.get("/thumbnail", params={"key": key}), 404, "unknown_key")
    assert_error(client.get("/thumbnail"), 422, says="key")


def test_an_oversized_body_is_refused_before_it_is_read(client):
    big = b"\0" * (4 * MAX_BYTES + 2 * 1024 * 1024)
    response = client.post("/search", content=big, headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(response, 413, "too_large", "exceeds the limit")

    def streamed():  # no Content-Length: refused as the bytes arrive
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(8):
            yield b"\0" * MAX_BYTES

    response = client.post("/search", content=streamed(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(response, 413, "too_large", "exceeds")


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/search"), 405, "method_not_allowed")


def test_an_internal_failure_is_a_500_without_a_trace(client, monkeypatch):
    service = client.app.state.service

    def broken(images):
        raise RuntimeError("secret internals /home/user/model.py line 3")

    monkeypatch.setattr(service._images, "process", broken)
    monkeypatch.setattr(client._transport, "raise_server_exceptions", False)  # answer as a real server does
    response = client.post("/search", files={"image": ("a.png", good_uploads()["png"], "image/png")})
    body = assert_error(response, 500, "internal_error")
    assert "secret" not in json.dumps(body)
    assert client.post("/search", data={"text": "still alive"}).status_code == 200
