"""Deterministic fault injection: a process killed between any two writes of a checkpoint, an embedding output
or an index save (``POLYMODAL_FAULT``: ``os._exit`` at a named crash point, as a SIGKILL, no cleanup) leaves the
previous good state loadable, and ``--resume`` continues from the newest verified checkpoint, deletes nothing
valid, and ends with the weights of an uninterrupted run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import polymodal
from polymodal.cli.main import main
from polymodal.data.catalog import load_dataset
from polymodal.data.export import export_jsonl
from polymodal.index import VectorIndex
from polymodal.index.embeddings import load_embeddings
from polymodal.io import FAULT_EXIT_CODE, verify_manifest
from polymodal.train.checkpoint import find_resume_checkpoint
from tests.run_helpers import write_yaml

# 64 scenes in batches of 16: 4 steps an epoch, 2 epochs. Saves: step 3 (checkpoint_every), 4 (end of epoch 0),
# 6, 8 (end of epoch 1), and 8 again when the run ends (which replaces the step-8 folder whole).
STEPS = 8


def run_config(model: dict, out: Path) -> dict:
    return {"model": model, "data": {"train": {"name": "shapes", "split": "train", "size": 64, "image_size": 32},
                                     "val": None},
            "train": {"epochs": 2, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, "log_every": 1,
                      "checkpoint_every": 3, "precision": "fp32"},
            "out": str(out)}


def crash(args: list[str], point: str) -> subprocess.CompletedProcess:
    """Run a CLI verb in a fresh process that dies at ``point`` (NAME@N: the N-th time it is reached)."""
    env = {**os.environ, "POLYMODAL_FAULT": point, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "polymodal.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == FAULT_EXIT_CODE, f"did not die at {point}: {done.returncode} {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_config) -> dict[str, torch.Tensor]:
    """The weights of the same run, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = polymodal.run_training(polymodal.load_run_config(run_config(tiny_model_config, out)), progress=False)
    assert result.position.step == STEPS
    return {name: value.clone() for name, value in result.model.state_dict().items()}


CHECKPOINT_POINTS = [
    "model.weights@2",            # the second save: weights written, config not yet
    "checkpoint.model@2",         # model files written, training state not yet
    "checkpoint.train_state@2",   # everything but the manifest
    "checkpoint.manifest@2",      # complete in staging, not yet renamed
    "checkpoint.staged@2",        # synced, about to be renamed in
    "checkpoint.swapped@2",       # renamed in, `latest` not yet updated
    "checkpoint.latest@2",        # `latest` updated, older ones not yet pruned
    "checkpoint.pruned@3",        # step 3 pruned after step 6 was saved
    "checkpoint.aside@1",         # the final save of step 8 set the first one aside, and died
]


@pytest.mark.parametrize("point", CHECKPOINT_POINTS)
def test_killed_checkpoint_save_resumes_to_the_uninterrupted_weights(point, tmp_path, tiny_model_config, reference):
    out = tmp_path / "run"
    config_file = write_yaml(tmp_path / "run.yaml", run_config(tiny_model_config, out))
    crash(["train", str(config_file), "--no-progress"], point)

    checkpoints = out / "checkpoints"
    if (checkpoints / "latest").is_file():
        polymodal.load_model(out)  # what `latest` names is whole (a checkpoint set aside mid-replace comes back)
    verified_before = {p.name for p in checkpoints.glob("step_*") if verify_manifest(p) is None}
    choice = find_resume_checkpoint(out)
    newest = max(verified_before | {c.name[len(".replaced-"):].rsplit("-", 1)[0]
                                    for c in checkpoints.glob(".replaced-*")})
    assert choice.checkpoint is not None and choice.checkpoint.name == newest
    assert verified_before <= {p.name for p in checkpoints.glob("step_*")}, "a valid checkpoint was deleted"
    assert not list(checkpoints.glob(".staging-*")) and not list(checkpoints.glob(".*.tmp"))

    resumed = polymodal.run_training(polymodal.load_run_config(config_file), resume=True, progress=False)
    assert resumed.position.step == STEPS
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], msg=lambda m: f"{point}, {name}: {m}")


def test_resume_with_no_valid_checkpoint_refuses_and_changes_nothing(tmp_path, tiny_model_config):
    out = tmp_path / "run"
    config_file = write_yaml(tmp_path / "run.yaml", run_config(tiny_model_config, out))
    polymodal.run_training(polymodal.load_run_config(config_file), progress=False)
    for folder in (out / "checkpoints").glob("step_*"):
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])  # truncated, as a full disk leaves it
    listing = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert main(["train", str(config_file), "--resume", "--no-progress"]) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == listing


def test_a_damaged_newest_checkpoint_is_skipped_and_kept(tmp_path, tiny_model_config, reference, caplog):
    out = tmp_path / "run"
    config_file = write_yaml(tmp_path / "run.yaml", run_config(tiny_model_config, out))
    polymodal.run_training(polymodal.load_run_config(config_file), progress=False)
    newest = max((out / "checkpoints").glob("step_*"))
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    caplog.set_level("INFO", logger="polymodal")
    resumed = polymodal.run_training(polymodal.load_run_config(config_file), resume=True, progress=False)
    assert f"skipped {newest.name}" in caplog.text and "has " in caplog.text  # says which, and why
    assert (out / "checkpoints" / f"rejected-{newest.name}").is_dir()
    assert resumed.position.step == STEPS


@pytest.fixture(scope="module")
def embedding_world(tmp_path_factory, tiny_model_config) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outputs")
    config = run_config(tiny_model_config, root / "run")
    polymodal.run_training(polymodal.load_run_config(config), progress=False)
    first = export_jsonl(load_dataset("shapes", split="val", size=12, image_size=32), root / "first", progress=False)
    second = export_jsonl(load_dataset("shapes", split="test", size=20, image_size=32), root / "second",
                          progress=False)
    return {"root": root, "run": root / "run", "first": first, "second": second}


def keys_of(pairs: Path) -> list[str]:
    return [record.key for record in load_dataset(str(pairs)).records]


EMBED_POINTS = ["embed.wrote_embeddings.safetensors", "embed.wrote_keys.json", "embed.staged", "embed.aside",
                "embed.swapped"]


@pytest.mark.parametrize("point", EMBED_POINTS)
def test_killed_embed_leaves_the_previous_output_or_the_new_one_whole(point, tmp_path, embedding_world):
    world, out = embedding_world, tmp_path / "emb"
    assert main(["embed", str(world["run"]), "--data", str(world["first"]), "--out", str(out)]) == 0
    crash(["embed", str(world["run"]), "--data", str(world["second"]), "--out", str(out)], point)
    loaded = load_embeddings(out)  # never a mix: the old output, or (once swapped in) the new one
    expected = world["second"] if point == "embed.swapped" else world["first"]
    assert loaded.keys == keys_of(expected) and loaded.vectors.shape[0] == len(loaded.keys)
    assert main(["index", "build", str(out), "--out", str(tmp_path / "index")]) == 0


INDEX_POINTS = ["index.wrote_index.faiss", "index.wrote_keys.json", "index.staged", "index.aside", "index.swapped"]


@pytest.mark.parametrize("point", INDEX_POINTS)
def test_killed_index_save_leaves_the_previous_index_or_the_new_one_whole(point, tmp_path, embedding_world):
    world = embedding_world
    for name in ("first", "second"):
        assert main(["embed", str(world["run"]), "--data", str(world[name]), "--out", str(tmp_path / name)]) == 0
    index = tmp_path / "index"
    assert main(["index", "build", str(tmp_path / "first"), "--out", str(index)]) == 0
    crash(["index", "build", str(tmp_path / "second"), "--out", str(index)], point)
    loaded = VectorIndex.load(index)
    expected = world["second"] if point == "index.swapped" else world["first"]
    assert loaded.keys == keys_of(expected)
    assert main(["search", "a red circle", "--index", str(index), "-k", "2"]) == 0
