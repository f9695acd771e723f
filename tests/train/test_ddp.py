"""Training across processes: the library's loop under DDP against one process, the rank-sharded sampler, a
2-rank run streaming shards, and a 2-process run resumed from the CLI (with 2 processes, then with 1) and evaluated.

Ranks are forked (as in ``tests/test_distributed.py``: a fork does not re-import torch, seconds per process) for
everything but the resumed run, which goes through ``polymodal train --nproc 2`` (torchrun) as a user's would.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from polymodal import distributed
from polymodal.cli.main import main
from polymodal import load_run_config, run_training
from polymodal.data.sampler import ResumableRandomSampler
from polymodal.data.shapes import ShapesConfig, ShapesWorld
from polymodal.data.shards import write_shards
from polymodal.models.registry import build_model
from polymodal.losses import ClipLoss
from polymodal.train.fit import fit
from polymodal.train.loop import LoopSettings
from tests.distributed_helpers import free_port
from tests.run_helpers import read_log, write_yaml

WORLD, PAIRS, CONTEXT = 2, 64, 24
# name → (LoopSettings keywords, loader batch per rank under DDP); the one-process reference takes WORLD x that.
SCENARIOS = {
    "plain": ({}, 8),
    "accumulation": ({"accum_steps": 2}, 4),  # 2 micro-batches of 4 per rank (8 gathered) per step
    "grad_cache": ({"grad_cache_micro_batch": 2}, 8),  # one contrastive batch of 16, embedded 2 rows at a time
}
TOL = {"atol": 2e-5, "rtol": 1e-4}
SHARD_SCENES, SHARD_BATCH = 256, 32  # the 2-rank shard run: 256 // (2 x 32) = 4 steps per epoch


class RandomPairs(Dataset):
    """Fixed random images and token ids with the dual encoder's forward keywords."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(PAIRS, 3, 32, 32, generator=generator)
        self.input_ids = torch.randint(5, 512, (PAIRS, CONTEXT), generator=generator)

    def __len__(self) -> int:
        return PAIRS

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "input_ids": self.input_ids[index],
                "attention_mask": torch.ones(CONTEXT, dtype=torch.long)}


def train_pairs(model_config: dict, settings: dict, batch_size: int, rank: int, world_size: int) -> dict:
    """Two epochs of the library's ``fit`` on :class:`RandomPairs`; the final weights."""
    torch.manual_seed(0)
    model = build_model(model_config)
    sampler = ResumableRandomSampler(PAIRS, seed=0, rank=rank, world_size=world_size)
    loader = DataLoader(RandomPairs(), batch_size=batch_size, sampler=sampler, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trained = DistributedDataParallel(model) if world_size > 1 else model
    # gather_with_grad: DDP's averaged gradients are then exactly those of one process over the global batch.
    fit(trained, loader, ClipLoss(gather_with_grad=True), optimizer, scheduler,
        LoopSettings(torch.device("cpu"), progress=False, **settings), epochs=2)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def rank_main(rank: int, port: int, out_dir: str, model_config: dict, configs: dict[str, str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_distributed("gloo")
    results = {name: train_pairs(model_config, settings, batch, rank, WORLD)
               for name, (settings, batch) in SCENARIOS.items()}
    for name, config in configs.items():
        result = run_training(load_run_config(config), progress=False)
        results[name] = (result.position.step, result.model.state_dict())
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    distributed.cleanup()



def run_config(model_config: dict, out: Path, train: object, **options: object) -> dict:
    """Tiny model, 2 epochs of ``train`` at 32 px, validation on 64 scenes, a log record every step."""
    return {
        "model": model_config,
        "data": {"train": train, "val": {"name": "shapes", "split": "val", "size": 64, "image_size": 32}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 2e-3, "warmup_steps": 2, "log_every": 1,
                  "checkpoint_every": 2, "precision": "fp32", **options},
        "out": str(out),
    }




@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, tiny_model_config: dict) -> tuple[list[dict], Path]:
    """One launch of 2 ranks: the loop scenarios, the shard run (``ROOT/shard_run``) and the first 3 steps of
    the run the CLI test resumes (``ROOT/run``, configured by ``ROOT/run.yaml``). Returns each rank's results."""
    root = tmp_path_factory.mktemp("ddp")
    write_shards(ShapesWorld(ShapesConfig(image_size=32)).image_text_set("train", SHARD_SCENES), root / "shards",
                 samples_per_shard=32, image_format="png", progress=False)
    shard_config = write_yaml(root / "shards.yaml", run_config(
        tiny_model_config, root / "shard_run", str(root / "shards"), batch_size=SHARD_BATCH))
    shapes = {"name": "shapes", "split": "train", "size": 256, "image_size": 32}
    run = run_config(tiny_model_config, root / "run", shapes)
    write_yaml(root / "run.yaml", run)
    run["train"]["max_steps"] = 3
    configs = {"shards": str(shard_config), "first_steps": str(write_yaml(root / "first_steps.yaml", run))}
    mp.start_processes(rank_main, args=(free_port(), str(root), tiny_model_config, configs), nprocs=WORLD,
                       start_method="fork")
    return [torch.load(root / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)], root


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_loop_keeps_ranks_identical_and_equals_one_process(ranks, tiny_model_config, name) -> None:
    first, second = (results[name] for results in ranks[0])
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs across ranks"
    settings, batch = SCENARIOS[name]
    reference = train_pairs(tiny_model_config, settings, WORLD * batch, rank=0, world_size=1)
    torch.manual_seed(0)
    initial = build_model(tiny_model_config).state_dict()
    assert not torch.allclose(reference["logit_scale"], initial["logit_scale"]), "training moved the weights"
    for key, value in reference.items():
        torch.testing.assert_close(first[key], value, **TOL, msg=lambda m: f"{key}: {m}")


def test_two_ranks_train_from_shards(ranks) -> None:
    results, root = ranks
    run = root / "shard_run"
    (first_step, first), (second_step, second) = (r["shards"] for r in results)
    assert first_step == second_step == 2 * SHARD_SCENES // (WORLD * SHARD_BATCH)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    log = read_log(run)
    assert [r["step"] for r in log if "loss" in r] == list(range(1, first_step + 1)), "rank 0 alone logs"
    assert all(r["samples_per_s"] == pytest.approx(WORLD * r["samples_per_s_per_rank"]) for r in log if "loss" in r)
    assert [r["step"] for r in log if "val/text_to_image_R@1" in r] == [first_step // 2, first_step]


def test_sampler_shards_each_epoch_and_resumes_with_another_world_size() -> None:
    whole = list(ResumableRandomSampler(100, seed=3))
    per_rank = [list(ResumableRandomSampler(100, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 50 and sorted(sum(per_rank, [])) == sorted(whole)
    # 3 global batches of 2 x 4 consumed exactly the first 24 positions of the epoch's permutation ...
    consumed = per_rank[0][:12] + per_rank[1][:12]
    assert sorted(consumed) == sorted(whole[:24])
    # ... so 3 processes resuming at global sample 24 see the rest, each index once, ranks evenly (one dropped).
    rest = []
    for rank in range(3):
        sampler = ResumableRandomSampler(100, seed=3, rank=rank, world_size=3)
        sampler.set_epoch(0, start=24)
        rest.append(list(sampler))
    assert [len(part) for part in rest] == [25, 25, 25]
    assert len(set(consumed).union(*rest)) == 24 + 75


def test_two_process_run_resumes_from_the_cli_evaluates_and_continues_with_one_process(ranks, tmp_path, capsys):
    results, root = ranks
    run, solo = root / "run", tmp_path / "solo"
    assert [r["first_steps"][0] for r in results] == [3, 3]
    shutil.copytree(run, solo)

    # 2 processes x 32 = 64 pairs a step: 4 steps an epoch. The resumed run finishes both epochs.
    done = subprocess.run(
        [sys.executable, "-m", "polymodal.cli", "train", str(root / "run.yaml"), "--resume", "--nproc", str(WORLD),
         "--no-progress"], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "trained to step 8" in done.stdout
    log = read_log(run)
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9)), "each step logged once, by rank 0"
    assert [(r["step"], r["epoch"]) for r in log if "val/text_to_image_R@1" in r] == [(4, 0), (8, 1)]
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 64

    # One process resumes the 2-process checkpoint of step 3 at global sample 3 x 64 = 192 of 256: 2 more steps
    # of 32 finish epoch 0 (step 5), then epoch 1 takes 256 // 32 = 8 steps.
    assert main(["train", str(root / "run.yaml"), "--resume", "--no-progress", "--set", f"out={solo}"]) == 0
    assert "trained to step 13" in capsys.readouterr().out
    log = read_log(solo)
    assert [(r["step"], r["epoch"]) for r in log if "val/text_to_image_R@1" in r] == [(5, 0), (13, 1)]
