"""GradCache gives the gradients of one big-batch backward; plain accumulation does not (it changes the negatives)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import polymodal
from polymodal.losses import ClipLoss, SigLipLoss
from polymodal.train.grad_cache import grad_cache_step, split_batch

TOL = {"atol": 1e-5, "rtol": 1e-4}
BATCH, MICRO = 8, 3  # micro-batches of 3, 3, 2: an uneven last chunk is part of the contract


def tiny_model(config: dict, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = polymodal.create_model(config, **overrides)
    return model.train()


def make_batch(config: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size, length = config["image"]["image_size"], config["text"]["context_length"]
    lengths = torch.randint(3, length + 1, (BATCH,), generator=generator)
    return {
        "image": torch.randn(BATCH, 3, size, size, generator=generator),
        "input_ids": torch.randint(1, config["text"]["vocab_size"], (BATCH, length), generator=generator),
        "attention_mask": (torch.arange(length) < lengths[:, None]).long(),  # (B, L) right padding
    }


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def full_batch_grads(model: nn.Module, batch: dict, loss_fn: nn.Module) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(**model(**batch))
    loss.backward()
    return loss.detach(), grads_of(model)


def assert_same_grads(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_split_batch_keeps_order_and_rejects_ragged_batches() -> None:
    batch = {"image": torch.arange(7.0)[:, None], "input_ids": torch.arange(7)[:, None]}
    chunks = split_batch(batch, 3)
    assert [len(c["image"]) for c in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), batch["input_ids"])
    with pytest.raises(ValueError, match="first dimension"):
        split_batch({"image": torch.zeros(4, 1), "input_ids": torch.zeros(3, 1)}, 2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        split_batch(batch, 0)


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_grad_cache_equals_one_big_batch_backward(tiny_model_config: dict, loss_name: str) -> None:
    overrides = {"loss": loss_name, "init_logit_bias": -5.0} if loss_name == "siglip" else {}
    model = tiny_model(tiny_model_config, **overrides)
    loss_fn = SigLipLoss() if loss_name == "siglip" else ClipLoss(label_smoothing=0.1)
    batch = make_batch(tiny_model_config)
    reference_loss, reference = full_batch_grads(model, batch, loss_fn)

    model.zero_grad(set_to_none=True)
    loss = grad_cache_step(model, batch, loss_fn, micro_batch_size=MICRO)["loss"]
    torch.testing.assert_close(loss, reference_loss, **TOL)
    assert_same_grads(grads_of(model), reference)
    assert "logit_scale" in reference and reference["logit_scale"].abs() > 0
    if loss_name == "siglip":
        assert "logit_bias" in reference


def test_plain_accumulation_changes_the_gradients(tiny_model_config: dict) -> None:
    # Each micro-batch as its own contrastive batch sees 2-3 candidates instead of 8: a different objective.
    model, loss_fn = tiny_model(tiny_model_config), ClipLoss()
    batch = make_batch(tiny_model_config)
    _, reference = full_batch_grads(model, batch, loss_fn)

    model.zero_grad(set_to_none=True)
    micro_batches = split_batch(batch, MICRO)
    for micro in micro_batches:
        (loss_fn(**model(**micro)) / len(micro_batches)).backward()
    plain = grads_of(model)
    relative = {name: ((plain[name] - g).norm() / g.norm()).item() for name, g in reference.items()}
    assert relative["logit_scale"] > 0.1
    assert max(relative.values()) > 0.1


def test_grad_cache_replays_dropout_masks(tiny_model_config: dict) -> None:
    # Reference: the same micro-batch forward passes, in the same RNG order, kept in one graph.
    model = tiny_model(tiny_model_config, image__dropout=0.3, text__dropout=0.3)
    loss_fn, batch = ClipLoss(), make_batch(tiny_model_config)

    torch.manual_seed(123)
    outputs = [model(**micro) for micro in split_batch(batch, MICRO)]
    joined = {key: torch.cat([o[key] for o in outputs]) for key in ("image_features", "text_features")}
    loss_fn(**joined, logit_scale=outputs[0]["logit_scale"]).backward()
    reference = grads_of(model)

    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    grad_cache_step(model, batch, loss_fn, micro_batch_size=MICRO)
    assert_same_grads(grads_of(model), reference)

    # Dropout is really on: other masks give other gradients.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    grad_cache_step(model, batch, loss_fn, micro_batch_size=MICRO)
    assert not torch.allclose(grads_of(model)["logit_scale"], reference["logit_scale"], **TOL)


def test_grad_cache_leaves_scaled_gradients_for_the_scaler(tiny_model_config: dict) -> None:
    model, loss_fn, batch = tiny_model(tiny_model_config), ClipLoss(), make_batch(tiny_model_config)
    _, reference = full_batch_grads(model, batch, loss_fn)
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    grad_cache_step(model, batch, loss_fn, micro_batch_size=MICRO, scaler=scaler)
    assert_same_grads({name: g / 256.0 for name, g in grads_of(model).items()}, reference)
