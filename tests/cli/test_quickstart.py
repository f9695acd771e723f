"""The quickstart recipe end to end, made small with the same overrides `polymodal train --set` takes."""
import copy
import json

from polymodal import load_model
from polymodal.recipes.quickstart import results_table, run_quickstart


def model_at_64px(tiny_model_config: dict) -> dict:
    model = copy.deepcopy(tiny_model_config)  # the fixture is shared by the session: never mutate it
    model["image"]["image_size"] = 64
    return model


def test_shapes_quickstart_writes_everything_and_beats_chance(tmp_path, tiny_model_config):
    overrides = [
        f"model={json.dumps(model_at_64px(tiny_model_config))}",
        "data.train.size=768", "data.val.size=128",
        "train.epochs=6", "train.batch_size=32", "train.checkpoint_every=50",
    ]
    metrics = run_quickstart(tmp_path, "shapes", progress=False, overrides=overrides)
    for name in ("metrics.json", "training_curve.png", "search_examples.png"):
        assert (tmp_path / name).stat().st_size > 500, name
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "index" / "index.faiss").is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["trained"] == metrics["trained"] and saved["train_steps"] == 6 * (768 // 32)
    test = metrics["trained"]["shapes test"]
    assert test["text_to_image_R@10"] > 2 * metrics["chance"]["shapes test"]["text_to_image_R@10"]
    assert len(metrics["searches"]["a red circle left of a blue square"]) == 5
    rows = results_table(metrics)
    r1 = next(row for row in rows if row["dataset"] == "shapes test" and row["metric"] == "text→image R@1")
    assert r1["trained"] == test["text_to_image_R@1"]
    assert r1["chance"] == metrics["chance"]["shapes test"]["text_to_image_R@1"]
    load_model(tmp_path)  # the exported model loads on its own


def test_a_second_quickstart_into_the_same_folder_starts_afresh(tmp_path, tiny_model_config):
    overrides = [f"model={json.dumps(model_at_64px(tiny_model_config))}", "data.train.size=64",
                 "data.val.size=32", "train.epochs=1", "train.batch_size=32"]
    for _ in range(2):
        metrics = run_quickstart(tmp_path, "shapes", progress=False, overrides=overrides)
    assert metrics["train_steps"] == 2
