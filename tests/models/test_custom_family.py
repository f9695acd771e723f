"""A model family defined and registered outside the package trains, logs, saves, loads and resumes through the
library API alone: nothing in train/ or cli/ knows it."""
import copy
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import polymodal
from polymodal.cli.main import main
from polymodal.encoders.build import build_encoder
from polymodal.models.family import LossOptions
from tests.run_helpers import read_log

FAMILY = "test_image_text_classifier"


class ImageTextClassifier(nn.Module):
    """Pooled image and text features, concatenated, then a linear classifier (late concatenation)."""

    def __init__(self, config: dict, where: str) -> None:
        super().__init__()
        image = build_encoder("image", config["image"], where)
        text = build_encoder("text", config["text"], where)
        self.image_encoder, self.text_encoder = image.encoder, text.encoder
        self.classifier = nn.Linear(image.encoder.width + text.encoder.width, config["num_classes"])
        self.config = copy.deepcopy(config)
        self.preprocess = image.preprocess
        self.steps_seen = 0

    def forward(self, image, input_ids, attention_mask, labels):
        pooled = torch.cat([self.image_encoder(image).pooled, self.text_encoder(input_ids, attention_mask).pooled], -1)
        return {"logits": self.classifier(pooled), "labels": labels}

    def after_optimizer_step(self) -> None:  # an optional hook: the loop calls it after every update
        self.steps_seen += 1


class CrossEntropyWithLogitPenalty(nn.Module):
    """Two named terms and their total: what the loop must log one by one."""

    def forward(self, logits, labels):
        cross_entropy = F.cross_entropy(logits, labels)
        logit_penalty = logits.square().mean()
        return {"loss": cross_entropy + 1e-3 * logit_penalty, "cross_entropy": cross_entropy,
                "logit_penalty": logit_penalty}


def build(config: dict, where: str, for_loading: bool) -> nn.Module:
    return ImageTextClassifier(config, where)


def build_loss(config: dict, options: LossOptions) -> nn.Module:
    return CrossEntropyWithLogitPenalty()


polymodal.register_family(FAMILY, build, build_loss, task="classification", exist_ok=True)


def run_config(out: Path, tiny_model_config: dict, epochs: int = 4) -> dict:
    model = {"family": FAMILY, "num_classes": 6, "image": tiny_model_config["image"],
             "text": tiny_model_config["text"]}
    return {
        "model": model,
        "data": {"train": {"name": "shapes", "split": "train", "size": 256, "image_size": 32},
                 "val": {"name": "shapes", "split": "val", "size": 128, "image_size": 32}},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 3e-3, "warmup_steps": 4, "log_every": 4,
                  "checkpoint_every": 4, "precision": "fp32"},
        "out": str(out),
    }



def test_registered_family_trains_logs_saves_loads_and_resumes(tmp_path, tiny_model_config, capsys):
    steps = 4 * (256 // 32)
    result = polymodal.run_training(polymodal.load_run_config(run_config(tmp_path / "a", tiny_model_config)),
                                    progress=False)
    assert isinstance(result.model, ImageTextClassifier) and result.model.steps_seen == steps
    log = read_log(tmp_path / "a")
    train_records = [r for r in log if "loss" in r]
    assert train_records and all({"cross_entropy", "logit_penalty"} <= set(r) for r in train_records)
    first, last = train_records[0], train_records[-1]
    assert abs(first["loss"] - (first["cross_entropy"] + 1e-3 * first["logit_penalty"])) < 1e-4
    assert last["cross_entropy"] < 0.8 * first["cross_entropy"], "the classifier did not learn"
    accuracies = [r["val/top1"] for r in log if "val/top1" in r]
    assert len(accuracies) == 4 and max(accuracies) > 100 / 6 * 1.5, accuracies  # chance: 16.7%

    loaded = polymodal.load_model(tmp_path / "a")
    assert isinstance(loaded, ImageTextClassifier)
    batch = {"image": torch.randn(3, 3, 32, 32), "input_ids": torch.randint(1, 100, (3, 24)),
             "attention_mask": torch.ones(3, 24, dtype=torch.long), "labels": torch.tensor([0, 1, 2])}
    with torch.no_grad():
        assert torch.equal(loaded(**batch)["logits"], result.model.eval()(**batch)["logits"])

    # The CLI scores it as the classifier it is (its run's validation set), and refuses what needs an embedder.
    assert main(["eval", str(tmp_path / "a"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["images"] == 128 and scored["top1"] == accuracies[-1]
    assert main(["embed", str(tmp_path / "a"), "--data", "shapes", "--out", str(tmp_path / "emb")]) == 2
    assert f"a {FAMILY} model has no encode_image" in capsys.readouterr().err

    # The same run, interrupted: drop its newest checkpoint and resume from the one before; the resumed run must
    # retrace the uninterrupted one to the same weights.
    run_b = tmp_path / "b"
    polymodal.run_training(polymodal.load_run_config(run_config(run_b, tiny_model_config)), progress=False)
    checkpoints = run_b / "checkpoints"
    kept = sorted(checkpoints.glob("step_*"))
    assert len(kept) == 2
    shutil.rmtree(kept[-1])
    (checkpoints / "latest").write_text(kept[0].name + "\n")
    resumed = polymodal.run_training(polymodal.load_run_config(run_config(run_b, tiny_model_config)), resume=True,
                                     progress=False)
    assert resumed.position.step == steps and resumed.model.steps_seen == steps - int(kept[0].name.split("_")[1])
    for (name, value), expected in zip(resumed.model.state_dict().items(), result.model.state_dict().values()):
        torch.testing.assert_close(value, expected, msg=lambda m: f"{name}: {m}")
