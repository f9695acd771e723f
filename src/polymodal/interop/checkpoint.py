"""Mechanics shared by every importer: read a foreign weights file, and move tensors between a foreign state dict
and a polymodal model through a renaming table, checking every shape and naming the file and key that fail.

A table is a list of :class:`Rename` entries, one per polymodal tensor. The same table serves both directions,
so an import followed by an export gives back the foreign tensors bit for bit.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.io import read_json

__all__ = ["ImportedCheckpoint", "Rename", "export_state", "hf_checkpoint_directory", "hf_tower_options",
           "import_state", "read_hf_config", "read_state_file", "require_config", "weight_and_bias"]

# "org/model" as the HF hub names repositories; anything else is only ever a local path.
_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
# What a dual encoder's hub repository needs: configs, safetensors weights, tokenizer files (not other formats).
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]


@dataclass
class ImportedCheckpoint:
    """A foreign checkpoint as polymodal objects.

    Attributes:
        model: a polymodal family model (eval mode: a ``dual_encoder``, a ``captioner`` from BLIP, or a ``vqa``
            model from ViLT, its answers in ``config["answers"]``) carrying ``config`` and ``preprocess``, so
            ``polymodal.save_model(model, dir, tokenizer)`` writes an ordinary polymodal model directory.
        tokenizer: the checkpoint's own tokenizer, with the padding the text tower was trained with.
    """

    model: nn.Module
    tokenizer: TextTokenizer


@dataclass(frozen=True)
class Rename:
    """Where one polymodal tensor lives in a foreign state dict.

    Attributes:
        ours: the key in the polymodal model's ``state_dict()``.
        theirs: the foreign key, or several whose tensors are stacked along dim 0 to make ours (HF's separate
            q/k/v projections → our fused ``qkv``).
        transpose: the foreign tensor is stored input-major (open_clip's projections, applied as ``x @ W``),
            ours output-major (``nn.Linear``).
        shape: the foreign tensor's whole shape, where it is not ours less leading singleton dims (SigLIP's
            ``logit_scale (1,)`` is our 0-d one; its probe ``(1, 1, D)`` our query).
        first_row: ours is the rows ``[first_row, first_row + len(ours))`` of the single foreign tensor of
            ``shape``, which several renames share (a fused ``in_proj`` split into our ``q`` and ``kv``).
    """

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False
    shape: tuple[int, ...] | None = None
    first_row: int | None = None


def weight_and_bias(ours: str, theirs: str) -> list[Rename]:
    """The two tensors of a ``Linear`` or ``LayerNorm`` whose foreign twin keeps PyTorch's layout."""
    return [Rename(f"{ours}.weight", (f"{theirs}.weight",)), Rename(f"{ours}.bias", (f"{theirs}.bias",))]


def _foreign_shape(ours: torch.Size, parts: int, transpose: bool) -> tuple[int, ...]:
    """The shape each foreign part must have: ours without the leading singleton dims our tokens carry
    (``cls_token (1, 1, D)`` is CLIP's ``class_embedding (D,)``), split ``parts`` ways, transposed if asked."""
    shape = list(ours)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    if shape:  # a 0-d tensor (logit_scale) has nothing to split
        shape[0] //= parts
    return tuple(reversed(shape)) if transpose else tuple(shape)


def import_state(model: nn.Module, table: Iterable[Rename], state: Mapping[str, torch.Tensor], file: str | Path,
                 ignored: tuple[str, ...] = ()) -> None:
    """Copy ``state`` (the foreign tensors read from ``file``) into ``model`` through ``table``.

    Args:
        ignored: suffixes of foreign keys that carry no weights (buffers such as HF's old ``position_ids``).

    Raises:
        ValueError: naming ``file`` and the first foreign key that is missing, has the wrong shape, or is left
            over (a weight the polymodal model has no place for would otherwise be dropped silently).
    """
    ours = model.state_dict()
    converted = {}
    used = set()
    for rename in table:
        if rename.shape is not None:
            expected = rename.shape
        else:
            expected = _foreign_shape(ours[rename.ours].shape, len(rename.theirs), rename.transpose)
        parts = []
        for key in rename.theirs:
            if key not in state:
                raise ValueError(f"{file}: missing key {key!r} (for {rename.ours})")
            if tuple(state[key].shape) != expected:
                raise ValueError(f"{file}: key {key!r} has shape {tuple(state[key].shape)}, the config says "
                                 f"{expected}")
            parts.append(state[key].t() if rename.transpose else state[key])
            used.add(key)
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts)  # cat refuses 0-d tensors (logit_scale)
        if rename.first_row is not None:
            tensor = tensor[rename.first_row:rename.first_row + ours[rename.ours].shape[0]]
        converted[rename.ours] = tensor.reshape(ours[rename.ours].shape)
    leftover = sorted(key for key in state if key not in used and not key.endswith(ignored))
    if leftover:
        raise ValueError(f"{file}: unexpected key {leftover[0]!r} ({len(leftover)} in all): polymodal has no "
                         "place for it in this architecture")
    # strict: a table that forgot one of our tensors is a bug here, not in the user's file.
    model.load_state_dict(converted, strict=True)


def export_state(model: nn.Module, table: Iterable[Rename]) -> dict[str, torch.Tensor]:
    """The foreign state dict ``table`` describes, from ``model``'s tensors (the inverse of :func:`import_state`)."""
    ours = model.state_dict()
    state = {}
    row_blocks: dict[str, list[tuple[int, torch.Tensor]]] = {}  # foreign key → (first row, block) of split tensors
    shapes: dict[str, tuple[int, ...]] = {}
    for rename in table:
        tensor = ours[rename.ours].detach().cpu()
        if rename.first_row is not None:
            row_blocks.setdefault(rename.theirs[0], []).append((rename.first_row, tensor))
            shapes[rename.theirs[0]] = rename.shape
            continue
        tensor = tensor.reshape(rename.shape if rename.shape is not None else _foreign_shape(tensor.shape, 1, False))
        parts = tensor.chunk(len(rename.theirs)) if len(rename.theirs) > 1 else (tensor,)  # chunk refuses 0-d
        for key, part in zip(rename.theirs, parts):
            state[key] = (part.t() if rename.transpose else part).contiguous()
    for key, blocks in row_blocks.items():
        state[key] = torch.cat([block for _, block in sorted(blocks, key=lambda item: item[0])]).contiguous()
        if tuple(state[key].shape) != shapes[key]:  # a table whose row blocks leave a gap: a bug here, not input
            raise RuntimeError(f"the renaming table fills {tuple(state[key].shape)} of {key!r}, which is {shapes[key]}")
    return state


def hf_checkpoint_directory(path_or_name: str | Path) -> Path:
    """The local directory of an HF checkpoint: ``path_or_name`` itself if it exists, else the hub repository of
    that name (``"org/model"``), fetched into (or read from) the HF cache, as far as the hub or the cache can give it.

    Raises:
        ValueError: neither a local path nor a repository the hub provides (offline, unknown name, no access).
    """
    path = Path(path_or_name)
    if path.exists() or not _HUB_NAME.fullmatch(str(path_or_name)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_name), allow_patterns=_HUB_FILES))
    except Exception as error:  # offline, unknown repository, gated: each is its own exception class
        raise ValueError(f"{path_or_name}: no such directory, and the HF hub cannot provide it "
                         f"({type(error).__name__})") from None


def read_hf_config(directory: Path, model_type: str, architecture: str | None = None) -> dict[str, Any]:
    """``directory/config.json`` as written, after checking it is an HF config of ``model_type`` whose
    ``architectures`` (where it lists any) include ``architecture``.

    Raises:
        ValueError: naming the file and field: missing (``directory`` is no HF checkpoint), another model type,
            another architecture (ViLT's masked-LM checkpoint has no VQA classifier to load).
    """
    file = directory / "config.json"
    if not file.is_file():
        raise ValueError(f"{file}: missing; {directory} is not an HF checkpoint directory")
    raw = read_json(file, "HF model config")
    if raw.get("model_type") != model_type:
        raise ValueError(f"{file}: model_type = {raw.get('model_type')!r} is not supported here (only "
                         f"{model_type!r})")
    if architecture is not None and architecture not in raw.get("architectures", [architecture]):
        raise ValueError(f"{file}: architectures = {raw['architectures']!r}: this importer reads only "
                         f"{architecture}")
    return raw


def hf_tower_options(hf: Any, section: str, file: Path, activations: Mapping[str, str]) -> dict[str, Any]:
    """The block options of a polymodal transformer tower from an HF sub-config (``section`` of ``file``):
    sizes, LayerNorm epsilon and the activation, through ``activations`` (HF's name → ours)."""
    if hf.hidden_act not in activations:
        raise ValueError(f"{file}: {section}.hidden_act = {hf.hidden_act!r} is not supported "
                         f"({', '.join(activations)})")
    mlp_ratio = hf.intermediate_size / hf.hidden_size
    if int(hf.hidden_size * mlp_ratio) != hf.intermediate_size:
        raise ValueError(f"{file}: {section}.intermediate_size = {hf.intermediate_size} is not a ratio of "
                         f"hidden_size {hf.hidden_size} that polymodal's blocks reproduce")
    return {"width": hf.hidden_size, "layers": hf.num_hidden_layers, "heads": hf.num_attention_heads,
            "mlp_ratio": mlp_ratio, "act": activations[hf.hidden_act], "norm_eps": hf.layer_norm_eps}


def require_config(config: Mapping[str, Any], required: Mapping[str, Any], defaults: Mapping[str, Any],
                   target: str) -> None:
    """Refuse, naming it, the first key of ``required`` (a dotted path such as ``image.pool``) whose value in
    ``config`` (or, where the config leaves it out, in ``defaults``) is not the one the ``target`` format needs."""
    for key, value in required.items():
        *sections, name = key.split(".")
        section = config
        for part in sections:
            section = section.get(part) or {}
        actual = section.get(name, defaults.get(key))
        if actual != value:
            raise ValueError(f"config key {key} = {actual!r}: {target} needs {value!r}")


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``'d state dict (tensors only: ``weights_only``), with
    a training checkpoint's ``state_dict`` wrapper and DDP's ``module.`` prefix removed."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: cannot read the weights ({error})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return {key.removeprefix("module."): value for key, value in state.items()}
