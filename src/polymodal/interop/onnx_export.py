"""A dual encoder as two ONNX graphs that onnxruntime runs without polymodal (or PyTorch) installed.

    DIR/image.onnx              pixel_values (B, C, H, W) float32            -> image_embeds (B, D)
    DIR/text.onnx               input_ids, attention_mask (B, L) int64       -> text_embeds (B, D)
    DIR/image.int8.onnx         (``int8=True``) the same graphs with int8 weights: onnxruntime's dynamic
    DIR/text.int8.onnx           quantization, activations quantized per batch at run time
    DIR/tokenizer.json          the model's tokenizer (HF ``tokenizers``; pads to the longest text, truncates to L)
    DIR/onnx_manifest.json      opset, inputs and outputs with their axes, image preprocessing, and the SHA-256
                                and size of every other file (written last: the folder appears as one unit)

Each graph returns exactly what ``encode_image`` / ``encode_text`` return: unit-norm embeddings, so a dot product
is a cosine. ``B`` (both graphs) and ``L`` (up to the context length) are dynamic axes. Images are preprocessed
as the manifest's ``preprocess`` says (resize the shorter side to ``resize_size`` with ``interpolation``,
centre-crop ``image_size``, scale to [0, 1], subtract ``mean``, divide by ``std``).

The graphs come from the dynamo-based ``torch.onnx.export`` (``torch.export`` traces the Python code, so the
boolean attention masks and the pooling by index export as written); :class:`OnnxDualEncoder` runs a folder in
onnxruntime behind the ``encode_image`` / ``encode_text`` interface of a polymodal dual encoder, so
``tasks.embed`` and ``tasks.zero_shot`` take it in place of the model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import ImagePreprocess, image_transform
from polymodal.io import (
    output_directory,
    publish_together,
    read_json,
    recover_directory,
    verify_published,
)
from polymodal.tasks.embed import require_embedding

__all__ = ["ImageEmbedding", "OnnxDualEncoder", "TextEmbedding", "export_onnx"]

MANIFEST = "onnx_manifest.json"
TOKENIZER = "tokenizer.json"
FORMAT = "polymodal-onnx-dual-encoder"
# Opset 20 has LayerNormalization and Gelu as single ops, and every onnxruntime since 1.17 runs it.
OPSET = 20
TOWERS = {
    "image": {"file": "image.onnx", "int8_file": "image.int8.onnx", "inputs": ("pixel_values",),
              "output": "image_embeds"},
    "text": {"file": "text.onnx", "int8_file": "text.int8.onnx", "inputs": ("input_ids", "attention_mask"),
             "output": "text_embeds"},
}


class ImageEmbedding(nn.Module):
    """``pixel_values -> model.encode_image(pixel_values)`` as a module's forward: the image file's graph, and
    what ``torch.compile`` or dynamic quantization wrap to speed up one tower's embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class TextEmbedding(nn.Module):
    """``input_ids, attention_mask -> model.encode_text(input_ids, attention_mask)`` as a module's forward: the
    text file's graph (see :class:`ImageEmbedding`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Export in eval mode (no dropout) and hand the caller's model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _export_graph(wrapper: nn.Module, example: tuple[torch.Tensor, ...], names: Sequence[str], output: str,
                  dynamic_shapes: dict[str, dict[int, Any]], path: Path) -> None:
    with warnings.catch_warnings():
        # The exporter warns that two inputs sharing an axis keep one name for it: that is the intent.
        warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used")
        # Weights inside the file (no external .data file): one file per tower, which limits a tower to ONNX's
        # 2 GB protobuf size (ViT-L/14 is 1.2 GB).
        torch.onnx.export(wrapper.eval(), example, str(path), input_names=list(names), output_names=[output],
                          dynamic_shapes=dynamic_shapes, opset_version=OPSET, dynamo=True, external_data=False,
                          verbose=False)


def _quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization of ``source``: int8 weights for every MatMul and Gemm, each
    activation quantized per batch at run time (no calibration data needed).

    Only matrix products are quantized: they are where a transformer spends its time, while int8 convolutions
    (``ConvInteger``) run slower than float ones in onnxruntime's CPU kernels and cost more accuracy.
    One scale per output channel of each weight: on lit-effnet-minilm's real weights it kept the class
    embeddings' cosine to the float ones at 0.9954, where one scale per matrix gave 0.9647
    (``benchmarks/int8_accuracy.py``, onnxruntime 1.32).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime advises (on the root logger) to run its pre-processing first; on these graphs that gave the
    # same int8 speed and embeddings, so the advice would only confuse a user reading the CLI's output.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        root.setLevel(level)


def _int8_writer(source: str) -> Callable[[Path], None]:
    """Writes the int8 copy of the float graph ``source``, which the staging folder already holds."""
    return lambda path: _quantize_int8(path.parent / source, path)


def _check_exportable(model: nn.Module, tokenizer: TextTokenizer | None) -> ImagePreprocess:
    """The model's image preprocessing, after refusing what cannot become the two graphs."""
    require_embedding(model, "encode_image")
    require_embedding(model, "encode_text")
    preprocess = getattr(model, "preprocess", None)
    if not isinstance(preprocess, ImagePreprocess):
        raise ValueError(f"{type(model).__name__} has no `preprocess`: export models built by polymodal "
                         "(create_model, load_model, load_hf_clip)")
    if tokenizer is None:
        raise ValueError("export_onnx needs the model's tokenizer: the text graph reads its token ids")
    recurrent = next((name for name, module in model.named_modules() if isinstance(module, nn.RNNBase)), None)
    if recurrent is not None:
        raise ValueError(f"{recurrent} is a {type(model.get_submodule(recurrent)).__name__}: torch.onnx's exporter "
                         "cannot trace recurrent layers; export a model with a transformer text tower")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"the model's weights are {dtype}: export a float32 model (as load_model returns it)")
    return preprocess


def export_onnx(model: nn.Module, tokenizer: TextTokenizer, out: str | Path, *, int8: bool = False) -> Path:
    """Write ``model``'s image and text embeddings as ONNX graphs, with its tokenizer and a manifest, to ``out``.

    Args:
        model: a dual encoder as ``load_model``, ``create_model`` or ``load_hf_clip`` return it (float32).
        tokenizer: the model's tokenizer (copied beside the graphs).
        out: a new or empty folder, or an earlier export (replaced whole, atomically).
        int8: also write ``image.int8.onnx`` / ``text.int8.onnx`` (dynamic int8 quantization).

    Returns:
        ``out`` as a ``Path``.

    Raises:
        ValueError: the model does not embed both images and text, has no preprocessing or no float32 weights,
            or ``out`` is a file or holds unrelated files.
    """
    preprocess = _check_exportable(model, tokenizer)
    out = output_directory(out, "--out")
    device = next(model.parameters()).device
    channels = int(getattr(model, "config", {}).get("image", {}).get("in_channels", 3))
    size = preprocess.image_size
    # Two rows and a padded text, so that neither axis is traced as a constant (torch.export specialises 0 and 1).
    pixels = torch.rand(2, channels, size, size, device=device)
    tokens = {name: tensor.to(device) for name, tensor in tokenizer(["a photo of a cat", "a dog"]).items()}
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=tokenizer.context_length)

    def write_image(path: Path) -> None:
        _export_graph(ImageEmbedding(model), (pixels,), TOWERS["image"]["inputs"], TOWERS["image"]["output"],
                      {"pixel_values": {0: batch}}, path)

    def write_text(path: Path) -> None:
        _export_graph(TextEmbedding(model), (tokens["input_ids"], tokens["attention_mask"]),
                      TOWERS["text"]["inputs"], TOWERS["text"]["output"],
                      {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}, path)

    writers = {TOWERS["image"]["file"]: write_image, TOWERS["text"]["file"]: write_text,
               TOKENIZER: tokenizer.save}
    if int8:
        for tower in TOWERS.values():
            writers[tower["int8_file"]] = _int8_writer(tower["file"])
    with _eval_mode(model), torch.no_grad():
        embed_dim = int(model.encode_text(**tokens).shape[-1])
        publish_together(out, writers, MANIFEST, _manifest(model, preprocess, tokenizer, channels, embed_dim, int8),
                         fault="onnx_export")
    return out


def _manifest(model: nn.Module, preprocess: ImagePreprocess, tokenizer: TextTokenizer, channels: int,
              embed_dim: int, int8: bool) -> dict[str, Any]:
    """What a user needs to run the graphs without polymodal (checksums are added when the files are written)."""
    size = preprocess.image_size
    shapes = {"pixel_values": ["batch", channels, size, size], "input_ids": ["batch", "length"],
              "attention_mask": ["batch", "length"]}
    dtypes = {"pixel_values": "float32", "input_ids": "int64", "attention_mask": "int64"}
    towers = {
        name: {"file": tower["file"], "int8_file": tower["int8_file"] if int8 else None,
               "inputs": {input_name: {"dtype": dtypes[input_name], "shape": shapes[input_name]}
                          for input_name in tower["inputs"]},
               "output": {"name": tower["output"], "dtype": "float32", "shape": ["batch", embed_dim]}}
        for name, tower in TOWERS.items()
    }
    return {
        "format": FORMAT,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "embed_dim": embed_dim,
        "normalized": True,
        # What a zero-shot classifier multiplies cosines by (and, for SigLIP, adds) before its softmax / sigmoid.
        "temperature": float(model.temperature()),
        "logit_bias": None if getattr(model, "logit_bias", None) is None else float(model.logit_bias),
        **towers,
        "tokenizer": TOKENIZER,
        "context_length": tokenizer.context_length,
        # Every field: an HF CLIP crops one pixel off centre (crop_offset), a SigLIP squashes (resize_mode).
        "preprocess": {**dataclasses.asdict(preprocess), "resize_size": preprocess.resize_size or size,
                       "mean": [float(v) for v in preprocess.mean], "std": [float(v) for v in preprocess.std]},
        "model_config": getattr(model, "config", None),
    }


def _section(manifest: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = manifest.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: field {key!r} = {value!r} is not an object")
    return value


def _file_field(section: dict[str, Any], field: str, path: Path) -> str:
    """``section[field.rpartition(".")[2]]``, checked to be a plain file name (nothing outside the folder)."""
    value = section.get(field.rpartition(".")[2])
    if not isinstance(value, str) or not value or "/" in value or "\\" in value:
        raise ValueError(f"{path}: field {field} = {value!r} is not a file name in the folder")
    return value


class OnnxDualEncoder:
    """An :func:`export_onnx` folder run by onnxruntime: ``encode_image`` / ``encode_text`` as a polymodal dual
    encoder has them (torch tensors or numpy arrays in, float32 CPU tensors out), plus its ``tokenizer``,
    ``preprocess`` and ``transform``, so ``tasks.embed.embed_images`` and the zero-shot tasks take it in place
    of the model.

    Args:
        directory: the export folder; every file is checked against the manifest's checksums first.
        int8: run the int8 graphs (the folder must have been exported with ``int8=True``).
        threads: onnxruntime's intra-op threads (None: onnxruntime's default, one per physical core).
        providers: onnxruntime execution providers, best first (None: CUDA where onnxruntime has it, then CPU).

    Raises:
        ValueError: naming the file and field: no manifest, a manifest of another format or missing a field,
            a file missing or not matching its checksum, int8 asked of a folder exported without it.
    """

    # Outputs come back as CPU tensors whatever provider ran the graph: callers move inputs here.
    device = torch.device("cpu")
    # The graphs only infer: never in training mode (what code written for nn.Module models asks).
    training = False

    def __init__(self, directory: str | Path, *, int8: bool = False, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        directory = recover_directory(Path(directory))
        path = directory / MANIFEST
        if not path.is_file():
            raise ValueError(f"{path}: missing; {directory} is not an ONNX export (write one with "
                             "polymodal.interop.export_onnx or `polymodal convert SRC --to onnx`)")
        manifest = read_json(path, "ONNX export manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else manifest
            raise ValueError(f"{path}: field 'format' = {found!r}, expected {FORMAT!r}")
        files = {}
        for tower in TOWERS:
            section = _section(manifest, tower, path)
            key = "int8_file" if int8 else "file"
            if int8 and section.get(key) is None:
                raise ValueError(f"{path}: field {tower}.int8_file is null: this folder was exported without "
                                 "int8 (export again with int8=True / --int8)")
            files[tower] = _file_field(section, f"{tower}.{key}", path)
        tokenizer_file = _file_field(manifest, "tokenizer", path)
        mismatch = verify_published(directory, manifest, [*files.values(), tokenizer_file], path)
        if mismatch is not None:
            raise ValueError(mismatch)
        preprocess = _section(manifest, "preprocess", path)
        try:
            self.preprocess = ImagePreprocess(**preprocess)
        except TypeError as error:
            raise ValueError(f"{path}: field 'preprocess' = {preprocess!r} ({error})") from None
        self.directory = directory
        self.manifest = manifest
        self.tokenizer = TextTokenizer.from_file(directory / tokenizer_file)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if providers is None:
            available = ort.get_available_providers()
            providers = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]
        self._image = ort.InferenceSession(str(directory / files["image"]), options, providers=list(providers))
        self._text = ort.InferenceSession(str(directory / files["text"]), options, providers=list(providers))

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image → normalised ``(C, H, W)`` tensor, as the exported model expects it."""
        return image_transform(self.preprocess)

    def temperature(self) -> torch.Tensor:
        """The exported model's ``exp(logit_scale)`` (as :meth:`DualEncoder.temperature`), from the manifest."""
        value = self.manifest.get("temperature")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.directory / MANIFEST}: field 'temperature' = {value!r}: expected a number "
                             "(an export older than this field: export again to classify with it)")
        return torch.tensor(float(value))

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """A SigLIP model's bias from the manifest; None for a CLIP-trained one."""
        value = self.manifest.get("logit_bias")
        return None if value is None else torch.tensor(float(value))

    def eval(self) -> OnnxDualEncoder:
        """The graphs only infer; present so code written for ``nn.Module`` models (``model.eval()``) runs."""
        return self

    def encode_image(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Unit-norm image embeddings ``(B, D)`` of preprocessed pixels ``(B, C, H, W)``."""
        (output,) = self._image.run(None, {"pixel_values": _array(image, np.float32)})
        return torch.from_numpy(output)

    def encode_text(self, input_ids: torch.Tensor | np.ndarray,
                    attention_mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Unit-norm text embeddings ``(B, D)`` of token ids ``(B, L)`` (mask: 1 = real token; None: all real)."""
        ids = _array(input_ids, np.int64)
        mask = np.ones_like(ids) if attention_mask is None else _array(attention_mask, np.int64)
        (output,) = self._text.run(None, {"input_ids": ids, "attention_mask": mask})
        return torch.from_numpy(output)


def _array(value: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=dtype)
