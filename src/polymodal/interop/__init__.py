"""Bring your own checkpoints: HF transformers and open_clip CLIP models ↔ polymodal dual encoders.

- :func:`load_hf_clip` reads an HF ``CLIPModel`` directory (``save_pretrained``), :func:`export_hf_clip` writes one;
- :func:`load_open_clip` reads an open_clip checkpoint with its model config.

Both loaders return an :class:`ImportedCheckpoint` (model + the checkpoint's own tokenizer); the model carries the
checkpoint's image preprocessing in its config, so ``polymodal.save_model(model, dir, tokenizer)`` writes an
ordinary polymodal model directory that ``polymodal.load_model`` reads back. transformers (and, for open_clip's
tokenizer, open_clip_torch) are needed only when these functions are called.
"""
from polymodal.interop.checkpoint import ImportedCheckpoint
from polymodal.interop.hf_clip import export_hf_clip, load_hf_clip
from polymodal.interop.open_clip_ckpt import load_open_clip

__all__ = ["ImportedCheckpoint", "export_hf_clip", "load_hf_clip", "load_open_clip"]
