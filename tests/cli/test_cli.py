"""Every verb end to end, in the order a user runs them, on data exported from the generated world."""
import json
from pathlib import Path

import pytest
import torch

from tests.run_helpers import cli_in_process, export_splits, polymodal_cli as polymodal, train_with_cli


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_config) -> Path:
    root = tmp_path_factory.mktemp("cli")
    export_splits("shapes", root, {"train": 512, "val": 96}, "jsonl")
    config = {
        "model": tiny_model_config,
        "data": {"train": str(root / "train" / "pairs.jsonl"), "val": str(root / "val" / "pairs.jsonl")},
        "train": {"epochs": 2, "batch_size": 64, "lr": 2e-3, "warmup_steps": 2, "checkpoint_every": 4,
                  "precision": "fp32"},
        "out": str(root / "run"),
    }
    train_with_cli(root, config, "--set", "train.epochs=3")
    return root


def test_train_writes_checkpoint_log_and_curve(workspace):
    run = workspace / "run"
    assert (run / "checkpoints" / "latest").is_file()
    assert (run / "training_curve.png").stat().st_size > 1000
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3 * (512 // 64), "--set train.epochs=3 took effect"


def test_eval_json_on_any_pairs_file(workspace):
    done = polymodal("eval", str(workspace / "run"), "--data", str(workspace / "val" / "pairs.jsonl"), "--json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    for key in ("image_to_text_R@1", "text_to_image_R@5", "text_to_image_R@10", "text_to_image_median_rank"):
        assert key in metrics
    assert metrics["images"] == 96
    # The same figure computed by hand from the saved model: each caption's nearest image by cosine must show
    # the caption's scene (the JSONL's groups are its image paths).
    from polymodal.data.catalog import load_dataset
    from polymodal.model_io import load_for_inference

    loaded = load_for_inference(workspace / "run", device="cpu")
    dataset = load_dataset(str(workspace / "val" / "pairs.jsonl"))
    with torch.no_grad():
        images = torch.cat([loaded.model.encode_image(loaded.transform(dataset.image(i))[None])
                            for i in range(len(dataset))])
        owners = [i for i, record in enumerate(dataset.records) for _ in record.captions]
        captions = [caption for record in dataset.records for caption in record.captions]
        texts = loaded.model.encode_text(**loaded.tokenizer(captions))
    groups = [record.group for record in dataset.records]
    best = (texts @ images.T).argmax(dim=1).tolist()
    hits = sum(groups[best[row]] == groups[owners[row]] for row in range(len(captions)))
    assert metrics["text_to_image_R@1"] == pytest.approx(100 * hits / len(captions), abs=1e-6)


def test_eval_clusters_image_embeddings_against_the_labels(workspace):
    pairs = str(workspace / "val" / "pairs.jsonl")
    done = polymodal("eval", str(workspace / "run"), "--cluster", pairs, "--json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    # The same pipeline by hand: the saved model's unit image embeddings, k-means (k = classes), NMI / ARI.
    from polymodal.data.catalog import load_dataset
    from polymodal.metrics.clustering import adjusted_rand_index, kmeans, normalized_mutual_info
    from polymodal.model_io import load_for_inference

    from polymodal.tasks.embed import embed_images

    loaded = load_for_inference(workspace / "run", device="cpu")
    dataset = load_dataset(pairs)
    images = embed_images(loaded.model, dataset, loaded.transform, progress=False)
    predicted = kmeans(images, len(dataset.class_names), seed=0, restarts=5).labels.tolist()
    labels = [record.label for record in dataset.records]
    assert metrics["clusters"] == len(dataset.class_names) > 1
    assert metrics["cluster_nmi"] == pytest.approx(normalized_mutual_info(labels, predicted), abs=1e-4)
    assert metrics["cluster_ari"] == pytest.approx(adjusted_rand_index(labels, predicted), abs=1e-4)


def test_embed_index_and_search_by_text_and_image(workspace):
    emb, index = workspace / "emb", workspace / "index"
    done = polymodal("embed", str(workspace / "run"), "--data", str(workspace / "val" / "pairs.jsonl"), "--out", str(emb))
    assert done.returncode == 0, done.stderr
    done = polymodal("index", "build", str(emb), "--out", str(index))
    assert done.returncode == 0, done.stderr
    done = polymodal("search", "a red circle left of a blue square", "--index", str(index), "--json", "-k", "3")
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)["results"]
    assert len(hits) == 3 and all(Path(hit["key"]).is_file() for hit in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    query_image = hits[0]["key"]
    done = polymodal("search", "--image", query_image, "--index", str(index), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["key"] == query_image, "an indexed image finds itself first"


def test_data_list_names_every_dataset():
    done = polymodal("data", "list")
    assert done.returncode == 0, done.stderr
    for name in ("openmoji", "easy-vqa", "animal-shapes", "skimage-photos", "shapes"):
        assert name in done.stdout


def test_data_export_vqa_writes_v2_questions_and_annotations(tmp_path):
    done = polymodal("data", "export", "shapes", "--split", "test", "--size", "20", "--to", str(tmp_path / "vqa"),
                     "--format", "vqa")
    assert done.returncode == 0, done.stderr
    questions = json.loads((tmp_path / "vqa" / "questions.json").read_text())["questions"]
    annotations = json.loads((tmp_path / "vqa" / "annotations.json").read_text())["annotations"]
    assert len(questions) == len(annotations) > 20
    assert {q["question_id"] for q in questions} == {a["question_id"] for a in annotations}
    assert all(len(a["answers"]) == 10 for a in annotations)
    done = polymodal("data", "export", "openmoji", "--to", str(tmp_path / "x"), "--format", "vqa")
    assert done.returncode == 2 and "has no questions" in done.stderr


def test_help_teaches_every_verb():
    for verb in ("quickstart", "train", "eval", "vqa", "caption", "zero-shot", "embed", "index", "search", "serve",
                 "convert", "data"):
        done = polymodal(verb, "--help")
        assert done.returncode == 0 and "usage: polymodal" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "missing.yaml"), "config file not found: missing.yaml"),
        (("train", "--set", "train.nope=1"), "config: unknown key train.nope; known keys: accum_steps"),
        (("eval", "no/such/run"), "no model at no/such/run"),
        (("search", "x", "--index", "no/such/index"), "no/such/index"),
    ],
)
def test_bad_input_gives_one_clear_line(args, message, tmp_path):
    done = polymodal(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_eval_names_file_and_line_of_a_malformed_row(workspace, tmp_path):
    rows = (workspace / "val" / "pairs.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    image = str((workspace / "val" / json.loads(rows[0])["image"]).resolve())
    bad.write_text(json.dumps({"image": image, "caption": "ok"}) + "\n" + "{not json\n")
    done = polymodal("eval", str(workspace / "run"), "--data", str(bad), "--json")
    assert done.returncode == 2 and f"{bad}" in done.stderr and "line 2" in done.stderr
    done = polymodal("eval", str(workspace / "run"), "--data", str(bad), "--skip-bad", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["skipped"] == 1


def test_zero_shot_matches_clips_recipe_computed_by_hand(workspace):
    """Reference: per label, the mean of its normalised prompt embeddings, renormalised; softmax of
    exp(logit_scale) * cosine over the labels — computed here with the model's own encoders, not the library."""
    from polymodal.model_io import load_for_inference

    images = sorted((workspace / "val").glob("**/*.png"))[:3]
    labels, templates = ["circle", "square", "star"], ["a {}.", "a {} shape."]
    done = polymodal("zero-shot", str(workspace / "run"), "--labels", ",".join(labels), "--template", templates[0],
                     "--template", templates[1],                     "-k", "3", "--json", *map(str, images))
    assert done.returncode == 0, done.stderr
    predicted = json.loads(done.stdout)["predictions"]

    loaded = load_for_inference(workspace / "run", "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    with torch.no_grad():
        per_label = []
        for label in labels:
            tokens = tokenizer([template.format(label) for template in templates])
            prompts = torch.nn.functional.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
            per_label.append(torch.nn.functional.normalize(prompts.mean(0), dim=0))
        from PIL import Image
        pixels = torch.stack([loaded.transform(Image.open(path).convert("RGB")) for path in images])
        cosine = model.encode_image(pixels) @ torch.stack(per_label).T
        expected = (model.logit_scale.exp() * cosine).softmax(-1)
    for row, probabilities in zip(predicted, expected):
        ranked = sorted(zip(labels, probabilities.tolist()), key=lambda pair: -pair[1])
        assert [entry["label"] for entry in row["labels"]] == [label for label, _ in ranked]
        assert [entry["probability"] for entry in row["labels"]] == pytest.approx([p for _, p in ranked], abs=1e-4)


def test_zero_shot_reads_a_labels_file_and_refuses_bad_labels(workspace, tmp_path, capsys):
    image = str(next((workspace / "val").glob("**/*.png")))
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# shapes\ncircle\n\nsquare\n")
    done = polymodal("zero-shot", str(workspace / "run"), "--labels-file", str(labels_file), image, "--json")
    assert done.returncode == 0, done.stderr
    assert {entry["label"] for entry in json.loads(done.stdout)["predictions"][0]["labels"]} == {"circle", "square"}
    for args, message in [(("--labels", " , "), "--labels: no labels given"),
                          (("--labels", "circle,circle"), "label 'circle' is given twice"),
                          (("--labels-file", str(tmp_path / "none.txt")), "none.txt: no such file"),
                          (("--labels", "a,b", "--templates", "a photo"), "unknown template set 'a photo'"),
                          (("--labels", "a,b", "--template", "x {}", "--template", "y"),
                           "template 'y' needs exactly one '{}'")]:
        # In this interpreter (what the entry point runs): a fresh one per refusal would only add start-up time.
        code, stderr = cli_in_process(capsys, "zero-shot", str(workspace / "run"), *args, image)
        assert code == 2 and message in stderr, stderr
    code, stderr = cli_in_process(capsys, "zero-shot", str(workspace / "run"), "--labels", "a,b",
                                  str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png" in stderr
