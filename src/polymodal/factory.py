"""Model presets (JSON in ``configs/``, file stem == model name) → built models.

``create_model`` is the one entry: a preset name or a config dict, optional dotted overrides, optionally a saved
model directory to load instead. Which class gets built is the config's ``family``
(:mod:`polymodal.models.registry`).
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from polymodal.models.registry import build_model
from polymodal.model_io import load_model
from polymodal.typed_config import ConfigError

__all__ = ["apply_overrides", "create_model", "get_model_config", "list_models", "preset_where"]


def _preset_files() -> dict[str, Any]:
    folder = resources.files("polymodal") / "configs"
    return {entry.name[: -len(".json")]: entry for entry in folder.iterdir() if entry.name.endswith(".json")}


def list_models() -> list[str]:
    """Names of the model presets, e.g. ``["clip-resnet-gru", "clip-small", "clip-tiny", ...]``."""
    return sorted(_preset_files())


def preset_where(name: str) -> str:
    """How errors name a preset: its file."""
    return f"preset {name} (configs/{name}.json)"


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
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section of the config")
            node = node[part]
        node[leaf] = value
    return config


def create_model(
    name_or_config: str | dict[str, Any], pretrained: str | Path | None = None, **overrides: Any
) -> nn.Module:
    """Build a model from a preset name or config dict, or load a saved one.

    Args:
        name_or_config: a preset (:func:`list_models`) or a whole model config dict.
        pretrained: a model directory written by :func:`polymodal.save_model` (or a run directory); the
            saved config then decides the architecture and ``name_or_config`` is not consulted.
        overrides: dotted keys written with ``__`` (``image__layers=2``); not allowed with ``pretrained``.
    """
    if pretrained is not None:
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} cannot change a saved model ({pretrained})")
        return load_model(pretrained)
    if isinstance(name_or_config, str):
        config, where = get_model_config(name_or_config), preset_where(name_or_config)
    else:
        config, where = copy.deepcopy(name_or_config), "model config"
    config = apply_overrides(config, {key.replace("__", "."): value for key, value in overrides.items()})
    return build_model(config, where)
