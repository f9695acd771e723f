"""Convert a checkpoint between formats: read any checkpoint polymodal reads, write it as another format's
directory, whole or not at all (``polymodal convert``).

Reading goes through polymodal's importers (:mod:`polymodal.interop.auto` tells the formats apart); writing
through :data:`TARGETS`, one entry per output format, each a function ``(model, tokenizer, directory) -> directory``
(keyword options, such as a quantisation flag, passed through where the target declares them).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.interop.auto import checkpoint_kind, load_checkpoint
from polymodal.interop.checkpoint import ImportedCheckpoint, hf_checkpoint_directory
from polymodal.io import atomic_directory, output_directory

__all__ = ["TARGETS", "ConvertResult", "Target", "convert", "export_hf", "load_source"]


@dataclass(frozen=True)
class Target:
    """An output format.

    Attributes:
        module / function: where the writer lives, imported only when used (each format's library is optional).
        description: one line for help texts.
        options: keyword options the writer takes besides ``(model, tokenizer, directory)``.
        dual_encoder_only: the format holds image-text dual encoders only (CLIP, SigLIP).
    """

    module: str
    function: str
    description: str
    options: tuple[str, ...] = ()
    dual_encoder_only: bool = True

    def writer(self) -> Callable[..., Path]:
        return getattr(import_module(self.module), self.function)


def _save_polymodal(model: nn.Module, tokenizer: TextTokenizer | None, directory: Path) -> Path:
    from polymodal.model_io import save_model

    return save_model(model, directory, tokenizer)


def export_hf(model: nn.Module, tokenizer: TextTokenizer, directory: str | Path) -> Path:
    """Write a dual encoder as HF's ``SiglipModel`` when it has SigLIP's shape (sigmoid loss or attention-pooled
    image tower), else as ``CLIPModel``; each refuses, by config key, what its class cannot express."""
    from polymodal.interop.hf_clip import export_hf_clip
    from polymodal.interop.hf_siglip import export_hf_siglip

    config = model.config
    siglip = config.get("loss") == "siglip" or config.get("image", {}).get("pool") == "map"
    return (export_hf_siglip if siglip else export_hf_clip)(model, tokenizer, directory)


# Output format → its writer. A new format is one entry here (and the CLI offers it).
TARGETS: dict[str, Target] = {
    "hf": Target(__name__, "export_hf", "HF transformers directory: CLIPModel or SiglipModel, by the model's shape"),
    "open_clip": Target("polymodal.interop.open_clip_ckpt", "export_open_clip",
                        "open_clip directory (open_clip_config.json + weights; create_model('local-dir:DIR'))"),
    "polymodal": Target(__name__, "_save_polymodal", "polymodal model directory (load_model, train, eval, serve)",
                        dual_encoder_only=False),
    "onnx": Target("polymodal.interop.onnx_export", "export_onnx",
                   "ONNX image and text towers + manifest, for onnxruntime (OnnxDualEncoder)", options=("int8",)),
}


@dataclass
class ConvertResult:
    """What :func:`convert` read and wrote.

    Attributes:
        source_kind: ``polymodal``, ``hf:<model_type>`` or ``open_clip``.
        target: the key of :data:`TARGETS` written.
        directory: the output directory.
        files: every file written, relative to ``directory``, with its size in bytes.
    """

    source_kind: str
    target: str
    directory: Path
    files: dict[str, int]


def load_source(source: str | Path,
                open_clip_config: str | Mapping[str, Any] | None = None) -> tuple[str, ImportedCheckpoint]:
    """Read ``source`` as a polymodal model and its tokenizer, and say what kind of checkpoint it was.

    ``source``: a polymodal model or run directory, an HF directory (CLIP, SigLIP) or hub name, an open_clip
    weights file (with ``open_clip_config``: a model name, a JSON file or mapping, else the
    ``open_clip_config.json`` beside it) or an open_clip directory.
    """
    path = hf_checkpoint_directory(source)
    return checkpoint_kind(path), load_checkpoint(path, open_clip_config)


def convert(source: str | Path, target: str, out: str | Path, *,
            open_clip_config: str | Mapping[str, Any] | None = None, overwrite: bool = False,
            **options: Any) -> ConvertResult:
    """Read ``source`` (see :func:`load_source`) and write it to the directory ``out`` in the ``target`` format.

    The output is built in a staging folder and swapped in whole (:func:`polymodal.io.atomic_directory`): a failed
    or interrupted conversion leaves ``out`` as it was. An ``out`` holding files is refused unless ``overwrite``.

    Raises:
        ValueError: an unknown target or option, an unreadable source (naming its file and key), a model the
            target cannot express (naming the config key), a non-empty ``out``.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; one of: {', '.join(TARGETS)}")
    spec = TARGETS[target]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"option {unknown[0]!r} does not apply to --to {target}")
    out = output_directory(out, "--out", empty=not overwrite)
    kind, imported = load_source(source, open_clip_config)
    if spec.dual_encoder_only:
        from polymodal.models.dual_encoder import DualEncoder

        if not isinstance(imported.model, DualEncoder):
            family = imported.model.config.get("family")
            raise ValueError(f"{source} holds a {family} model; --to {target} writes dual encoders (CLIP, SigLIP)")
        if imported.tokenizer is None:
            raise ValueError(f"{source} has no tokenizer; --to {target} writes it beside the model")
    with atomic_directory(out, "convert") as staging:
        spec.writer()(imported.model, imported.tokenizer, staging, **options)
    files = {str(file.relative_to(out)): file.stat().st_size for file in sorted(out.rglob("*")) if file.is_file()}
    return ConvertResult(kind, target, out, files)
