"""Training run configuration: a YAML/JSON file (or a dict) + dotted overrides → typed dataclasses.

Every key is checked when the config is loaded (type, range, known name), so a bad value stops the run before it
starts with a message that names the key, the value and the file.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from polymodal.factory import get_model_config
from polymodal.typed_config import ConfigError, dataclass_from_mapping

__all__ = ["DataConfig", "OptimConfig", "RunConfig", "load_run_config", "override_run_config", "parse_value",
           "run_config_to_dict"]


class ConfigLoader(yaml.SafeLoader):
    """YAML as users write it: ``lr: 2e-3`` is a number. (PyYAML follows YAML 1.1, where a float needs a dot and a
    signed exponent, so ``2e-3`` and ``1e4`` would be read as strings.)"""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class DataConfig:
    """Where the pairs come from. Each entry is a catalog name (``shapes``, ``openmoji``), a path to a
    supported file/folder, or a dict ``{name: ..., split: ..., size: ...}``. A ``train`` directory holding a
    ``shards.json`` (``polymodal data shard``) is streamed from its tar shards instead of loaded."""

    train: Any = field(default_factory=lambda: {"name": "shapes", "split": "train", "size": 4000})
    val: Any = field(default_factory=lambda: {"name": "shapes", "split": "val", "size": 500})
    # carve the validation set out of `train` instead (when `val` is null)
    val_fraction: float = field(default=0.0, metadata={"min": 0, "max": 0.9})
    skip_bad: bool = False
    # samples held for shuffling a shard stream (more mixes better, costs memory)
    shuffle_buffer: int = field(default=1000, metadata={"min": 1})


@dataclass
class OptimConfig:
    """Optimisation settings. ``batch_size`` is per process, as open_clip's ``--batch-size`` is per GPU: under
    ``torchrun`` with W processes a step sees ``batch_size x W`` pairs (x ``accum_steps``)."""

    epochs: int = field(default=10, metadata={"min": 1})
    batch_size: int = field(default=128, metadata={"min": 1})
    lr: float = field(default=1e-3, metadata={"above": 0})
    weight_decay: float = field(default=0.1, metadata={"min": 0})
    warmup_steps: int = field(default=50, metadata={"min": 0})
    grad_clip: float | None = field(default=1.0, metadata={"above": 0})
    # plain accumulation: each micro-batch is its own contrastive batch (fewer negatives)
    accum_steps: int = field(default=1, metadata={"min": 1})
    # GradCache: the whole batch's negatives, this many rows per pass
    grad_cache_micro_batch: int | None = field(default=None, metadata={"min": 1})
    max_steps: int | None = field(default=None, metadata={"min": 1})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0
    num_workers: int = field(default=0, metadata={"min": 0})
    log_every: int = field(default=10, metadata={"min": 1})
    checkpoint_every: int = field(default=200, metadata={"min": 0})  # 0: only at the end of each epoch
    label_smoothing: float = field(default=0.0, metadata={"min": 0, "max": 1})
    # CLIP loss across processes, as open_clip's --local-loss / --gather-with-grad (both off by default there).
    # Global loss without gather_with_grad gives tower gradients 1/W of the single-process ones; turn
    # gather_with_grad on for exactly the single-process gradients, local_loss on for (B, W·B) logits per rank.
    local_loss: bool = False
    gather_with_grad: bool = False
    # FSDP2 instead of DDP (several processes): parameters, gradients and optimizer state sharded over ranks.
    fsdp: bool = False
    # DDP's gradient all-reduce: bucket size in MiB (PyTorch's default 25), and whether gradients live inside the
    # communication buckets (saves one copy of the gradients per step and their memory).
    ddp_bucket_mb: float = field(default=25.0, metadata={"above": 0})
    ddp_gradient_as_bucket_view: bool = False
    cache_features: bool = True  # frozen towers: compute their outputs once and train on the cache
    device: str = "auto"
    # torch.compile the model (Inductor: C++ on CPU, Triton on CUDA). The first steps pay the compile (a minute
    # or more for a small CLIP on 2 CPU cores; see the README's performance section), so it pays only on long runs.
    compile: bool = False
    # Captioning: self-critical sequence training (Rennie et al. 2017) instead of cross-entropy, usually starting
    # from a cross-entropy-trained captioner (`model: runs/NAME`). Samples per image, and the reward baseline:
    # the greedy caption's CIDEr-D ("greedy") or the mean of the image's other samples ("mean").
    scst: bool = False
    scst_samples: int = field(default=5, metadata={"min": 1})
    scst_baseline: Literal["greedy", "mean"] = "greedy"


@dataclass
class RunConfig:
    """Everything ``polymodal train`` needs. ``model`` is a preset name, a full model config dict, or the directory
    of a saved model or run to start from (its weights and tokenizer, with a fresh optimizer: fine-tuning)."""

    model: Any = "clip-tiny"
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    out: str = "runs/default"


def parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars: ``3`` → int, ``1e-3`` → float, ``true`` → bool, ``[1,2]`` → list."""
    return yaml.load(text, Loader=ConfigLoader)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for index, part in enumerate(parents):
        if part == "model" and index == 0 and isinstance(node.get("model"), str):
            node["model"] = get_model_config(node["model"])  # expand a preset so its fields can be overridden
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is {child!r}, not a section")
        node = child
    node[leaf] = value


def load_run_config(
    path_or_dict: str | Path | Mapping[str, Any] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """A run config from a YAML/JSON file, a dict of the same shape, or the defaults (None), with ``key=value``
    overrides (as ``polymodal train --set``) applied; every key is checked.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: a key is unknown, a value has the wrong type or is out of range (the message names them).
    """
    tree: dict[str, Any] = {}
    path = None
    if isinstance(path_or_dict, Mapping):
        tree = _plain(path_or_dict)
    elif path_or_dict is not None:
        path = Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            tree = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML/JSON: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    return _run_config_from_tree(_with_overrides(_with_defaults(tree), overrides), str(path) if path else "config")


def _with_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """The file's sections laid over the defaults, so ``--set data.train.size=64`` refines the default dataset
    rather than replacing it with ``{size: 64}``; a key the file sets replaces the default whole."""
    defaults = run_config_to_dict(RunConfig())
    merged = {**defaults, **{key: value for key, value in tree.items() if key not in ("data", "train")}}
    for section in ("data", "train"):
        given = tree.get(section)
        merged[section] = {**defaults[section], **given} if isinstance(given, Mapping) else given
    return merged


def override_run_config(config: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``config`` with ``key=value`` overrides applied (the Python twin of ``--set``)."""
    return _run_config_from_tree(_with_overrides(run_config_to_dict(config), overrides), "config")


def _with_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        _set_dotted(tree, key.strip(), parse_value(text))
    return tree


def _plain(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy as plain dicts: dataclass sections (a RunConfig's) become mappings."""
    return {key: (dataclasses.asdict(value) if dataclasses.is_dataclass(value) else
                  _plain(value) if isinstance(value, Mapping) else value) for key, value in tree.items()}


def _run_config_from_tree(tree: dict[str, Any], where: str) -> RunConfig:
    unknown = sorted(set(tree) - {"model", "data", "train", "out"})
    if unknown:
        raise ConfigError(f"{where}: unknown section {unknown[0]}; known: data, model, out, train")
    model = tree.get("model", "clip-tiny")
    if not isinstance(model, (str, dict)):
        raise ConfigError(f"{where}: model = {model!r}: expected a preset name, a saved model's directory or a "
                          "model config mapping")
    if isinstance(model, str) and not Path(model).is_dir():
        get_model_config(model)  # an unknown preset stops here, with the list of known ones
    out = tree.get("out", "runs/default")
    if not isinstance(out, (str, Path)) or not str(out):
        raise ConfigError(f"{where}: out = {out!r}: expected a directory path")
    return RunConfig(
        model=model,
        data=dataclass_from_mapping(DataConfig, tree.get("data") or {}, where, prefix="data."),
        train=dataclass_from_mapping(OptimConfig, tree.get("train") or {}, where, prefix="train."),
        out=str(out),
    )


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
