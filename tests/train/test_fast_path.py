"""The fast training step follows the plain one: fused AdamW and bf16 autocast each train a tiny CLIP for 50 steps
from the same seed on the same batches (loss 4.2 -> 1.0), and their loss curves are compared with the eager fp32
step with the multi-tensor AdamW (the slow reference). Tolerances: fused 1e-5 at every step (rounding only); bf16
0.05 at every step and 0.01 on the mean of the last ten. ``torch.compile`` is compared with the eager step through
the whole training run in ``test_training.py`` (one cold Inductor compile costs over a minute on 2 cores, so the
suite pays for one)."""
import json

import pytest
import torch

from polymodal import create_model
from polymodal.losses import ClipLoss
from polymodal.precision import resolve_precision
from polymodal.train.checkpoint import TrainPosition
from polymodal.train.loop import LoopSettings, train_one_epoch
from polymodal.train.metrics_log import MetricsLog
from polymodal.train.optim import create_optimizer
from polymodal.train.schedule import warmup_cosine

STEPS, BATCH, CONTEXT, VOCAB = 50, 16, 12, 80
TINY_CLIP = {
    "embed_dim": 32, "loss": "clip",
    "image": {"type": "vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "pool": "mean"},
    "text": {"type": "transformer", "context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "layers": 2,
             "heads": 2, "causal": True, "pool": "eos"},
}


def _batches() -> list[dict[str, torch.Tensor]]:
    """Each batch holds one image of each of 16 classes: its class's fixed pattern plus noise; its caption names
    the class in a few tokens of varying length, padded to the batch's longest caption (as the tokenizer pads)."""
    generator = torch.Generator().manual_seed(1)
    patterns = torch.randn(BATCH, 3, 16, 16, generator=generator)
    batches = []
    for _ in range(STEPS):
        labels = torch.randperm(BATCH, generator=generator)
        lengths = torch.randint(3, CONTEXT + 1, (BATCH,), generator=generator)
        longest = int(lengths.max())
        mask = (torch.arange(longest)[None] < lengths[:, None]).long()
        words = 3 + labels[:, None] * 4 + torch.randint(4, (BATCH, longest), generator=generator)
        input_ids = torch.where(mask.bool(), words, 0)
        input_ids[torch.arange(BATCH), lengths - 1] = 2  # EOS
        image = patterns[labels] + 0.5 * torch.randn(BATCH, 3, 16, 16, generator=generator)
        batches.append({"image": image, "input_ids": input_ids, "attention_mask": mask})
    return batches


def _loss_curve(tmp_path, name: str, *, fused: bool, precision: str = "fp32") -> list[float]:
    torch.manual_seed(0)
    model = create_model(TINY_CLIP)
    optimizer = create_optimizer(model, lr=3e-3, fused=fused)
    assert optimizer.defaults["fused"] is fused
    scheduler = warmup_cosine(optimizer, warmup_steps=5, total_steps=STEPS)
    settings = LoopSettings(device=torch.device("cpu"), precision=precision, log_every=1, progress=False)
    log_path = tmp_path / f"{name}.jsonl"
    train_one_epoch(model, _batches(), ClipLoss(), optimizer, scheduler, TrainPosition(), settings, STEPS,
                    log=MetricsLog(log_path))
    return [json.loads(line)["loss"] for line in log_path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    curve = _loss_curve(tmp_path_factory.mktemp("reference"), "eager", fused=False)
    assert len(curve) == STEPS
    assert sum(curve[-5:]) / 5 < 0.5 * curve[0], f"the tiny CLIP must learn for the comparison to mean anything: {curve}"
    return curve


def _max_gap(curve: list[float], reference: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(curve, reference, strict=True))


def test_fused_adamw_follows_the_multi_tensor_curve(tmp_path, reference) -> None:
    # The same arithmetic in another order: rounding differences only, which 50 steps do not amplify.
    assert _max_gap(_loss_curve(tmp_path, "fused", fused=True), reference) < 1e-5  # measured 6e-7


def test_bf16_step_follows_the_fp32_curve(tmp_path, reference) -> None:
    # bf16 keeps 8 bits of mantissa in the matmuls: the curve wobbles around the fp32 one but learns the same.
    curve = _loss_curve(tmp_path, "bf16", fused=True, precision="bf16")
    assert _max_gap(curve, reference) < 0.05  # measured 0.005 (loss 4.2 -> 1.0)
    assert abs(sum(curve[-10:]) - sum(reference[-10:])) / 10 < 0.01


def test_auto_precision_on_this_machine_picks_what_the_probe_says() -> None:
    fast_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if fast_bf16 else "fp32")
