"""VQA from the command line: export a VQA v2 folder, train on it, `eval` with per-type accuracy, `vqa` answers."""
import json
from pathlib import Path

import pytest

from polymodal.factory import get_model_config
from tests.run_helpers import cli_in_process, export_splits, polymodal_cli as polymodal, train_with_cli

pytestmark = pytest.mark.slow  # the module trains a VQA model once (~2-5 min on 2 cores, by the CPU's conv speed)


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vqa")
    export_splits("easy-vqa", root / "evqa", {"train": 400, "test": 40}, "vqa")
    # vqa-concat-tiny with a ResNet half as wide: a quarter of the convolution work, which dominates a step on
    # CPUs without AVX-512, and colour is still learned (measured: 10% -> 86% in six epochs).
    model = get_model_config("vqa-concat-tiny")
    model["image"]["width"] = 16
    config = {
        "model": model,
        "data": {"train": str(root / "evqa" / "train"), "val": str(root / "evqa" / "test")},
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.003, "warmup_steps": 10, "checkpoint_every": 0,
                  "log_every": 5, "precision": "fp32"},
        "out": str(root / "run"),
    }
    train_with_cli(root, config)
    return root


def test_training_logs_vqa_accuracy_and_saves_the_answer_list(vqa_run):
    records = [json.loads(line) for line in (vqa_run / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["val/vqa_accuracy"] for r in records if "val/vqa_accuracy" in r]
    assert len(accuracies) == 6
    assert {"val/vqa_accuracy/colour", "val/vqa_accuracy/shape", "val/vqa_accuracy/exists"} <= set(records[-1])
    colour = [r["val/vqa_accuracy/colour"] for r in records if "val/vqa_accuracy/colour" in r]
    assert colour[-1] > colour[0] + 30, f"colour questions were not learned: {colour}"  # measured 10 -> 86
    config = json.loads(next((vqa_run / "run" / "checkpoints").glob("step_*/config.json")).read_text())
    assert {"yes", "no", "red", "circle"} <= set(config["answers"]) and len(config["answers"]) <= 64


def test_eval_prints_overall_and_per_type_accuracy_as_json(vqa_run):
    done = polymodal("eval", str(vqa_run / "run"), "--data", str(vqa_run / "evqa" / "test"), "--json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["questions"] > 300 and 0 <= metrics["vqa_accuracy"] <= 100
    assert {"question_type/colour", "question_type/shape", "question_type/exists", "answer_type/yes/no",
            "answer_type/other"} <= set(metrics)
    # The per-type figures average to the overall one, weighted by how many questions each type has.
    table = polymodal("eval", str(vqa_run / "run"), "--data", str(vqa_run / "evqa" / "test"))
    assert "vqa_accuracy" in table.stdout and "question_type/colour" in table.stdout
    colour = polymodal("eval", str(vqa_run / "run"), "--data", str(vqa_run / "evqa" / "test"), "--json",
                       "--questions", "colou?r", "--skip-questions", "^is ")
    assert colour.returncode == 0, colour.stderr
    only = json.loads(colour.stdout)
    assert [key for key in only if key.startswith("question_type/")] == ["question_type/colour"]
    assert only["vqa_accuracy"] == metrics["question_type/colour"] and 0 < only["questions"] < metrics["questions"]


def test_vqa_answers_with_probabilities(vqa_run):
    image = next((vqa_run / "evqa" / "test" / "images").glob("*.png"))
    done = polymodal("vqa", str(vqa_run / "run"), "--image", str(image), "--question", "what color is the shape?",
                     "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    assert [row["rank"] for row in answers] == [1, 2, 3]
    probabilities = [row["probability"] for row in answers]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "missing.png", "--question", "what?"], "no such file"),
    (["--image", "IMAGE", "--question", "  "], "--question is empty"),
    (["--image", "IMAGE", "--question", "what?", "-k", "0"], "-k must be at least 1"),
])
def test_vqa_bad_input_gives_one_clear_line(vqa_run, args, message, capsys):
    image = str(next((vqa_run / "evqa" / "test" / "images").glob("*.png")))
    code, stderr = cli_in_process(capsys, "vqa", str(vqa_run / "run"), *[image if a == "IMAGE" else a for a in args])
    assert code != 0 and message in stderr


def test_vqa_refuses_a_model_that_is_not_a_vqa_model(tmp_path, capsys):
    from polymodal import create_model, save_model

    save_model(create_model("clip-tiny"), tmp_path / "clip")
    done = polymodal("vqa", str(tmp_path / "clip"), "--image", "x.png", "--question", "what?")
    assert done.returncode != 0 and "needs a VQA model" in done.stderr
    code, stderr = cli_in_process(capsys, "eval", str(tmp_path / "clip"), "--data", "shapes", "--questions", "what")
    assert code != 0 and "--questions and --skip-questions filter VQA sets" in stderr


def test_the_tiny_model_learns(vqa_run):
    """Colour questions go from chance to mostly right in six short epochs (measured: 10% -> 86%; the overall
    accuracy 71% -> 80%, the yes/no prior being ~86% of the existence questions)."""
    records = [json.loads(line) for line in (vqa_run / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/vqa_accuracy" in r]
    assert val[0]["val/vqa_accuracy/colour"] < 40 and val[-1]["val/vqa_accuracy/colour"] > 70
    assert val[-1]["val/vqa_accuracy"] > val[0]["val/vqa_accuracy"] + 5
