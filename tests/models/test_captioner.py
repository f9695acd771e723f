"""The captioner family: teacher-forcing outputs, config checks, save/load, and learning checks for cross-entropy
(a tiny captioner learns to name coloured shapes) and for self-critical training (the policy gradient raises a
hand-made reward)."""
from __future__ import annotations

import copy

import pytest
import torch

import polymodal
from polymodal.data.tokenizers import TextTokenizer
from polymodal.factory import get_model_config
from polymodal.losses.captioning import IGNORE, CaptionLoss, SCSTLoss, scst_loss
from polymodal.models.registry import build_model
from polymodal.typed_config import ConfigError

TINY = {
    "family": "captioner",
    "image": {"type": "resnet", "image_size": 16, "layers": [1, 1], "width": 16, "stem": "cifar"},
    "text": {"type": "decoder", "vocab_size": 64, "context_length": 16, "width": 32, "layers": 1, "heads": 2,
             "mlp_ratio": 2.0, "dropout": 0.0},
    "generate": {"method": "greedy"},
}


@pytest.mark.parametrize("name", ["caption-tiny", "caption-small"])
def test_preset_teacher_forcing_outputs_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = polymodal.create_model(name)
    size = model.preprocess.image_size
    ids = torch.tensor([[1, 7, 8, 9, 2, 0], [1, 5, 2, 0, 0, 0]])
    mask = (ids != 0).long()
    mask[:, 0] = 1
    out = model(image=torch.randn(2, 3, size, size), input_ids=ids, attention_mask=mask)
    vocab = get_model_config(name)["text"]["vocab_size"]
    assert out["logits"].shape == (2, 5, vocab)
    # Targets are the next tokens; padding is ignored by the loss.
    assert out["targets"].tolist() == [[7, 8, 9, 2, IGNORE], [5, 2, IGNORE, IGNORE, IGNORE]]
    CaptionLoss(label_smoothing=0.1)(**out)["loss"].backward()
    for param_name, param in model.decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    # The image tower learns through the cross-attention (a ResNet's zero-initialised residual branches get
    # their first gradient only after a step, so check the tower as a whole).
    assert all(param.grad is not None for param in model.image_encoder.parameters())
    assert sum(param.grad.abs().sum() for param in model.image_encoder.parameters()) > 0


def test_config_errors_name_the_key() -> None:
    bad = copy.deepcopy(TINY)
    bad["generate"] = {"beams": 3}
    with pytest.raises(ConfigError, match="generate.beams"):
        build_model(bad)
    bad = copy.deepcopy(TINY)
    bad["text"]["type"] = "transformer"
    with pytest.raises(ConfigError, match="text.type"):
        build_model(bad)
    with pytest.raises(ValueError, match="unknown generation setting"):
        build_model(TINY).generate(torch.zeros(1, 3, 16, 16), beams=2)


def test_save_load_round_trip_generates_the_same_captions(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    image = torch.randn(3, 3, 16, 16)
    polymodal.save_model(model, tmp_path / "m")
    loaded = polymodal.load_model(tmp_path / "m")
    for method in ("greedy", "beam"):
        assert loaded.generate(image, method=method).sequences == model.generate(image, method=method).sequences


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def _coloured_images(colours: list[str], noise: float, generator: torch.Generator) -> torch.Tensor:
    rgb = torch.tensor([COLOURS[c] for c in colours], dtype=torch.float32) / 127.5 - 1  # (B, 3)
    images = rgb[:, :, None, None].expand(-1, -1, 16, 16)
    return images + noise * torch.randn(images.shape, generator=generator)


def test_learns_to_caption_colours_with_teacher_forcing() -> None:
    """A caption names the image's colour in one of two phrasings; greedy decoding must name it right."""
    torch.manual_seed(0)
    captions = {c: [f"a {c} square", f"the square is {c}"] for c in COLOURS}
    tokenizer = TextTokenizer.train_bpe([t for ts in captions.values() for t in ts] * 4, vocab_size=300,
                                        context_length=16, min_frequency=1)
    config = copy.deepcopy(TINY)
    config["text"]["vocab_size"] = tokenizer.vocab_size  # the byte-level alphabet alone is 256 tokens
    config.update(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn, generator, names = CaptionLoss(), torch.Generator().manual_seed(0), list(COLOURS)
    losses = []
    for step in range(120):
        colours = [names[i] for i in torch.randint(0, 4, (32,), generator=generator).tolist()]
        texts = [captions[c][i % 2] for i, c in enumerate(colours)]
        terms = loss_fn(**model(image=_coloured_images(colours, 0.1, generator), **tokenizer(texts)))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert sum(losses[-10:]) / 10 < 0.35 * sum(losses[:10]) / 10
    model.eval()
    decoded = model.generate(_coloured_images(names, 0.0, generator), method="greedy")
    texts = [tokenizer.decode(ids).strip() for ids in decoded.sequences]
    assert all(text in captions[colour] for text, colour in zip(texts, names)), texts


def test_scst_loss_is_the_advantage_weighted_negative_log_likelihood() -> None:
    log_probs = torch.tensor([[-0.5, -1.0, -2.0], [-0.2, -0.3, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, baselines = torch.tensor([1.0, 0.5]), torch.tensor([0.25, 1.0])
    # -( (1 - 0.25) * (-3.5) + (0.5 - 1) * (-0.5) ) / 2 = -(-2.625 + 0.25) / 2 = 1.1875
    loss = scst_loss(log_probs, mask, rewards, baselines)
    assert loss.item() == pytest.approx(1.1875)
    loss.backward()
    torch.testing.assert_close(log_probs.grad, torch.tensor([[-0.375] * 3, [0.25, 0.25, 0.0]]))


def test_scst_baselines_greedy_and_mean_of_the_other_samples() -> None:
    # Reward = how many times token 7 occurs; 2 images x 3 samples.
    def reward(image_index: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
        return torch.tensor([float(seq.count(7)) for seq in sequences])

    sample_ids = torch.tensor([[7, 7, 2], [7, 2, -1], [3, 2, -1], [7, 7, 7], [2, -1, -1], [7, 2, -1]])
    outputs = {"sample_ids": sample_ids, "sample_mask": (sample_ids >= 0).long(),
               "sample_log_probs": torch.full((6, 3), -1.0), "sample_entropy": torch.ones(6, 3),
               "image_index": torch.tensor([0, 1]), "greedy_ids": torch.tensor([[7, -1, -1], [7, 7, -1]])}
    greedy = SCSTLoss(reward, "greedy")(**outputs)
    assert greedy["reward"].item() == pytest.approx((2 + 1 + 0 + 3 + 0 + 1) / 6)
    assert greedy["baseline"].item() == pytest.approx((1 * 3 + 2 * 3) / 6)
    assert greedy["entropy"].item() == pytest.approx(1.0)
    mean = SCSTLoss(reward, "mean")(**outputs)
    # Image 0 rewards 2, 1, 0 -> baselines 0.5, 1, 1.5; image 1 rewards 3, 0, 1 -> 0.5, 2, 1.5.
    assert mean["baseline"].item() == pytest.approx((0.5 + 1 + 1.5 + 0.5 + 2 + 1.5) / 6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        SCSTLoss(reward, "mean")(**{**outputs, "sample_ids": sample_ids[::3], "sample_mask": outputs["sample_mask"][::3],
                                    "sample_log_probs": torch.zeros(2, 3), "sample_entropy": torch.zeros(2, 3)})


def test_self_critical_training_raises_the_reward() -> None:
    """Rewarding captions for each occurrence of one token: SCST must make the policy produce it more often."""
    torch.manual_seed(0)
    target = 9

    def reward(image_index: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
        return torch.tensor([sum(token == target for token in seq) / 7 for seq in sequences])

    model = build_model(TINY)
    model.scst_samples = 4
    loss_fn = SCSTLoss(reward, "mean")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images = torch.randn(8, 3, 16, 16)
    rewards = []
    for _ in range(40):
        terms = loss_fn(**model(image=images, image_index=torch.arange(8)))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        rewards.append(terms["reward"].item())
    assert sum(rewards[:5]) / 5 < 0.1
    assert sum(rewards[-5:]) / 5 > 0.5
