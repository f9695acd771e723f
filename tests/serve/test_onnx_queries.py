"""`polymodal serve --onnx`: onnxruntime embeds the queries of the search model's own export, with the same
results as the PyTorch model; an export of other weights or another model is refused at start-up."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from polymodal import create_model, save_model
from polymodal.cli.main import main
from polymodal.data.tokenizers import TextTokenizer
from polymodal.index import VectorIndex
from polymodal.model_io import load_for_inference
from polymodal.serve import ServeSettings, create_app
from tests.serve.conftest import reference_zero_shot

pytest.importorskip("onnxruntime")
from polymodal.interop.onnx_export import export_onnx  # noqa: E402  (needs the export extra)

QUERY = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def searched(serve_world, tmp_path_factory):
    """clip-tiny (a transformer text tower: the exporter cannot trace the session model's GRU), untrained,
    saved and indexing the session's images: parity needs the same weights on both sides, not trained ones."""
    root = tmp_path_factory.mktemp("onnx_serve")
    torch.manual_seed(0)
    tokenizer = TextTokenizer.train_bpe(["a red circle", "a blue square left of a green star"] * 4, vocab_size=300,
                                        context_length=16)
    model = create_model("clip-tiny", image__image_size=32).eval()
    save_model(model, root / "clip", tokenizer)
    pairs = root / "images" / "pairs.jsonl"
    pairs.parent.mkdir()
    pairs.write_text("".join(json.dumps({"image": str(path), "caption": "a shape"}) + "\n"
                             for path in serve_world.images))
    assert main(["embed", str(root / "clip"), "--data", str(pairs), "--out", str(root / "embeddings")]) == 0
    assert main(["index", "build", str(root / "embeddings"), "--out", str(root / "index")]) == 0
    return root, load_for_inference(root / "clip", "cpu")


@pytest.fixture(scope="module")
def clip(searched):
    return searched[1]


@pytest.fixture(scope="module")
def onnx_client(searched, clip):
    root = searched[0]
    export = export_onnx(clip.model, clip.tokenizer, root / "onnx")
    with TestClient(create_app(ServeSettings(index=root / "index", onnx=export))) as client:
        yield client


def test_text_search_equals_the_pytorch_models(onnx_client, clip, searched):
    with torch.no_grad():
        query = clip.model.encode_text(**clip.tokenizer([QUERY])).numpy()
    expected = VectorIndex.load(searched[0] / "index").search(query, 6)[0]
    body = onnx_client.post("/search", data={"text": QUERY, "k": "6"}).json()
    assert [row["key"] for row in body["results"]] == [hit.key for hit in expected]
    np.testing.assert_allclose([row["score"] for row in body["results"]], [hit.score for hit in expected], atol=1e-4)


def test_image_search_and_zero_shot_equal_the_pytorch_models(onnx_client, clip, serve_world):
    image = serve_world.images[3]
    body = onnx_client.post("/search", data={"key": str(image), "k": "3"}).json()
    assert body["results"][0]["key"] == str(image) and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    labels = ["circle", "square", "triangle"]
    answer = onnx_client.post("/zero-shot", data={"labels": ",".join(labels), "key": str(image),
                                                  "templates": "photo", "k": 3}).json()
    got = {row["label"]: row["probability"] for row in answer["labels"]}
    np.testing.assert_allclose([got[label] for label in labels], reference_zero_shot(clip, image, labels, "photo"),
                               atol=1e-4)


def test_an_export_of_other_weights_is_refused(searched, clip, tmp_path):
    torch.manual_seed(1)
    other = create_model(clip.model.config).eval()  # same config, other weights
    export = export_onnx(other, clip.tokenizer, tmp_path / "other")
    with pytest.raises(ValueError, match=r"--onnx .*other: its texts embeddings differ"):
        create_app(ServeSettings(index=searched[0] / "index", onnx=export))


def test_an_export_of_another_model_is_refused(searched, clip, tmp_path):
    config = {**clip.model.config, "embed_dim": clip.model.config["embed_dim"] * 2}
    export = export_onnx(create_model(config).eval(), clip.tokenizer, tmp_path / "wider")
    with pytest.raises(ValueError, match=r"is not an export of .*model configs differ"):
        create_app(ServeSettings(index=searched[0] / "index", onnx=export))
