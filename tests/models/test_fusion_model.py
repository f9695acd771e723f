"""The fusion model families (vqa, multimodal_classifier): every preset and fusion level builds, runs forward and
backward with gradients reaching every trainable parameter, saves and loads; bad configs are refused clearly."""
import copy

import pytest
import torch

from polymodal.factory import create_model, get_model_config, list_models
from polymodal.fusion import FUSIONS
from polymodal.losses import ClassificationLoss, VQALoss, vqa_soft_bce
from polymodal.model_io import load_model, save_model
from polymodal.models.registry import build_loss
from polymodal.typed_config import ConfigError

FUSION_PRESETS = [name for name in list_models()
                  if get_model_config(name)["family"] in ("vqa", "multimodal_classifier")]


def _batch(config: dict, batch: int = 3) -> dict[str, torch.Tensor]:
    out = {}
    if config.get("image"):
        size = config["image"].get("image_size", 224)  # pretrained towers: their own input size
        out["image"] = torch.randn(batch, 3, size, size)
    if config.get("text"):
        length = config["text"]["context_length"]
        out["input_ids"] = torch.randint(3, config["text"]["vocab_size"], (batch, length))
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[1, length // 3:] = 0
        out["attention_mask"] = mask
    if config["family"] == "vqa":
        out["targets"] = torch.rand(batch, config["num_outputs"]).round()
    else:
        out["labels"] = torch.randint(config["num_outputs"], (batch,))
    return out


def _check_all_parameters_get_gradients(config: dict) -> None:
    """After one SGD step, a second backward reaches every parameter. (At initialisation some gradients are zero
    by design: the ResNet's residual branches and FiLM's generator start at zero so each block is an identity.)"""
    torch.manual_seed(0)
    model = create_model(config).train()
    batch = _batch(config)
    loss_fn = build_loss(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        output = model(**batch)
        assert output["logits"].shape == (3, config["num_outputs"])
        loss_fn(**output).backward()
        optimizer.step()
    silent = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not silent, f"no gradient reaches {silent}"


def test_the_expected_presets_exist():
    assert {"vqa-concat-tiny", "vqa-gated-tiny", "vqa-tfn-tiny", "vqa-bilinear-tiny", "vqa-vilt-tiny",
            "vqa-coattn-tiny", "vqa-question-only-tiny", "vqa-image-only-tiny", "mm-classifier-tiny",
            "vqa-xattn-effnet"} <= set(FUSION_PRESETS)


@pytest.mark.parametrize("name", FUSION_PRESETS)
def test_preset_forward_backward_reaches_every_parameter(name):
    _check_all_parameters_get_gradients(get_model_config(name))


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_every_fusion_kind_trains_inside_the_model(kind):
    config = copy.deepcopy(get_model_config("vqa-concat-tiny"))
    options = {"layers": 1, "heads": 4} if kind in ("cross_attention", "single_stream", "co_attention") else {}
    config["fusion"] = {"level": "early", "kind": kind, "dim": 64, "options": options}
    _check_all_parameters_get_gradients(config)


@pytest.mark.parametrize("combine", ["mean", "weighted", "gate"])
@pytest.mark.parametrize("level", ["late", "hybrid"])
def test_late_and_hybrid_fusion(level, combine):
    config = copy.deepcopy(get_model_config("vqa-concat-tiny"))
    config["fusion"] = {"level": level, "kind": "concat", "dim": 64, "combine": combine}
    model = create_model(config)
    assert set(model.heads) == ({"image", "text"} | ({"fused"} if level == "hybrid" else set()))
    assert model.late.branches[-1] == ("fused" if level == "hybrid" else "text")
    if combine != "mean":
        _check_all_parameters_get_gradients(config)


def test_late_mean_is_the_average_of_the_modality_heads():
    config = copy.deepcopy(get_model_config("vqa-concat-tiny"))
    config["fusion"] = {"level": "late", "combine": "mean"}
    model = create_model(config).eval()
    batch = _batch(config)
    features = model.encode(batch["image"], batch["input_ids"], batch["attention_mask"])
    expected = (model.heads["image"](features["image"].pooled) + model.heads["text"](features["text"].pooled)) / 2
    torch.testing.assert_close(model(**batch)["logits"], expected)


def test_single_modality_baselines_ignore_the_other_input():
    question_only = create_model("vqa-question-only-tiny").eval()
    batch = _batch(get_model_config("vqa-question-only-tiny"))
    with torch.no_grad():
        logits = question_only(**batch)["logits"]
        torch.testing.assert_close(question_only(**batch, image=torch.randn(3, 3, 32, 32))["logits"], logits)
    assert question_only.preprocess is None and "image" not in question_only.encoders


def test_save_and_load_round_trip(tmp_path):
    model = create_model("vqa-tfn-tiny").eval()
    model.config["answers"] = ["yes", "no"]
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    batch = _batch(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(**batch)["logits"], model(**batch)["logits"])
    assert loaded.config["answers"] == ["yes", "no"]


def test_losses_match_their_formulas():
    logits, targets = torch.tensor([[2.0, -1.0], [0.5, 0.0]]), torch.tensor([[1.0, 1 / 3], [0.0, 2 / 3]])
    p = torch.sigmoid(logits)
    per_entry = -(targets * p.log() + (1 - targets) * (1 - p).log())
    torch.testing.assert_close(vqa_soft_bce(logits, targets), per_entry.sum() / 2)
    torch.testing.assert_close(VQALoss()(logits, targets), per_entry.sum() / 2)
    labels = torch.tensor([0, 1])
    expected = -(logits.log_softmax(-1)[[0, 1], [0, 1]]).mean()
    torch.testing.assert_close(ClassificationLoss()(logits, labels), expected)


def test_bad_configs_are_refused_with_the_key():
    base = get_model_config("vqa-concat-tiny")
    with pytest.raises(ConfigError, match="unknown fusion kind 'nope'"):
        create_model({**base, "fusion": {"kind": "nope"}})
    with pytest.raises(ConfigError, match="accepts"):
        create_model({**base, "fusion": {"kind": "concat", "options": {"rank": 3}}})
    with pytest.raises(ConfigError, match="fusion.level"):
        create_model({**base, "fusion": {"level": "sideways"}})
    no_inputs = {key: value for key, value in base.items() if key not in ("image", "text")}
    with pytest.raises(ConfigError, match="needs an `image` or a `text`"):
        create_model(no_inputs)
    with pytest.raises(ConfigError, match="num_outputs"):
        create_model({**base, "num_outputs": 0})


def test_multimodal_classifier_trains_and_evaluates_end_to_end(tmp_path):
    from polymodal import load_run_config, run_training
    from tests.run_helpers import read_log

    config = {
        "model": "mm-classifier-tiny",
        "data": {"train": {"name": "shapes", "split": "train", "size": 256, "image_size": 32},
                 "val": {"name": "shapes", "split": "val", "size": 64, "image_size": 32}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.002, "warmup_steps": 2, "checkpoint_every": 0,
                  "precision": "fp32"},
        "out": str(tmp_path / "run"),
    }
    result = run_training(load_run_config(config), progress=False)
    val = [record for record in read_log(tmp_path / "run") if "val/top1" in record]
    assert len(val) == 2 and 0 <= val[-1]["val/top1"] <= 100
    assert result.model.config["class_names"] == list(result.train_set.class_names)
    too_few = {**config, "model": {**get_model_config("mm-classifier-tiny"), "num_outputs": 2},
               "out": str(tmp_path / "small")}
    with pytest.raises(ValueError, match="set model.num_outputs="):
        run_training(load_run_config(too_few), progress=False)


def test_image_positions_add_the_scaled_2d_sincos_table_to_encoder_and_cached_tokens():
    config = copy.deepcopy(get_model_config("vqa-concat-tiny"))
    config["fusion"] = {"kind": "cross_attention", "dim": 32, "options": {"heads": 2}, "image_positions": "sincos"}
    torch.manual_seed(0)
    model = create_model(config).eval()
    plain = create_model({**config, "fusion": {**config["fusion"], "image_positions": "none"}}).eval()
    missing = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing.unexpected_keys == ["image_positions.scale"] and not missing.missing_keys
    batch = _batch(config)
    text = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        # The scale starts at zero: a new model is the position-free one.
        assert torch.equal(model(**batch)["logits"], plain(**batch)["logits"])
        width = model.image_positions.scale.numel()
        model.image_positions.scale.copy_(torch.linspace(-2, 2, width))
        raw = plain.encode(batch["image"], **text)["image"]
        placed = model.encode(batch["image"], **text)["image"]
        side = int(raw.tokens.shape[1] ** 0.5)
        # MAE's table by hand: the first half of the channels encodes the column, the second half the row.
        omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
        token = side + 2  # row 1, column 2
        column, row = 2 * omega, 1 * omega
        expected = torch.cat([column.sin(), column.cos(), row.sin(), row.cos()]).float() * torch.linspace(-2, 2, width)
        torch.testing.assert_close(placed.tokens[:, token] - raw.tokens[:, token], expected.expand(3, -1))
        assert torch.equal(placed.pooled, raw.pooled)
        cached = model.encode(**text, image_tokens=raw.tokens, image_pooled=raw.pooled)["image"]
        torch.testing.assert_close(cached.tokens, placed.tokens)
        with pytest.raises(ValueError, match="square token grid; the image encoder gave 5 tokens"):
            model.encode(**text, image_tokens=raw.tokens[:, :5], image_pooled=raw.pooled)
    _check_all_parameters_get_gradients(config)
    started = create_model({**config, "fusion": {**config["fusion"], "image_positions_scale": 1.0}})
    assert torch.equal(started.image_positions.scale, torch.ones(width))
    with pytest.raises(ConfigError, match="image_positions"):
        create_model({**config, "fusion": {**config["fusion"], "image_positions": "learned"}})
    question_only = {key: value for key, value in config.items() if key != "image"}
    question_only["fusion"] = {"kind": "concat", "dim": 32, "image_positions": "sincos"}
    with pytest.raises(ConfigError, match="image_positions = 'sincos' needs an `image` section"):
        create_model(question_only)


@pytest.mark.parametrize(("kind", "level"), [("cross_attention", "early"), ("concat", "hybrid")])
def test_image_position_channels_append_the_2d_sincos_table_to_tokens_and_zeros_to_pooled(kind, level):
    config = copy.deepcopy(get_model_config("vqa-concat-tiny"))
    options = {"heads": 2} if kind == "cross_attention" else {}
    config["fusion"] = {"kind": kind, "level": level, "dim": 32, "options": options,
                        "image_positions": "sincos_channels", "image_position_channels": 8}
    torch.manual_seed(0)
    model = create_model(config).eval()
    assert not list(model.image_positions.parameters())  # a fixed table: cached tower outputs stay valid
    batch = _batch(config)
    text = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        raw = model.encoders["image"](batch["image"])
        placed = model.encode(batch["image"], **text)["image"]
        width, side = raw.tokens.shape[2], int(raw.tokens.shape[1] ** 0.5)
        assert placed.tokens.shape == (3, side * side, width + 8) and placed.pooled.shape == (3, raw.pooled.shape[1] + 8)
        torch.testing.assert_close(placed.tokens[..., :width], raw.tokens)  # content channels untouched
        # MAE's table by hand (2 frequencies per half): row 1, column 2.
        omega = torch.tensor([1.0, 0.01], dtype=torch.float64)
        column, row = 2 * omega, 1 * omega
        expected = torch.cat([column.sin(), column.cos(), row.sin(), row.cos()]).float()
        torch.testing.assert_close(placed.tokens[:, side + 2, width:], expected.expand(3, -1))
        torch.testing.assert_close(placed.pooled[:, :width], raw.pooled)
        assert torch.equal(placed.pooled[:, width:], torch.zeros(3, 8))
        cached = model.encode(**text, image_tokens=raw.tokens, image_pooled=raw.pooled)["image"]
        torch.testing.assert_close(cached.tokens, placed.tokens)
        assert model(**batch)["logits"].shape == (3, config["num_outputs"])
    _check_all_parameters_get_gradients(config)
    with pytest.raises(ConfigError, match="fusion.image_position_channels must be a multiple of 4, got 6"):
        create_model({**config, "fusion": {**config["fusion"], "image_position_channels": 6}})
    with pytest.raises(ConfigError, match="image_position_channels applies to image_positions 'sincos_channels' only"):
        create_model({**config, "fusion": {**config["fusion"], "image_positions": "sincos"}})
