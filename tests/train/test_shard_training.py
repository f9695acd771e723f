"""Training streamed from tar shards: the tokenizer's captions, whole epochs, and an exact mid-epoch resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polymodal import RunConfig, run_training
from polymodal.recipes.config import override_run_config
from polymodal.data.records import ImageTextSet
from polymodal.data.shapes import ShapesConfig, ShapesWorld
from polymodal.data.shards import read_captions, write_shards

SCENES, BATCH, EPOCHS = 256, 32, 2
STEPS = EPOCHS * SCENES // BATCH  # 8 shards of 32: no sample dropped, 8 steps an epoch


@pytest.fixture(scope="module")
def scenes() -> ImageTextSet:
    return ShapesWorld(ShapesConfig(image_size=32)).image_text_set("train", SCENES)


@pytest.fixture(scope="module")
def shard_dir(scenes: ImageTextSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    write_shards(scenes, out, samples_per_shard=32, image_format="png", progress=False)
    return out


def shard_run(model: dict, shard_dir: Path, out: Path, *overrides: str) -> RunConfig:
    base = RunConfig(model=model, out=str(out))
    return override_run_config(base, [
        f"data.train={shard_dir}", "data.val.size=64", "data.val.image_size=32", "data.shuffle_buffer=64",
        f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "train.lr=2e-3", "train.precision=fp32",
        "train.checkpoint_every=0", "train.log_every=1",
        # The interrupted run stops at max_steps=5, and max_steps caps the cosine schedule's length. Warmup ends
        # at that same step, so both runs take identical learning rates (warmup does not depend on the length).
        "train.warmup_steps=5", *overrides,
    ])


def test_captions_come_from_the_shards_in_order(scenes: ImageTextSet, shard_dir: Path) -> None:
    assert list(read_captions(shard_dir)) == [caption for record in scenes.records for caption in record.captions]


def test_resume_mid_epoch_from_shards_retraces_the_uninterrupted_run(shard_dir, tmp_path, tiny_model_config) -> None:
    reference = run_training(shard_run(tiny_model_config, shard_dir, tmp_path / "ref"), progress=False)
    assert reference.position.step == STEPS and reference.train_set is None

    stopped = run_training(shard_run(tiny_model_config, shard_dir, tmp_path / "run", "train.max_steps=5"),
                           progress=False)
    assert stopped.position.step == 5  # mid-epoch 0, so the checkpoint holds the stream's position
    state = torch.load(stopped.checkpoint / "train_state.pt", weights_only=False)
    assert state["data"]["epoch"] == 0 and sum(state["data"]["consumed"].values()) == 5 * BATCH

    resumed = run_training(shard_run(tiny_model_config, shard_dir, tmp_path / "run"), resume=True, progress=False)
    assert resumed.position.step == STEPS
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, STEPS + 1))
    for (name, value), expected in zip(resumed.model.state_dict().items(), reference.model.state_dict().values()):
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
