"""Two gloo processes on CPU against one process over the concatenated batch.

One launch of two ranks runs every distributed scenario and saves what each rank saw; the tests below compare
those results with single-process references computed here. Ranks are forked (``torch.multiprocessing``'s
``start_processes``, the machinery under ``spawn``): a fork does not re-import torch (seconds per rank), and a
spawned child must import this module by name (``tests.test_distributed``), which fails under a bare ``pytest``
in importlib mode (the repository root is not on ``sys.path``).
"""
from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from polymodal import distributed
from polymodal.losses import ClipLoss, SigLipLoss
from polymodal.train.grad_cache import grad_cache_step
from tests.distributed_helpers import free_port

WORLD, LOCAL_BATCH, DIM = 2, 3, 8
TOL = {"atol": 1e-5, "rtol": 1e-5}
DDP_STEPS = 3

# name → (loss factory, how many times each rank's features' gradient exceeds the single-process gradient)
LOSSES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "clip_global": (lambda: ClipLoss(), WORLD),
    "clip_local": (lambda: ClipLoss(local_loss=True), WORLD),
    "clip_local_smoothed": (lambda: ClipLoss(label_smoothing=0.1, local_loss=True), WORLD),
    # Only the local slice carries gradient: each rank gets exactly its slice's share, no W-fold sum.
    "clip_global_no_grad_gather": (lambda: ClipLoss(gather_with_grad=False), 1),
    "siglip": (lambda: SigLipLoss(), WORLD),
}
TRAINED = ["clip_global", "clip_local", "siglip"]
# The same scenarios in open_clip's loss.py, given rank and world size explicitly (its distributed peer).
OPEN_CLIP: dict[str, Callable[[ModuleType, int], nn.Module]] = {
    "clip_global": lambda lib, rank: lib.ClipLoss(gather_with_grad=True, rank=rank, world_size=WORLD),
    "clip_local": lambda lib, rank: lib.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=WORLD),
    "clip_global_no_grad_gather": lambda lib, rank: lib.ClipLoss(rank=rank, world_size=WORLD),
    "siglip": lambda lib, rank: lib.SigLipLoss(rank=rank, world_size=WORLD),
}


def open_clip_loss_module() -> ModuleType | None:
    """open_clip's ``loss.py`` alone (it needs only torch; ``import open_clip`` would load timm too)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss", Path(spec.origin).parent / "loss.py")
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def call_loss(loss_fn: nn.Module, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    if isinstance(loss_fn, SigLipLoss):
        return loss_fn(image, text, scale, bias)
    return loss_fn(image, text, scale)


def global_features(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Unit-norm image and text features of the whole (W·B, D) batch, a logit scale and a logit bias."""
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(WORLD * LOCAL_BATCH, DIM, generator=generator), dim=-1)
    text = F.normalize(torch.randn(WORLD * LOCAL_BATCH, DIM, generator=generator), dim=-1)
    return image, text, torch.tensor(10.0), torch.tensor(-3.0)


class TinyDual(nn.Module):
    """Linear 'towers' with the dual encoder's output keys; a bias only for SigLIP (DDP rejects unused params)."""

    def __init__(self, with_bias: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_tower, self.text_tower = nn.Linear(6, DIM), nn.Linear(5, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0)) if with_bias else None

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        output = {
            "image_features": F.normalize(self.image_tower(image), dim=-1),  # (B, D)
            "text_features": F.normalize(self.text_tower(text), dim=-1),  # (B, D)
            "logit_scale": self.logit_scale.exp(),
        }
        if self.logit_bias is not None:
            output["logit_bias"] = self.logit_bias
        return output


def global_batch(step: int, rows: int = WORLD * LOCAL_BATCH) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return {"image": torch.randn(rows, 6, generator=generator), "text": torch.randn(rows, 5, generator=generator)}


def rank_slice(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    rows = next(iter(batch.values())).shape[0] // WORLD
    return {key: value[rank * rows : (rank + 1) * rows] for key, value in batch.items()}


def train_steps(model: nn.Module, loss_fn: nn.Module, rank: int | None) -> dict[str, torch.Tensor]:
    """SGD steps on the step's global batch (rank None) or on this rank's slice of it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(DDP_STEPS):
        batch = global_batch(step)
        loss_fn(**model(**(batch if rank is None else rank_slice(batch, rank)))).backward()
        optimizer.step()
        optimizer.zero_grad()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return {name: p.detach().clone() for name, p in module.state_dict().items()}


def rank_main(rank: int, port: int, out_dir: str) -> None:
    """One rank: every scenario, results saved to ``out_dir/rank{rank}.pt``."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = distributed.init_distributed("gloo")
    results: dict[str, object] = {"info": info}

    image, text, scale, bias = global_features()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    for name, (make_loss, _) in LOSSES.items():
        leaves = [image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_(),
                  scale.clone().requires_grad_(), bias.clone().requires_grad_()]
        loss = call_loss(make_loss(), *leaves)
        results[name] = (loss.detach(), *torch.autograd.grad(loss, leaves, allow_unused=True))

    open_clip_loss = open_clip_loss_module()
    for name, make_peer in OPEN_CLIP.items() if open_clip_loss is not None else ():
        leaves = [image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_(),
                  scale.clone().requires_grad_(), bias.clone().requires_grad_()]
        peer = make_peer(open_clip_loss, rank)
        loss = peer(*leaves) if "siglip" in name else peer(*leaves[:3])
        results[f"open_clip_{name}"] = (loss.detach(), *torch.autograd.grad(loss, leaves, allow_unused=True))

    for name in TRAINED:
        model = DistributedDataParallel(TinyDual(with_bias=name == "siglip"))
        results[f"ddp_{name}"] = train_steps(model, LOSSES[name][0](), rank)

    model = DistributedDataParallel(TinyDual(with_bias=False))
    grad_cache_step(model, rank_slice(global_batch(0, rows=WORLD * 4), rank), ClipLoss(), micro_batch_size=2)
    results["grad_cache"] = {name: p.grad.clone() for name, p in model.module.named_parameters()}

    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    distributed.cleanup()



@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.start_processes(rank_main, args=(free_port(), str(out_dir)), nprocs=WORLD, start_method="fork")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def test_ranks_joined_one_gloo_group(ranks: list[dict]) -> None:
    for rank, results in enumerate(ranks):
        info = results["info"]
        assert (info.rank, info.local_rank, info.world_size) == (rank, rank, WORLD)
        assert info.device == torch.device("cpu") and info.is_main == (rank == 0) and info.is_distributed


@pytest.mark.parametrize("name", list(LOSSES))
def test_gathered_loss_and_gradients_equal_single_process(ranks: list[dict], name: str) -> None:
    make_loss, feature_grad_factor = LOSSES[name]
    leaves = [t.clone().requires_grad_() for t in global_features()]
    loss = call_loss(make_loss(), *leaves)
    image_grad, text_grad, scale_grad, bias_grad = torch.autograd.grad(loss, leaves, allow_unused=True)

    per_rank = [results[name] for results in ranks]
    # DDP averages over ranks: the mean per-rank loss is the single-process loss (equal on every rank if global).
    torch.testing.assert_close(torch.stack([r[0] for r in per_rank]).mean(), loss.detach(), **TOL)
    if "global" in name:
        for rank_loss, *_ in per_rank:
            torch.testing.assert_close(rank_loss, loss.detach(), **TOL)
    for rank, (_, rank_image_grad, rank_text_grad, *_) in enumerate(per_rank):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.testing.assert_close(rank_image_grad / feature_grad_factor, image_grad[rows], **TOL)
        torch.testing.assert_close(rank_text_grad / feature_grad_factor, text_grad[rows], **TOL)
    torch.testing.assert_close(torch.stack([r[3] for r in per_rank]).mean(), scale_grad, **TOL)
    if bias_grad is not None:
        torch.testing.assert_close(torch.stack([r[4] for r in per_rank]).mean(), bias_grad, **TOL)


@pytest.mark.parametrize("name", list(OPEN_CLIP))
def test_each_rank_matches_open_clip_distributed_loss(ranks: list[dict], name: str) -> None:
    if f"open_clip_{name}" not in ranks[0]:
        pytest.skip("open_clip_torch is not installed")
    for results in ranks:
        for ours, theirs in zip(results[name], results[f"open_clip_{name}"]):
            if theirs is None:  # open_clip's CLIP takes no bias
                continue
            torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("name", TRAINED)
def test_ddp_steps_keep_ranks_identical_and_equal_single_process(ranks: list[dict], name: str) -> None:
    first, second = (results[f"ddp_{name}"] for results in ranks)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    reference = train_steps(TinyDual(with_bias=name == "siglip"), LOSSES[name][0](), rank=None)
    initial = TinyDual(with_bias=name == "siglip").state_dict()
    for key, value in reference.items():
        assert not torch.allclose(value, initial[key]), f"{key} did not train"
        torch.testing.assert_close(first[key], value, **TOL)


def test_grad_cache_under_ddp_equals_single_process_big_batch(ranks: list[dict]) -> None:
    model = TinyDual(with_bias=False)
    ClipLoss()(**model(**global_batch(0, rows=WORLD * 4))).backward()
    for results in ranks:
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(results["grad_cache"][name], parameter.grad, **TOL)


def test_dist_info_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    single = distributed.DistInfo.from_env(device_type="cpu")
    assert (single.rank, single.local_rank, single.world_size) == (0, 0, 1)
    assert single.is_main and not single.is_distributed and single.device == torch.device("cpu")
    # Without torchrun, init is a no-op: no process group, losses see one rank.
    assert distributed.init_distributed("gloo") == single
    assert not torch.distributed.is_initialized() and distributed.get_world_size() == 1

    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    info = distributed.DistInfo.from_env(device_type="cuda")  # read now: the environment changed since
    assert (info.rank, info.local_rank, info.world_size) == (5, 1, 8)
    assert not info.is_main and info.is_distributed and info.device == torch.device("cuda", 1)
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(ValueError, match="RANK"):
        distributed.DistInfo.from_env()


def test_single_process_helpers_are_identities() -> None:
    features = torch.randn(3, 4, requires_grad=True)
    assert distributed.gather_with_grad(features) is features
    assert distributed.gather_no_grad(features) is features
    assert distributed.rank_offset_labels(3, rank=2).tolist() == [6, 7, 8]
