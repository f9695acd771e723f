"""HF transformers ``BlipForConditionalGeneration`` checkpoints → polymodal ``captioner`` models, weight for weight.

BLIP's captioner in polymodal's terms::

    image    ViT: patch conv with bias, class token, position table, pre-norm blocks, no LayerNorm before them;
             its final LayerNorm (HF's ``post_layernorm``) applies to every token, and all of them are the memory
    decoder  CaptionDecoder with BERT's layout: word + position embeddings and a LayerNorm (``embed_norm``),
             post-norm layers (``norm_position="post"``: self-attention, cross-attention to the image tokens,
             MLP, each followed by add & LayerNorm), then BERT's LM head: dense + activation + LayerNorm
             (``head_transform``) and the output projection with a bias (``head_bias``), tied to the word
             embeddings unless the checkpoint unties them (``tie_embeddings``)

Captions start at ``text_config.bos_token_id`` (``[DEC]``) and end at ``sep_token_id`` (``[SEP]``), as HF's
``generate`` runs them; the tokenizer is the checkpoint's BERT word-piece one with its ``[CLS] … [SEP]`` template
replaced by ``[DEC] … [SEP]`` (the processor's ``[CLS]`` is what HF's ``generate`` overwrites with ``[DEC]``).
The images are resized whole to the tower's square size (no crop), as ``BlipImageProcessor`` does.

Layout changes: HF keeps separate q/k/v projections in the decoder (our fused ``qkv``; the cross-attention's
``k``/``v`` our fused ``kv``) and its class and position embeddings with a leading batch dimension.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from polymodal.data.tokenizers import TextTokenizer
from polymodal.interop.bert_tokenizer import read_bert_tokenizer
from polymodal.interop.checkpoint import (
    ImportedCheckpoint,
    Rename,
    hf_checkpoint_directory,
    hf_tower_options,
    import_state,
    read_hf_config,
    weight_and_bias,
)
from polymodal.interop.hf_files import BUFFERS, CONFIG, RESAMPLE, read_hf_weights, read_processor_settings, square_size
from polymodal.interop.hf_siglip import ACTIVATIONS
from polymodal.models.captioner import build_captioner

__all__ = ["load_hf_blip"]

ARCHITECTURE = "BlipForConditionalGeneration"
VISION, TEXT = "vision_model", "text_decoder"
LM_HEAD = f"{TEXT}.cls.predictions"
# HF's generate() without length arguments, as BLIP's captioning runs it: greedy, 20 new tokens.
HF_NEW_TOKENS = 20


def _vision_block(ours: str, theirs: str) -> list[Rename]:
    """One ``BlipEncoderLayer`` (pre-norm, fused qkv as ours) as a polymodal transformer block."""
    return [
        *weight_and_bias(f"{ours}.norm1", f"{theirs}.layer_norm1"),
        *weight_and_bias(f"{ours}.attn.qkv", f"{theirs}.self_attn.qkv"),
        *weight_and_bias(f"{ours}.attn.proj", f"{theirs}.self_attn.projection"),
        *weight_and_bias(f"{ours}.norm2", f"{theirs}.layer_norm2"),
        *weight_and_bias(f"{ours}.mlp.fc1", f"{theirs}.mlp.fc1"),
        *weight_and_bias(f"{ours}.mlp.fc2", f"{theirs}.mlp.fc2"),
    ]


def _decoder_layer(ours: str, theirs: str) -> list[Rename]:
    """One ``BlipTextLayer`` (BERT's post-norm layer with cross-attention) as a post-norm ``DecoderLayer``."""
    attention, cross = f"{theirs}.attention", f"{theirs}.crossattention"
    return [
        *(Rename(f"{ours}.self_attn.qkv.{kind}",
                 tuple(f"{attention}.self.{part}.{kind}" for part in ("query", "key", "value")))
          for kind in ("weight", "bias")),
        *weight_and_bias(f"{ours}.self_attn.proj", f"{attention}.output.dense"),
        *weight_and_bias(f"{ours}.norm1", f"{attention}.output.LayerNorm"),
        *weight_and_bias(f"{ours}.cross_attn.q", f"{cross}.self.query"),
        *(Rename(f"{ours}.cross_attn.kv.{kind}", tuple(f"{cross}.self.{part}.{kind}" for part in ("key", "value")))
          for kind in ("weight", "bias")),
        *weight_and_bias(f"{ours}.cross_attn.proj", f"{cross}.output.dense"),
        *weight_and_bias(f"{ours}.norm2", f"{cross}.output.LayerNorm"),
        *weight_and_bias(f"{ours}.mlp.fc1", f"{theirs}.intermediate.dense"),
        *weight_and_bias(f"{ours}.mlp.fc2", f"{theirs}.output.dense"),
        *weight_and_bias(f"{ours}.norm3", f"{theirs}.output.LayerNorm"),
    ]


def _table(config: dict[str, Any]) -> list[Rename]:
    """Every tensor of the polymodal captioner ``config`` describes and its HF ``BlipForConditionalGeneration``
    key(s)."""
    image, text = config["image"], config["text"]
    width, positions = image["width"], (image["image_size"] // image["patch_size"]) ** 2 + 1
    embeddings, bert = f"{VISION}.embeddings", f"{TEXT}.bert"
    # Untied, HF's LM head computes with its decoder Linear (weight and bias); tied, the bias is predictions.bias.
    output = ([Rename("decoder.output_bias", (f"{LM_HEAD}.bias",))] if text["tie_embeddings"] else
              [Rename("decoder.output_proj.weight", (f"{LM_HEAD}.decoder.weight",)),
               Rename("decoder.output_bias", (f"{LM_HEAD}.decoder.bias",))])
    return [
        Rename("image_encoder.cls_token", (f"{embeddings}.class_embedding",), shape=(1, 1, width)),
        *weight_and_bias("image_encoder.patch_embed.proj", f"{embeddings}.patch_embedding"),
        Rename("image_encoder.pos_embed.weight", (f"{embeddings}.position_embedding",), shape=(1, positions, width)),
        *(rename for i in range(image["layers"])
          for rename in _vision_block(f"image_encoder.transformer.blocks.{i}", f"{VISION}.encoder.layers.{i}")),
        *weight_and_bias("image_encoder.norm", f"{VISION}.post_layernorm"),
        Rename("decoder.token_embed.weight", (f"{bert}.embeddings.word_embeddings.weight",)),
        Rename("decoder.pos_embed", (f"{bert}.embeddings.position_embeddings.weight",)),
        *weight_and_bias("decoder.embed_norm", f"{bert}.embeddings.LayerNorm"),
        *(rename for i in range(text["layers"])
          for rename in _decoder_layer(f"decoder.layers.{i}", f"{bert}.encoder.layer.{i}")),
        *weight_and_bias("decoder.head_transform.dense", f"{LM_HEAD}.transform.dense"),
        *weight_and_bias("decoder.head_transform.norm", f"{LM_HEAD}.transform.LayerNorm"),
        *output,
    ]


def _unused_keys(tied: bool) -> tuple[str, ...]:
    """Foreign keys HF's computation does not read: constant buffers, and the LM head's copies of tied tensors
    (older files store them; tied, HF overwrites them) or, untied, the bias HF's forward skips."""
    return (*BUFFERS, *((f"{LM_HEAD}.decoder.weight", f"{LM_HEAD}.decoder.bias") if tied else (f"{LM_HEAD}.bias",)))


def _hf_config(directory: Path) -> Any:
    """The checkpoint's ``BlipConfig``, after checking ``config.json`` describes a BLIP captioner."""
    from transformers import BlipConfig

    read_hf_config(directory, "blip", ARCHITECTURE)
    # HF writes only the values that differ from its defaults: the config class fills in the rest.
    return BlipConfig.from_pretrained(str(directory))


def _preprocess(directory: Path, image_size: int) -> dict[str, Any]:
    """``BlipImageProcessor``'s whole-image resize to the tower's size, interpolation and statistics (its
    defaults where the directory has no processor config)."""
    from transformers import BlipImageProcessor

    processor, file = read_processor_settings(directory)
    defaults = BlipImageProcessor()
    for key in ("do_resize", "do_rescale"):
        if not processor.get(key, True):
            raise ValueError(f"{file}: {key} = false is not supported (polymodal always resizes and rescales)")
    if processor.get("do_center_crop", False):
        raise ValueError(f"{file}: do_center_crop = true is not supported (BLIP resizes whole images)")
    if abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        raise ValueError(f"{file}: rescale_factor = {processor['rescale_factor']!r} is not supported (only 1/255)")
    resample = processor.get("resample", int(defaults.resample))
    if resample not in RESAMPLE:
        raise ValueError(f"{file}: resample = {resample!r} is not supported (2 bilinear, 3 bicubic)")
    size = square_size(processor.get("size", image_size), file, "size")
    if size != image_size:
        # HF would slice its position table to the new patch count rather than resample it.
        raise ValueError(f"{file}: size = {size} differs from config.json's vision_config.image_size = "
                         f"{image_size}: polymodal runs BLIP at the size its position table was trained for")
    normalize = processor.get("do_normalize", True)
    mean = processor.get("image_mean", list(defaults.image_mean)) if normalize else [0.0] * 3
    std = processor.get("image_std", list(defaults.image_std)) if normalize else [1.0] * 3
    return {"image_size": size, "resize_mode": "squash", "interpolation": RESAMPLE[resample], "mean": list(mean),
            "std": list(std)}


def _polymodal_config(directory: Path, hf: Any) -> dict[str, Any]:
    """The ``captioner`` config of the BLIP checkpoint in ``directory``."""
    file = directory / CONFIG
    vision, text = hf.vision_config, hf.text_config
    image_size = square_size(vision.image_size, file, "vision_config.image_size")
    for key in ("bos_token_id", "sep_token_id", "pad_token_id"):
        value = getattr(text, key)
        if not isinstance(value, int) or not 0 <= value < text.vocab_size:
            raise ValueError(f"{file}: text_config.{key} = {value!r} is not a token id of the "
                             f"{text.vocab_size}-token vocabulary")
    context_length = text.max_position_embeddings
    return {
        "family": "captioner",
        "description": f"Imported from the HF {ARCHITECTURE} checkpoint {directory.name}.",
        "image": {"type": "vit", "image_size": image_size,
                  "patch_size": square_size(vision.patch_size, file, "vision_config.patch_size"),
                  **hf_tower_options(vision, "vision_config", file, ACTIVATIONS), "pool": "cls",
                  "pre_norm": False, "patch_bias": True, "preprocess": _preprocess(directory, image_size)},
        "text": {"type": "decoder", "vocab_size": text.vocab_size, "context_length": context_length,
                 **hf_tower_options(text, "text_config", file, ACTIVATIONS), "dropout": text.hidden_dropout_prob,
                 "norm_position": "post", "embed_norm": True, "head_transform": True, "head_bias": True,
                 # Either flag ties: the whole model's ties its listed weights, the text model's its own.
                 "tie_embeddings": bool(hf.tie_word_embeddings or text.tie_word_embeddings)},
        # HF's generate() without arguments: greedy, 20 new tokens, EOS allowed at once.
        "generate": {"method": "greedy", "max_length": min(HF_NEW_TOKENS, context_length - 1), "min_length": 0},
        "bos_id": text.bos_token_id,
        "eos_id": text.sep_token_id,
        "pad_id": text.pad_token_id,
    }


def _read_tokenizer(directory: Path, config: dict[str, Any]) -> TextTokenizer:
    """The checkpoint's BERT word-piece tokenizer, truncating to the position table's length, padding with its
    ``[PAD]``, and framing texts as the decoder reads captions: ``[DEC] … [SEP]``."""
    from tokenizers import processors

    tokenizer = read_bert_tokenizer(directory, config["text"]["context_length"], config["text"]["vocab_size"])
    backend = tokenizer.tokenizer
    bos, eos = backend.id_to_token(config["bos_id"]), backend.id_to_token(config["eos_id"])
    if bos is None or eos is None:
        raise ValueError(f"{directory / 'tokenizer.json'}: no token with config.json's text_config.bos_token_id = "
                         f"{config['bos_id']} or sep_token_id = {config['eos_id']}")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, config["bos_id"]), (eos, config["eos_id"])])
    return tokenizer


def load_hf_blip(path_or_name: str | Path) -> ImportedCheckpoint:
    """Load an HF ``BlipForConditionalGeneration`` checkpoint as a polymodal ``captioner``.

    Args:
        path_or_name: a directory ``save_pretrained`` wrote (model, tokenizer, processor), or a hub name
            (``"Salesforce/blip-image-captioning-base"``) when the hub (or its local cache) can provide it.

    Returns:
        the model (eval mode; its config holds BLIP's decoder layout, special ids, greedy generation defaults
        and the image preprocessing) and the checkpoint's own tokenizer. ``model.generate(pixels,
        prompt_ids=tokenizer("a picture of")["input_ids"][0, 1:-1].tolist())`` continues a text prompt.

    Raises:
        ValueError: naming the file and key: not a checkpoint directory, not a BLIP captioner config, an option
            polymodal does not reproduce, a missing / extra / wrongly shaped tensor.
    """
    directory = hf_checkpoint_directory(path_or_name)
    config = _polymodal_config(directory, _hf_config(directory))
    state, file = read_hf_weights(directory)
    model = build_captioner(config, where=str(directory / CONFIG), for_loading=True)
    import_state(model, _table(config), state, file, ignored=_unused_keys(config["text"]["tie_embeddings"]))
    return ImportedCheckpoint(model.eval(), _read_tokenizer(directory, config))
