"""Training run configuration: a YAML/JSON file + dotted ``--set`` overrides → typed dataclasses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polymodal.factory import get_model_config


@dataclass
class DataConfig:
    """Where the pairs come from. Each entry is a catalog name (``shapes``, ``openmoji``), a path to a
    supported file/folder, or a dict ``{name: ..., split: ..., size: ...}``. A ``train`` directory holding a
    ``shards.json`` (``polymodal data shard``) is streamed from its tar shards instead of loaded."""

    train: Any = field(default_factory=lambda: {"name": "shapes", "split": "train", "size": 4000})
    val: Any = field(default_factory=lambda: {"name": "shapes", "split": "val", "size": 500})
    val_fraction: float = 0.0  # carve the validation set out of `train` instead (when `val` is null)
    skip_bad: bool = False
    shuffle_buffer: int = 1000  # samples held for shuffling a shard stream (more mixes better, costs memory)


@dataclass
class OptimConfig:
    """Optimisation settings. ``batch_size`` is per process, as open_clip's ``--batch-size`` is per GPU: under
    ``torchrun`` with W processes a step sees ``batch_size x W`` pairs (x ``accum_steps``)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip: float | None = 1.0
    accum_steps: int = 1  # plain accumulation: each micro-batch is its own contrastive batch (fewer negatives)
    grad_cache_micro_batch: int | None = None  # GradCache: the whole batch's negatives, this many rows per pass
    max_steps: int | None = None
    precision: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    label_smoothing: float = 0.0
    # CLIP loss across processes, as open_clip's --local-loss / --gather-with-grad (both off by default there).
    # Global loss without gather_with_grad gives tower gradients 1/W of the single-process ones; turn
    # gather_with_grad on for exactly the single-process gradients, local_loss on for (B, W·B) logits per rank.
    local_loss: bool = False
    gather_with_grad: bool = False
    # FSDP2 instead of DDP (several processes): parameters, gradients and optimizer state sharded over ranks.
    fsdp: bool = False
    cache_features: bool = True  # frozen towers: compute their outputs once and train on the cache
    device: str = "auto"


@dataclass
class RunConfig:
    """Everything ``polymodal train`` needs. ``model`` is a preset name or a full model config dict."""

    model: Any = "clip-tiny"
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    out: str = "runs/default"


def parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars: ``3`` → int, ``1e-3`` → float, ``true`` → bool, ``[1,2]`` → list."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and value[0].isdigit() else value
        except ValueError:
            return value
    return value


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
            raise ValueError(f"--set {dotted}: '{part}' is {child!r}, not a section")
        node = child
    node[leaf] = value


def _dataclass_from(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML/JSON run config (or start from defaults when ``path`` is None) and apply ``key=value``s."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML/JSON: {error}") from None
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    return _run_config_from_tree(_with_overrides(tree, overrides), str(path) if path else "config")


def override_run_config(config: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``config`` with ``key=value`` overrides applied (the Python twin of ``--set``)."""
    return _run_config_from_tree(_with_overrides(run_config_to_dict(config), overrides), "config")


def _with_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        _set_dotted(tree, key.strip(), parse_value(text))
    return tree


def _run_config_from_tree(tree: dict[str, Any], where: str) -> RunConfig:
    unknown = sorted(set(tree) - {"model", "data", "train", "out"})
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {unknown}; known: data, model, out, train")
    return RunConfig(
        model=tree.get("model", "clip-tiny"),
        data=_dataclass_from(DataConfig, tree.get("data") or {}, f"{where}: data"),
        train=_dataclass_from(OptimConfig, tree.get("train") or {}, f"{where}: train"),
        out=str(tree.get("out", "runs/default")),
    )


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
