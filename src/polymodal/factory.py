"""Model presets (JSON in ``configs/``) → built models: the one registry of polymodal."""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from polymodal.data.transforms import ImagePreprocess
from polymodal.heads.ensemble import ZeroShotEnsembleHead
from polymodal.heads.projection import LinearProjection, ResidualProjection
from polymodal.models.dual_encoder import DualEncoder


def _preset_files() -> dict[str, Any]:
    folder = resources.files("polymodal") / "configs"
    return {entry.name[: -len(".json")]: entry for entry in folder.iterdir() if entry.name.endswith(".json")}


def list_models() -> list[str]:
    """Names of the model presets, e.g. ``["clip-resnet-gru", "clip-small", "clip-tiny", ...]``."""
    return sorted(_preset_files())


def get_model_config(name: str) -> dict[str, Any]:
    """A deep copy of a preset's config dict."""
    presets = _preset_files()
    if name not in presets:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(presets))}")
    return json.loads(presets[name].read_text(encoding="utf-8"))


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with dotted keys set, e.g. ``{"image.layers": 2, "embed_dim": 64}``."""
    config = copy.deepcopy(config)
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"override {dotted!r}: {part!r} is not a section of the config")
            node = node[part]
        node[leaf] = value
    return config


def _build_image_encoder(spec: dict[str, Any]) -> tuple[nn.Module, ImagePreprocess]:
    spec = dict(spec)
    kind = spec.pop("type")
    spec.pop("frozen", None)
    if kind == "efficientnet_lite0":
        from polymodal.encoders.pretrained import EfficientNetLite0Tower

        tower = EfficientNetLite0Tower(pretrained=spec.pop("pretrained", True), frozen=False)
        return tower, ImagePreprocess(tower.image_size, tower.mean, tower.std)
    image_size = spec["image_size"] if kind == "vit" else spec.pop("image_size")
    if kind == "vit":
        from polymodal.encoders.image_vit import ViTImageEncoder

        return ViTImageEncoder(**spec), ImagePreprocess(image_size)
    if kind == "resnet":
        from polymodal.encoders.image_cnn import ResNetImageEncoder

        return ResNetImageEncoder(**spec), ImagePreprocess(image_size)
    raise ValueError(f"image.type {kind!r} is not one of: vit, resnet, efficientnet_lite0")


def _build_text_encoder(spec: dict[str, Any]) -> nn.Module:
    spec = dict(spec)
    kind = spec.pop("type")
    spec.pop("frozen", None)
    if kind == "minilm":
        from polymodal.encoders.pretrained import MiniLMTextTower

        return MiniLMTextTower(frozen=False)
    if kind == "transformer":
        from polymodal.encoders.text_transformer import TransformerTextEncoder

        return TransformerTextEncoder(**spec)
    if kind == "gru":
        from polymodal.encoders.text_rnn import GRUTextEncoder

        spec.pop("context_length", None)
        return GRUTextEncoder(**spec)
    raise ValueError(f"text.type {kind!r} is not one of: transformer, gru, minilm")


def _set_grad_checkpointing(encoder: nn.Module, enable: bool, tower: str, kind: str) -> None:
    """Turn on activation recompute for ``tower`` (``{tower}.grad_checkpointing: true``), if its encoder has it.

    Only the from-scratch transformers recompute per block; asking for it elsewhere is a config error rather
    than a silent no-op, since the user is counting on the memory saving.
    """
    if not enable:
        return
    if not hasattr(encoder, "set_grad_checkpointing"):
        raise ValueError(f"{tower}.grad_checkpointing: {tower}.type {kind!r} does not support gradient "
                         "checkpointing (only the transformer towers do: image 'vit', text 'transformer')")
    encoder.set_grad_checkpointing(True)


def build_model(config: dict[str, Any], for_loading: bool = False) -> DualEncoder:
    """Build a :class:`DualEncoder` from a config dict (a preset's JSON, possibly overridden).

    ``for_loading=True`` skips work whose result a checkpoint is about to overwrite (derived buffers).
    ``image.grad_checkpointing`` / ``text.grad_checkpointing: true`` recompute that tower's transformer blocks
    in the backward pass (less activation memory, one more forward's compute).
    """
    for section in ("embed_dim", "image", "text"):
        if section not in config:
            raise KeyError(f"model config is missing {section!r}")
    image_spec, text_spec = dict(config["image"]), dict(config["text"])
    image_checkpointing = bool(image_spec.pop("grad_checkpointing", False))
    text_checkpointing = bool(text_spec.pop("grad_checkpointing", False))
    image_encoder, preprocess = _build_image_encoder(image_spec)
    text_encoder = _build_text_encoder(text_spec)
    _set_grad_checkpointing(image_encoder, image_checkpointing, "image", image_spec["type"])
    _set_grad_checkpointing(text_encoder, text_checkpointing, "text", text_spec["type"])
    embed_dim = int(config["embed_dim"])
    bridge = config.get("bridge")
    if bridge is not None:
        from polymodal.heads.bridge_head import build_conse_image_head

        options = {key: value for key, value in bridge.items() if key != "type"}
        if bridge.get("type") != "conse":
            raise ValueError(f"bridge.type {bridge.get('type')!r} is not one of: conse")
        # Both heads ensemble their zero-shot part with the fine-tuned whole (weight 0 while training).
        image_head = ZeroShotEnsembleHead(
            build_conse_image_head(image_encoder, text_encoder, embed_dim, embed_class_names=not for_loading, **options)
        )
        text_head: nn.Module = ZeroShotEnsembleHead(ResidualProjection(embed_dim))
    else:
        image_head = LinearProjection(image_encoder.width, embed_dim)
        text_head = LinearProjection(text_encoder.width, embed_dim)
    model = DualEncoder(
        image_encoder,
        text_encoder,
        image_head,
        text_head,
        init_logit_scale=config.get("init_logit_scale", 2.6593),
        init_logit_bias=config.get("init_logit_bias"),
        freeze_image=bool(config["image"].get("frozen", False)),
        freeze_text=bool(config["text"].get("frozen", False)),
    )
    model.config = copy.deepcopy(config)
    model.preprocess = preprocess
    return model


def create_model(
    name_or_config: str | dict[str, Any], pretrained: str | Path | None = None, **overrides: Any
) -> DualEncoder:
    """Build a model from a preset name or config dict; ``pretrained`` is a polymodal checkpoint directory.

    ``overrides`` use dotted keys written with ``__`` in Python (``image__layers=2``) or passed as a dict of
    dotted keys via ``apply_overrides``.
    """
    if pretrained is not None:
        from polymodal.train.checkpoint import load_model

        return load_model(pretrained, **overrides)
    config = get_model_config(name_or_config) if isinstance(name_or_config, str) else copy.deepcopy(name_or_config)
    config = apply_overrides(config, {key.replace("__", "."): value for key, value in overrides.items()})
    return build_model(config)
