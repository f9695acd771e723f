"""FSDP2 training on CPU (2 forked gloo ranks, as ``test_ddp.py``): the library's loop with a sharded model equals
one process over the global batch, and a ``train.fsdp`` run saved mid-way and resumed from its sharded checkpoint
ends with the weights of the uninterrupted run."""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.utils.data import DataLoader

from polymodal import distributed
from polymodal import load_run_config, run_training
from polymodal.data.sampler import ResumableRandomSampler
from polymodal.models.registry import build_model
from polymodal.model_io import load_model
from polymodal.recipes.config import override_run_config
from polymodal.losses import ClipLoss
from polymodal.train.checkpoint import TRAIN_STATE
from polymodal.train.fit import fit
from polymodal.train.fsdp import SHARDED, full_model_state, shard_model
from polymodal.train.loop import LoopSettings
from tests.distributed_helpers import free_port
from tests.train.test_ddp import PAIRS, TOL, RandomPairs, train_pairs

WORLD, BATCH = 2, 8  # per rank; the one-process reference takes WORLD x BATCH


def fsdp_model_config(tiny_model_config: dict) -> dict:
    """The tiny model with a transformer text tower (so both towers have blocks to shard) and the image tower
    recomputing its activations (FSDP and gradient checkpointing together, as a large run would use them)."""
    config = copy.deepcopy(tiny_model_config)
    config["image"]["grad_checkpointing"] = True
    config["text"] = {"type": "transformer", "context_length": 24, "vocab_size": 512, "width": 64, "layers": 2,
                      "heads": 4, "mlp_ratio": 2.0, "causal": True, "pool": "eos"}
    return config


def train_sharded(model_config: dict, rank: int) -> dict[str, torch.Tensor]:
    """``test_ddp.train_pairs`` with the model sharded by FSDP2 instead of wrapped in DDP; the gathered weights."""
    torch.manual_seed(0)
    model = shard_model(build_model(model_config))
    sampler = ResumableRandomSampler(PAIRS, seed=0, rank=rank, world_size=WORLD)
    loader = DataLoader(RandomPairs(), batch_size=BATCH, sampler=sampler, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    fit(model, loader, ClipLoss(gather_with_grad=True), optimizer, scheduler,
        LoopSettings(torch.device("cpu"), progress=False), epochs=2)
    return full_model_state(model)


def rank_main(rank: int, port: int, out_dir: str, model_config: dict, configs: dict[str, str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_distributed("gloo")
    results: dict[str, object] = {"loop": train_sharded(model_config, rank)}
    whole = load_run_config(configs["whole"])
    result = run_training(whole, progress=False)
    results["whole"] = (result.position.step, full_model_state(result.model))
    # A run interrupted after its step-2 checkpoint: that checkpoint alone, resumed (same schedule, same data).
    split = Path(whole.out).parent / "split" / "checkpoints"
    if rank == 0:
        shutil.copytree(Path(whole.out) / "checkpoints" / "step_000002", split / "step_000002")
        (split / "latest").write_text("step_000002\n")
    dist.barrier()
    result = run_training(override_run_config(whole, [f"out={split.parent}"]), resume=True, progress=False)
    results["resumed"] = (result.position.step, full_model_state(result.model))
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    distributed.cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, tiny_model_config: dict) -> tuple[list[dict], Path, dict]:
    root = tmp_path_factory.mktemp("fsdp")
    model_config = fsdp_model_config(tiny_model_config)
    config = {
        "model": model_config,
        "data": {"train": {"name": "shapes", "split": "train", "size": 128, "image_size": 32},
                 "val": {"name": "shapes", "split": "val", "size": 32, "image_size": 32}},
        "train": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "warmup_steps": 1, "log_every": 1,
                  "checkpoint_every": 2, "precision": "fp32", "fsdp": True},
        "out": str(root / "whole"),
    }
    # 128 pairs / (2 ranks x 16) = 4 steps, a checkpoint every 2; the interrupted run resumes at step 2.
    configs = {"whole": str(root / "whole.yaml")}
    Path(configs["whole"]).write_text(yaml.safe_dump(config))
    mp.start_processes(rank_main, args=(free_port(), str(root), model_config, configs), nprocs=WORLD,
                       start_method="fork")
    return [torch.load(root / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)], root, model_config


def test_fsdp_loop_equals_one_process(ranks) -> None:
    results, _, model_config = ranks
    assert results[1]["loop"] == {}, "the full state is gathered on rank 0 only"
    reference = train_pairs(model_config, {}, WORLD * BATCH, rank=0, world_size=1)
    torch.manual_seed(0)
    initial = build_model(model_config).state_dict()
    assert not torch.allclose(reference["logit_scale"], initial["logit_scale"]), "training moved the weights"
    sharded = results[0]["loop"]
    assert sharded.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(sharded[key], value, **TOL, msg=lambda m: f"{key}: {m}")


def test_fsdp_run_saves_sharded_and_consolidated_checkpoints_and_resumes(ranks) -> None:
    results, root, _ = ranks
    assert [r["resumed"][0] for r in results] == [r["whole"][0] for r in results] == [4, 4]
    checkpoint = root / "split" / "checkpoints" / "step_000004"
    assert (checkpoint / SHARDED / ".metadata").is_file()
    assert torch.load(checkpoint / TRAIN_STATE, weights_only=False)["optimizer"] is None, "kept in the shards"
    # The consolidated weights load as any checkpoint does (polymodal eval) and are the trained ones.
    whole, resumed = results[0]["whole"][1], results[0]["resumed"][1]
    loaded = load_model(checkpoint).state_dict()
    for key, value in resumed.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
        torch.testing.assert_close(value, whole[key], **TOL, msg=lambda m: f"{key}: {m}")


def test_fsdp_needs_several_processes(tmp_path) -> None:
    config = load_run_config(None, [f"out={tmp_path / 'run'}", "train.fsdp=true"])
    with pytest.raises(ValueError, match="train.fsdp shards the model over processes"):
        run_training(config, progress=False)
