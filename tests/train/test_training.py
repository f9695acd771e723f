"""Learning check on the generated world, checkpoint round trip, and resume after a hard kill."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from polymodal import load_run_config, run_training
from polymodal.metrics.retrieval import chance_recall
from polymodal.model_io import load_model, load_tokenizer
from polymodal.train.checkpoint import find_resume_checkpoint
from tests.run_helpers import read_log, write_yaml


def tiny_config(model: dict, out: Path, **train) -> dict:
    return {
        "model": model,
        "data": {"train": {"name": "shapes", "split": "train", "size": 768, "image_size": 32},
                 "val": {"name": "shapes", "split": "val", "size": 128, "image_size": 32}},
        "train": {"epochs": 3, "batch_size": 32, "lr": 2e-3, "warmup_steps": 5, "log_every": 4,
                  "checkpoint_every": 4, "precision": "fp32", **train},
        "out": str(out),
    }



def groups_of(dataset) -> tuple[list[str], list[str]]:
    return [r.group for r in dataset.records], [r.group for r in dataset.records for _ in r.captions]



def test_tiny_model_learns_on_generated_world(tmp_path, tiny_model_config):
    config_file = write_yaml(tmp_path / "run.yaml", tiny_config(tiny_model_config, tmp_path / "run", epochs=10))
    result = run_training(load_run_config(config_file), progress=False)
    log = read_log(tmp_path / "run")
    losses = [r["loss"] for r in log if "loss" in r]
    recalls = [r["val/text_to_image_R@1"] for r in log if "val/text_to_image_R@1" in r]
    chance = chance_recall(*groups_of(result.val_set))["text_to_image_R@1"]  # ~0.8% for 128 scenes
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], f"loss did not fall: {losses}"
    assert max(recalls[-3:]) > 3 * chance and max(recalls[-3:]) > 2 * recalls[0], f"R@1 did not rise: {recalls}"
    assert result.position.step == 10 * (768 // 32)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, tiny_model_config):
    config_file = write_yaml(tmp_path / "run.yaml", tiny_config(tiny_model_config, tmp_path / "run", epochs=1))
    result = run_training(load_run_config(config_file), progress=False)
    loaded = load_model(tmp_path / "run").eval()
    tokenizer = load_tokenizer(tmp_path / "run")
    result.model.eval()
    tokens = tokenizer(["a red circle left of a blue square"])
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(image=image, **tokens)["image_features"], result.model(image=image, **tokens)["image_features"])
    checkpoint = find_resume_checkpoint(tmp_path / "run").checkpoint
    assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json",
                                                      "preprocess.json", "train_state.pt", "manifest.json"}
    assert not list((tmp_path / "run" / "checkpoints").glob(".staging-*")), "no staging directory left behind"


def test_resume_after_kill_reaches_same_step_and_loss(tmp_path, tiny_model_config):
    epochs, steps_per_epoch = 3, 768 // 32
    reference = run_training(load_run_config(write_yaml(tmp_path / "ref.yaml", tiny_config(tiny_model_config, tmp_path / "ref", epochs=epochs))), progress=False)
    reference_loss = [r["loss"] for r in read_log(tmp_path / "ref") if "loss" in r][-1]

    run = tmp_path / "run"
    config_file = write_yaml(tmp_path / "run.yaml", tiny_config(tiny_model_config, run, epochs=epochs))
    command = [sys.executable, "-m", "polymodal.cli", "train", str(config_file), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if latest.exists() and int(latest.read_text().strip().split("_")[1]) >= 8:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = int(latest.read_text().strip().split("_")[1])
    assert 0 < killed_at < epochs * steps_per_epoch, "the kill must land mid-run"

    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained to step {epochs * steps_per_epoch}" in resumed.stdout
    log = read_log(run)
    final = {r["step"]: r for r in log if "loss" in r}
    last_step = max(final)
    assert last_step == epochs * steps_per_epoch
    # Same batches, same RNG: the resumed run retraces the uninterrupted one.
    assert final[last_step]["loss"] == pytest.approx(reference_loss, rel=1e-4)
    resumed_model = load_model(run)
    for (name, a), b in zip(resumed_model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
def test_compiled_run_trains_like_the_eager_one_and_saves_plain_weights(tmp_path, tiny_model_config):
    logs = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        config = tiny_config(tiny_model_config, out, epochs=1, max_steps=6, compile=compiled, log_every=1)
        run_training(load_run_config(config), progress=False)
        logs[compiled] = [r["loss"] for r in read_log(out) if "loss" in r]
    assert len(logs[True]) == 6
    assert max(abs(a - b) for a, b in zip(logs[True], logs[False], strict=True)) < 1e-4
    loaded = load_model(tmp_path / "compile-True")  # strict load: no torch.compile prefix in the saved names
    assert not any("_orig_mod" in name for name in loaded.state_dict())
