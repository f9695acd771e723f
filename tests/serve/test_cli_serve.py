"""`polymodal serve` on the command line: with no arguments it serves the quickstart's outputs (running the
quickstart first when they are missing) with the quickstart's own images as thumbnails; bad arguments and models
of the wrong kind end in one line naming the option, before anything listens."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

import polymodal.recipes.quickstart as quickstart_module
from polymodal import create_model, save_model
from polymodal.cli.main import main
from polymodal.data.catalog import load_dataset
from polymodal.model_io import load_model_config, load_tokenizer
from polymodal.serve import create_app


@pytest.fixture
def served(monkeypatch):
    """What `polymodal serve` loaded and would serve: the app is built (models and index loaded, or refused), then
    handed to this instead of uvicorn's listening loop."""
    calls = {}

    def capture(app, host, port, **options):
        calls.update(settings=app.state.service.settings, host=host, port=port)

    monkeypatch.setattr(uvicorn, "run", capture)
    return calls


@pytest.mark.slow  # trains a tiny shapes quickstart (~15 s on 2 cores)
def test_no_arguments_runs_the_quickstart_first_then_serves_it(tmp_path, tiny_model_config, served, monkeypatch):
    model = {**tiny_model_config, "image": {**tiny_model_config["image"], "image_size": 64}}
    real_run = quickstart_module.run_quickstart
    ran = []

    def small_quickstart(out, *args, **kwargs):  # the shapes world, made small, instead of minutes of the real one
        ran.append(out)
        return real_run(out, "shapes", progress=False, overrides=[
            f"model={json.dumps(model)}", "data.train.size=64", "data.val.size=32", "train.epochs=1",
            "train.batch_size=32"])

    monkeypatch.setattr(quickstart_module, "run_quickstart", small_quickstart)
    run_dir = tmp_path / "runs" / "quickstart"
    assert main(["serve", "--quickstart", str(run_dir)]) == 0
    assert ran == [run_dir] and served["host"] == "127.0.0.1" and served["port"] == 8000
    settings = served["settings"]
    assert settings.index == run_dir / "index"
    assert settings.image_sets == ({"name": "shapes", "split": "test", "size": 500},)

    assert main(["serve", "--quickstart", str(run_dir)]) == 0 and len(ran) == 1  # outputs there: not run again
    with TestClient(create_app(settings)) as client:
        hits = client.post("/search", data={"text": "a red circle", "k": 3}).json()["results"]
        assert len(hits) == 3 and all(hit["key"].startswith("shapes/test/") for hit in hits)
        # The thumbnail of a generated scene is that scene, drawn by the data set's own loader.
        thumbnail = Image.open(io.BytesIO(client.get(hits[0]["thumbnail"]).content)).convert("RGB")
        test_set = load_dataset("shapes", split="test", size=500)
        scene = test_set.image([r.key for r in test_set.records].index(hits[0]["key"]))
        expected = np.asarray(scene.resize(thumbnail.size, Image.Resampling.BICUBIC), np.float32)
        assert np.abs(np.asarray(thumbnail, np.float32) - expected).mean() < 8


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint", "somewhere"], "--checkpoint needs --index"),
    (["--index", "INDEX", "--port", "0"], "--port must be between 1 and 65535"),
    (["--index", "INDEX", "--max-upload-mb", "0"], "--max-upload-mb must be positive"),
    (["--index", "INDEX", "--vqa-checkpoint", "CLIP"], "--vqa-checkpoint CLIP holds a contrastive model, not a vqa"),
    (["--index", "INDEX", "--caption-checkpoint", "VQA"], "--caption-checkpoint VQA holds a vqa model"),
    (["--index", "INDEX", "--checkpoint", "CAPTION"], "--checkpoint CAPTION holds a captioning model"),
    (["--index", "INDEX", "--checkpoint", "OTHER"], "was built from other weights"),
    (["--index", "MISSING"], "does not exist yet; pass --checkpoint"),
    (["--index", "INDEX", "--images", "no-such-set"], "unknown dataset 'no-such-set'"),
])
def test_bad_arguments_give_one_line_before_anything_listens(serve_world, tmp_path, capsys, served, args, message):
    other = create_model(load_model_config(serve_world.clip))
    save_model(other, tmp_path / "other", load_tokenizer(serve_world.clip))  # same architecture, other weights
    names = {"INDEX": serve_world.index, "CLIP": serve_world.clip, "VQA": serve_world.vqa,
             "CAPTION": serve_world.caption, "OTHER": tmp_path / "other", "MISSING": tmp_path / "nothing"}
    argv = [str(names.get(arg, arg)) for arg in args]
    assert main(["serve", *argv]) == 2
    error = capsys.readouterr().err.strip()
    expected = message
    for name, path in names.items():
        expected = expected.replace(name, str(path))
    assert expected in error and len(error.splitlines()) == 1 and "Traceback" not in error
    assert "settings" not in served
