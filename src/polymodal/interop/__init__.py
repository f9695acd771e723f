"""Bring your own checkpoints: HF transformers and open_clip models in and out of polymodal's families.

- :func:`load_checkpoint` reads any supported checkpoint, told apart by its content (:mod:`.auto`);
- :func:`load_hf_clip` / :func:`export_hf_clip`: HF ``CLIPModel`` directories ↔ dual encoders;
- :func:`load_hf_siglip` / :func:`export_hf_siglip`: HF ``SiglipModel`` directories ↔ dual encoders;
- :func:`load_open_clip` / :func:`export_open_clip`: open_clip CLIP checkpoints ↔ dual encoders;
- :func:`load_hf_vilt`: HF ``ViltForQuestionAnswering`` → a ``vqa`` model with its answers;
- :func:`load_hf_blip`: HF ``BlipForConditionalGeneration`` → a ``captioner``;
- :func:`build_model_with_towers` / :func:`tower_tokenizer`: a model whose ``{"type": "checkpoint"}`` tower
  sections take towers (and a tokenizer) from any checkpoint above;
- :func:`convert`: what ``polymodal convert`` runs (any source → polymodal, hf, open_clip or onnx);
- :func:`export_onnx` writes a dual encoder's image and text embeddings as ONNX graphs (+ tokenizer, manifest,
  optional int8); :class:`OnnxDualEncoder` runs such a folder in onnxruntime.

Every loader returns an :class:`ImportedCheckpoint` (model + the checkpoint's own tokenizer); the model carries
the checkpoint's image preprocessing in its config, so ``polymodal.save_model(model, dir, tokenizer)`` writes an
ordinary polymodal model directory that ``polymodal.load_model`` reads back. HF sources may be hub names when
the hub (or its cache) can provide them. transformers, open_clip_torch and onnxruntime are needed only when the
functions that use them are called.
"""
from polymodal.interop.auto import checkpoint_kind, load_any_for_inference, load_checkpoint
from polymodal.interop.checkpoint import ImportedCheckpoint
from polymodal.interop.convert import convert
from polymodal.interop.hf_blip import load_hf_blip
from polymodal.interop.hf_clip import export_hf_clip, load_hf_clip
from polymodal.interop.hf_siglip import export_hf_siglip, load_hf_siglip
from polymodal.interop.hf_vilt import load_hf_vilt
from polymodal.interop.onnx_export import OnnxDualEncoder, export_onnx
from polymodal.interop.towers import build_model_with_towers, tower_tokenizer
from polymodal.interop.open_clip_ckpt import export_open_clip, load_open_clip

__all__ = [
    "ImportedCheckpoint", "OnnxDualEncoder", "checkpoint_kind", "export_onnx", "convert", "export_hf_clip", "export_hf_siglip", "export_open_clip",
    "load_any_for_inference", "load_checkpoint", "load_hf_blip", "load_hf_clip", "load_hf_siglip", "load_hf_vilt",
    "load_open_clip", "build_model_with_towers", "tower_tokenizer",
]
