"""warmup_cosine: the learning rate at every step against known values and the closed-form schedule."""
import math

import pytest
import torch

from polymodal.train.schedule import warmup_cosine

BASE_LR = 0.8


def closed_form(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warmup (step + 1) / warmup, then half a cosine from 1 down to ``min_ratio``, flat afterwards."""
    warmup = min(max(warmup, 0), total)
    if step < warmup:
        return BASE_LR * (step + 1) / warmup
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return BASE_LR * (min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * progress)) / 2)


def lrs(warmup: int, total: int, steps: int, min_ratio: float = 0.0) -> list[float]:
    """The optimizer's lr before step 0, 1, ..., steps - 1, as a training loop sees it."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=BASE_LR)
    scheduler = warmup_cosine(optimizer, warmup, total, min_lr_ratio=min_ratio)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_known_values_warmup_4_total_12() -> None:
    """Hand-computed lr at step 0, mid-warmup, end of warmup, the cosine midpoint and the end."""
    seen = lrs(warmup=4, total=12, steps=16)
    assert seen[0] == pytest.approx(0.2)  # 0.8 * 1/4
    assert seen[1] == pytest.approx(0.4)  # mid-warmup: 0.8 * 2/4
    assert seen[3] == pytest.approx(0.8)  # last warmup step reaches the base lr
    assert seen[4] == pytest.approx(0.8)  # cosine starts at cos(0) = 1
    assert seen[8] == pytest.approx(0.4)  # cosine midpoint: (12 - 4) / 2 steps in, half the base lr
    assert seen[6] == pytest.approx(0.8 * (1 + math.cos(math.pi / 4)) / 2)  # a quarter of the way: 0.6828...
    assert seen[12] == pytest.approx(0.0, abs=1e-12)  # end of the schedule
    assert seen[13:] == pytest.approx([0.0] * 3, abs=1e-12)  # stays at the floor past total_steps
    assert seen == pytest.approx([closed_form(s, 4, 12) for s in range(16)], rel=1e-12, abs=1e-15)


def test_min_lr_ratio_is_the_floor() -> None:
    seen = lrs(warmup=2, total=10, steps=14, min_ratio=0.1)
    assert seen[6] == pytest.approx(0.8 * (0.1 + 0.9 * 0.5))  # midpoint: 0.44
    assert seen[10] == pytest.approx(0.08)  # 0.1 x base at the end
    assert seen[13] == pytest.approx(0.08)
    assert seen == pytest.approx([closed_form(s, 2, 10, 0.1) for s in range(14)], rel=1e-12)
    assert min(seen) == pytest.approx(0.08)


def test_cosine_decreases_monotonically_after_warmup() -> None:
    seen = lrs(warmup=3, total=20, steps=21)
    assert seen[:3] == pytest.approx([0.8 / 3, 1.6 / 3, 0.8])
    decay = seen[3:]
    assert all(a > b for a, b in zip(decay, decay[1:])), decay


def test_no_warmup_starts_at_base_lr() -> None:
    seen = lrs(warmup=0, total=4, steps=6)
    # progress 0, 1/4, 2/4, 3/4, 1, 1 -> base * (1 + cos(pi * progress)) / 2
    expected = [0.8, 0.8 * (1 + math.sqrt(0.5)) / 2, 0.4, 0.8 * (1 - math.sqrt(0.5)) / 2, 0.0, 0.0]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_negative_warmup_is_no_warmup() -> None:
    assert lrs(warmup=-5, total=4, steps=6) == pytest.approx(lrs(warmup=0, total=4, steps=6), abs=1e-15)


def test_warmup_longer_than_total_is_clipped_to_total() -> None:
    # warmup 10 > total 4: the warmup is clipped to 4 steps (0.2, 0.4, 0.6, 0.8), then cosine over
    # max(1, 0) = 1 step: step 4 is at progress 0 (base lr), step 5 and later at progress 1 (floor).
    seen = lrs(warmup=10, total=4, steps=7)
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.0, 0.0], abs=1e-12)
    assert lrs(warmup=4, total=4, steps=7) == pytest.approx(seen, abs=1e-15)


def test_single_step_schedule() -> None:
    assert lrs(warmup=0, total=1, steps=3) == pytest.approx([0.8, 0.0, 0.0], abs=1e-12)
    assert lrs(warmup=1, total=1, steps=3) == pytest.approx([0.8, 0.8, 0.0], abs=1e-12)


@pytest.mark.parametrize("total", [0, -3])
def test_total_steps_must_be_positive(total: int) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    with pytest.raises(ValueError, match=f"total_steps must be positive, got {total}"):
        warmup_cosine(optimizer, 0, total)


def test_state_dict_resume_continues_the_schedule() -> None:
    """A scheduler rebuilt from a state dict gives the lr of the step where the first one stopped."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=BASE_LR)
    scheduler = warmup_cosine(optimizer, 4, 12)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    resumed = warmup_cosine(resumed_optimizer, 4, 12)
    resumed.load_state_dict(scheduler.state_dict())
    resumed_optimizer.step()
    resumed.step()
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(closed_form(8, 4, 12)) == pytest.approx(0.4)
