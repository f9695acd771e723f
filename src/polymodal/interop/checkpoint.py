"""Mechanics shared by every importer: read a foreign weights file, and move tensors between a foreign state dict
and a polymodal model through a renaming table, checking every shape and naming the file and key that fail.

A table is a list of :class:`Rename` entries, one per polymodal tensor. The same table serves both directions,
so an import followed by an export gives back the foreign tensors bit for bit.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from polymodal.data.tokenizers import TextTokenizer

__all__ = ["ImportedCheckpoint", "Rename", "export_state", "import_state", "read_state_file", "weight_and_bias"]


@dataclass
class ImportedCheckpoint:
    """A foreign checkpoint as polymodal objects.

    Attributes:
        model: a ``dual_encoder`` family model (eval mode) carrying ``config`` and ``preprocess``, so
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
    """

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False


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
    for rename in table:
        tensor = ours[rename.ours].detach().cpu()
        tensor = tensor.reshape(_foreign_shape(tensor.shape, 1, False))
        parts = tensor.chunk(len(rename.theirs)) if len(rename.theirs) > 1 else (tensor,)  # chunk refuses 0-d
        for key, part in zip(rename.theirs, parts):
            state[key] = (part.t() if rename.transpose else part).contiguous()
    return state


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
