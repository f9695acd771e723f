"""Every preset builds, runs forward and backward; configs and overrides behave."""
import copy
import json

import pytest
import torch

import polymodal
from polymodal.factory import apply_overrides, build_model, create_model, get_model_config, list_models
from polymodal.losses import ClipLoss, SigLipLoss

SCRATCH = [name for name in list_models() if get_model_config(name)["image"]["type"] in ("vit", "resnet")]


def test_public_names():
    assert polymodal.create_model is create_model and polymodal.list_models is list_models
    assert {"clip-tiny", "clip-small", "clip-vit-b-32", "lit-effnet-minilm"} <= set(list_models())


@pytest.mark.parametrize("name", SCRATCH)
def test_preset_forward_backward(name):
    torch.manual_seed(0)
    config = get_model_config(name)
    model = create_model(name)
    size, length = config["image"]["image_size"], config["text"]["context_length"]
    batch = 2
    image = torch.randn(batch, 3, size, size)
    input_ids = torch.randint(5, 200, (batch, length))
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, length // 2 :] = 0
    output = model(image=image, input_ids=input_ids, attention_mask=attention_mask)
    assert output["image_features"].shape == (batch, config["embed_dim"])
    assert torch.allclose(output["image_features"].norm(dim=-1), torch.ones(batch), atol=1e-5)
    loss_fn = SigLipLoss() if config["loss"] == "siglip" else ClipLoss()
    loss = loss_fn(**output)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.logit_scale.grad is not None
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("image_head"))


def test_overrides_and_unknown_names():
    model = create_model("clip-tiny", image__layers=1, embed_dim=32)
    assert model.config["image"]["layers"] == 1 and model.image_head.proj.out_features == 32
    with pytest.raises(ValueError, match="unknown model 'nope'.*clip-tiny"):
        create_model("nope")
    with pytest.raises(KeyError, match="not a section"):
        apply_overrides({"embed_dim": 4}, {"embed_dim.x": 1})
    bad = get_model_config("clip-tiny")
    bad["image"]["type"] = "mlp"
    with pytest.raises(ValueError, match="image.type 'mlp'"):
        create_model(bad)


def test_presets_are_valid_json_with_description():
    for name in list_models():
        config = get_model_config(name)
        assert config["description"] and config["loss"] in ("clip", "siglip")
        json.dumps(config)


def test_grad_checkpointing_gives_the_same_loss_and_gradients(tiny_model_config) -> None:
    config = copy.deepcopy(tiny_model_config)
    config["text"] = {"type": "transformer", "context_length": 8, "vocab_size": 64, "width": 32, "layers": 2,
                      "heads": 4}
    batch = {"image": torch.randn(4, 3, 32, 32), "input_ids": torch.randint(1, 64, (4, 8))}
    results = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_model(apply_overrides(config, {"image.grad_checkpointing": enabled,
                                                     "text.grad_checkpointing": enabled}))
        assert model.image_encoder.transformer.grad_checkpointing is enabled
        assert model.text_encoder.transformer.grad_checkpointing is enabled
        loss = ClipLoss()(**model(**batch))
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=lambda m: f"{name}: {m}")


def test_grad_checkpointing_on_a_tower_without_it_is_an_error(tiny_model_config) -> None:
    config = apply_overrides(copy.deepcopy(tiny_model_config), {"text.grad_checkpointing": True})
    with pytest.raises(ValueError, match="text.type 'gru' does not support gradient checkpointing"):
        build_model(config)
