"""Captioning from the command line: export the shapes world as COCO captions, train caption-tiny on it, `eval`
with BLEU / ROUGE-L / CIDEr-D and COCO results, `caption` images."""
import json
from pathlib import Path

import pytest

from polymodal.metrics.caption import caption_scores
from tests.run_helpers import cli_in_process, export_splits, polymodal_cli as polymodal, train_with_cli

pytestmark = pytest.mark.slow  # the module trains a captioner once (~40 s on 2 cores)

EPOCHS, TRAIN_IMAGES, VAL_IMAGES = 8, 400, 64
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("caption")
    export_splits("shapes", root, {"train": TRAIN_IMAGES, "val": VAL_IMAGES}, "coco")
    config = {
        "model": "caption-tiny",
        "data": {"train": str(root / "train" / "captions.json"), "val": str(root / "val" / "captions.json")},
        "train": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.003, "warmup_steps": 10, "checkpoint_every": 0,
                  "log_every": 5, "precision": "fp32"},
        "out": str(root / "run"),
    }
    train_with_cli(root, config)
    return root


def _eval_json(model: Path, *args: str) -> dict:
    done = polymodal("eval", str(model), *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_training_logs_caption_metrics_every_epoch(caption_run):
    records = [json.loads(line) for line in (caption_run / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/CIDEr-D" in r]
    assert [r["epoch"] for r in val] == list(range(EPOCHS))
    assert all({f"val/{name}" for name in METRICS} <= set(r) for r in val)
    assert val[-1]["val/BLEU-1"] > 0 and val[-1]["val/CIDEr-D"] > 0


def test_eval_scores_the_six_metrics_and_writes_coco_results(caption_run, tmp_path):
    references = caption_run / "val" / "captions.json"
    results = tmp_path / "results.json"
    metrics = _eval_json(caption_run / "run", "--data", str(references), "--coco-results", str(results))
    assert metrics["images"] == VAL_IMAGES and metrics["skipped"] == 0 and metrics["dataset"]
    assert set(METRICS) <= set(metrics)
    assert all(0 <= metrics[name] == round(metrics[name], 4) for name in METRICS)
    assert metrics["BLEU-1"] > 0
    # One result per image, under the image ids of the COCO file (what the official tools join on).
    rows = json.loads(results.read_text())
    coco = json.loads(references.read_text())
    assert sorted(row["image_id"] for row in rows) == sorted(image["id"] for image in coco["images"])
    assert all(type(row["image_id"]) is int and isinstance(row["caption"], str) for row in rows)
    # Scoring the written results against the file's references gives the printed figures.
    truth: dict[int, list[str]] = {}
    for annotation in coco["annotations"]:
        truth.setdefault(annotation["image_id"], []).append(annotation["caption"])
    rescored = caption_scores({row["image_id"]: row["caption"] for row in rows}, truth)
    assert {name: round(rescored[name], 4) for name in METRICS} == {name: metrics[name] for name in METRICS}


def test_eval_defaults_to_the_runs_validation_set_and_prints_a_table(caption_run):
    done = polymodal("eval", str(caption_run / "run"), "--method", "greedy", "--max-length", "12")
    assert done.returncode == 0, done.stderr
    for name in (*METRICS, "images"):
        assert name in done.stdout
    assert str(VAL_IMAGES) in done.stdout


def test_training_beats_an_untrained_model(caption_run, tmp_path):
    """Greedy captions of the trained model against those of the same architecture before training, with the
    same tokenizer (an untrained decoder repeats a token: CIDEr-D ~0)."""
    import torch

    from polymodal import save_model
    from polymodal.model_io import load_model_config, load_tokenizer
    from polymodal.models.registry import build_model

    torch.manual_seed(0)
    untrained = build_model(load_model_config(caption_run / "run"))
    save_model(untrained, tmp_path / "untrained", load_tokenizer(caption_run / "run"))
    data = ["--data", str(caption_run / "val" / "captions.json"), "--method", "greedy"]
    before = _eval_json(tmp_path / "untrained", *data)
    after = _eval_json(caption_run / "run", *data)
    assert after["CIDEr-D"] > before["CIDEr-D"] + 0.1
    assert after["BLEU-1"] > before["BLEU-1"]


def test_caption_prints_one_caption_per_image(caption_run):
    images = caption_run / "val" / "images"
    names = ["000001.png", "000002.png", "000003.png"]
    table = polymodal("caption", str(caption_run / "run"), *names, cwd=images)
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if ".png" in line]
    assert [next(name for name in names if name in line) for line in lines] == names
    done = polymodal("caption", str(caption_run / "run"), *names, "--json", cwd=images)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["captions"]
    assert [row["image"] for row in rows] == names
    assert all(row["caption"].strip() for row in rows)
    # The same default decoding (beam search) as `eval`, so the same captions as its COCO results.
    results = caption_run / "results.json"
    _eval_json(caption_run / "run", "--coco-results", str(results))
    by_id = {row["image_id"]: row["caption"] for row in json.loads(results.read_text())}
    assert [row["caption"] for row in rows] == [by_id[1], by_id[2], by_id[3]]


def test_caption_decoding_options(caption_run):
    image = str(next((caption_run / "val" / "images").glob("*.png")))
    run = str(caption_run / "run")
    done = polymodal("caption", run, image, image, "--beam", "3", "--no-repeat-ngram", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["captions"]) == 2
    sampled = [polymodal("caption", run, image, "--method", "sample", "--top-k", "5", "--seed", "7", "--json")
               for _ in range(2)]
    assert all(done.returncode == 0 for done in sampled), sampled[0].stderr
    assert sampled[0].stdout == sampled[1].stdout, "--seed makes sampling repeatable"


@pytest.mark.parametrize(("args", "message"), [
    (["missing.png"], "missing.png: no such file"),
    (["IMAGE", "not-an-image.png"], "not-an-image.png: not a readable image"),
    (["IMAGE", "--beam", "3", "--method", "greedy"], "cannot go with --method greedy"),
    (["IMAGE", "--top-p", "0.9"], "--top-p applies to sampling only"),
    (["IMAGE", "--method", "sample", "--top-p", "1.5"], "top_p must be in (0, 1]"),
])
def test_caption_bad_input_gives_one_clear_line(caption_run, tmp_path, args, message, capsys, monkeypatch):
    (tmp_path / "not-an-image.png").write_text("hello")
    image = str(next((caption_run / "val" / "images").glob("*.png")))
    monkeypatch.chdir(tmp_path)
    code, stderr = cli_in_process(capsys, "caption", str(caption_run / "run"),
                                  *[image if a == "IMAGE" else a for a in args])
    assert code == 2 and message in stderr


def test_caption_and_eval_refuse_a_model_of_another_family(tmp_path):
    from polymodal import create_model, save_model

    save_model(create_model("clip-tiny"), tmp_path / "clip")
    done = polymodal("caption", str(tmp_path / "clip"), "x.png")
    assert done.returncode == 2 and "holds a contrastive model; `polymodal caption` needs a captioner" in done.stderr
    done = polymodal("eval", str(tmp_path / "clip"), "--data", "shapes", "--coco-results", "out.json", cwd=tmp_path)
    assert done.returncode == 2 and "--coco-results needs a captioner" in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_help_teaches_caption_and_captioner_eval():
    done = polymodal("caption", "--help")
    assert done.returncode == 0 and "usage: polymodal caption" in done.stdout
    assert "polymodal caption runs/captions" in done.stdout and "--beam" in done.stdout
    done = polymodal("eval", "--help")
    assert done.returncode == 0 and "CIDEr-D" in done.stdout and "--coco-results" in done.stdout
    done = polymodal("--help")
    assert "polymodal caption" in done.stdout
