"""One modality's config section → a built encoder (and, for images, the preprocessing it expects).

A model config holds one section per modality it uses (``image``, ``text``; later ``audio``), each naming the
encoder ``type`` and that encoder's constructor arguments, plus four tower options every family honours:

- ``frozen: true`` locks the tower (:func:`polymodal.encoders.base.freeze`), e.g. a LiT-style pretrained tower;
- ``grad_checkpointing: true`` recomputes the tower's transformer blocks in the backward pass;
- ``context_length`` (text): how many tokens the tokenizer pads to (also a constructor argument of the
  transformer tower, which sizes its position table by it);
- ``preprocess`` (image): fields of :class:`~polymodal.data.transforms.ImagePreprocess` that replace the
  encoder type's defaults, e.g. an imported checkpoint's own ``mean``, ``std``, ``resize_size`` and
  ``interpolation``.

Keys are checked against the encoder's constructor signature, so a typo or a wrong type is an error that names
the key and the config, not a ``TypeError`` from deep inside.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import ImagePreprocess
from polymodal.encoders.base import freeze
from polymodal.typed_config import ConfigError, check_call_arguments, check_value, dataclass_from_mapping

__all__ = ["BuiltEncoder", "ENCODER_TYPES", "TOWER_OPTIONS", "build_encoder", "build_tokenizer"]

# Options of the tower around the encoder, not arguments of its constructor.
TOWER_OPTIONS = ("type", "frozen", "grad_checkpointing", "preprocess", "weights_from")


@dataclass
class BuiltEncoder:
    """An encoder and what its inputs must look like.

    Attributes:
        encoder: maps the modality's batch to an ``EncoderOutput``; attribute ``width`` = pooled size.
        preprocess: for image encoders, the pixels it expects (size, mean, std); None for other modalities.
        context_length: for text encoders, the tokenizer's padded length; None for other modalities.
    """

    encoder: nn.Module
    preprocess: ImagePreprocess | None = None
    context_length: int | None = None


def _arguments(constructor: Callable[..., Any], spec: dict[str, Any], where: str, prefix: str,
               builder_keys: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``spec`` into checked constructor arguments and the builder's own required keys."""
    own = {}
    for key, annotation in (builder_keys or {}).items():
        if key not in spec:
            raise ConfigError(f"{where}: missing key {prefix}{key}")
        check_value(annotation, spec[key], prefix + key, where)
        own[key] = spec[key]
    arguments = {key: value for key, value in spec.items() if key not in own}
    check_call_arguments(constructor, arguments, where, prefix)
    return arguments, own


def _vit(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.image_vit import ViTImageEncoder

    arguments, _ = _arguments(ViTImageEncoder.__init__, spec, where, prefix)
    encoder = ViTImageEncoder(**arguments)
    return BuiltEncoder(encoder, ImagePreprocess(encoder.image_size[0]))


def _resnet(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.image_cnn import ResNetImageEncoder

    arguments, own = _arguments(ResNetImageEncoder.__init__, spec, where, prefix, {"image_size": int})
    return BuiltEncoder(ResNetImageEncoder(**arguments), ImagePreprocess(own["image_size"]))


def _efficientnet_lite0(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.pretrained import EfficientNetLite0Tower

    def options(pretrained: bool = True, feature_stage: int | None = None) -> None:
        """``pretrained``: load the packaged ImageNet weights (else random init, same architecture);
        ``feature_stage``: tokens from this block stage instead of the head's map."""

    arguments, _ = _arguments(options, spec, where, prefix)
    try:
        tower = EfficientNetLite0Tower(frozen=False, **arguments)
    except ValueError as error:
        raise ConfigError(f"{where}: {prefix}{error}") from None
    return BuiltEncoder(tower, ImagePreprocess(tower.image_size, tower.mean, tower.std))


def _transformer(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.text_transformer import TransformerTextEncoder

    arguments, _ = _arguments(TransformerTextEncoder.__init__, spec, where, prefix)
    encoder = TransformerTextEncoder(**arguments)
    return BuiltEncoder(encoder, context_length=encoder.context_length)


def _embeddings(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.text_embeddings import EmbeddingTextEncoder

    arguments, _ = _arguments(EmbeddingTextEncoder.__init__, spec, where, prefix)
    encoder = EmbeddingTextEncoder(**arguments)
    return BuiltEncoder(encoder, context_length=encoder.context_length)


def _gru(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.text_rnn import GRUTextEncoder

    arguments, own = _arguments(GRUTextEncoder.__init__, spec, where, prefix, {"context_length": int})
    return BuiltEncoder(GRUTextEncoder(**arguments), context_length=own["context_length"])


def _hf_text(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.hf_text import HFTextTower

    arguments, own = _arguments(HFTextTower.__init__, spec, where, prefix, {"context_length": int})
    return BuiltEncoder(HFTextTower(**arguments), context_length=own["context_length"])


def _minilm(spec: dict[str, Any], where: str, prefix: str) -> BuiltEncoder:
    from polymodal.encoders.pretrained import MiniLMTextTower

    _, own = _arguments(lambda: None, spec, where, prefix, {"context_length": int})
    return BuiltEncoder(MiniLMTextTower(frozen=False), context_length=own["context_length"])


# modality → encoder type → builder; the types of one modality share its input contract.
ENCODER_TYPES: dict[str, dict[str, Callable[[dict[str, Any], str, str], BuiltEncoder]]] = {
    "image": {"vit": _vit, "resnet": _resnet, "efficientnet_lite0": _efficientnet_lite0},
    "text": {"transformer": _transformer, "embeddings": _embeddings, "gru": _gru, "minilm": _minilm,
             "hf_text": _hf_text},
}


def build_encoder(modality: str, spec: Mapping[str, Any], where: str = "model config") -> BuiltEncoder:
    """Build the ``modality`` encoder described by ``spec`` (the config section of that modality).

    Args:
        where: names the config in errors (a preset file, a checkpoint's ``config.json``).

    Raises:
        ConfigError: an unknown modality or type, an unknown or missing key, or a value of the wrong type.
    """
    if modality not in ENCODER_TYPES:
        raise ConfigError(f"{where}: no encoders for modality {modality!r}; known: {', '.join(ENCODER_TYPES)}")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: {modality} must be a mapping with a 'type', got {spec!r}")
    kinds = ENCODER_TYPES[modality]
    kind = spec.get("type")
    if kind == "checkpoint":
        raise ConfigError(f"{where}: {modality}.type 'checkpoint' is resolved when the whole model is built: use "
                          "polymodal.interop.build_model_with_towers (runs do)")
    if kind not in kinds:
        raise ConfigError(f"{where}: {modality}.type = {kind!r} is not one of: {', '.join([*kinds, 'checkpoint'])}")
    for option in ("frozen", "grad_checkpointing"):
        if option in spec:
            check_value(bool, spec[option], f"{modality}.{option}", where)
    arguments = {key: value for key, value in spec.items() if key not in TOWER_OPTIONS}
    built = kinds[kind](arguments, where, f"{modality}.")
    if "preprocess" in spec:
        built.preprocess = _override_preprocess(built.preprocess, spec["preprocess"], modality, where)
    if spec.get("grad_checkpointing", False):
        if not hasattr(built.encoder, "set_grad_checkpointing"):
            # The user counts on the memory saving: refusing beats a silent no-op.
            raise ConfigError(f"{where}: {modality}.grad_checkpointing: {modality}.type {kind!r} does not support "
                              "gradient checkpointing (only the transformer towers do: image 'vit', text "
                              "'transformer')")
        built.encoder.set_grad_checkpointing(True)
    if spec.get("frozen", False):
        freeze(built.encoder)
    return built


def _override_preprocess(default: ImagePreprocess | None, override: Any, modality: str,
                         where: str) -> ImagePreprocess:
    """``default`` with the fields a ``preprocess`` section sets, checked like any other config key."""
    if default is None:
        raise ConfigError(f"{where}: {modality}.preprocess: {modality} towers read no images")
    check_value(dict, override, f"{modality}.preprocess", where)
    merged = dataclass_from_mapping(ImagePreprocess, {**asdict(default), **override}, where, f"{modality}.preprocess.")
    # Tuples keep the frozen dataclass hashable and equal to one built in code.
    return replace(merged, mean=tuple(merged.mean), std=tuple(merged.std))


def build_tokenizer(text_spec: Mapping[str, Any], corpus: Callable[[], Iterable[str]],
                    where: str = "model config") -> TextTokenizer:
    """The tokenizer a text tower reads: a pretrained tower brings its own file; a from-scratch tower gets a
    byte-level BPE of ``text.vocab_size`` trained on ``corpus()`` (the training texts; called only then)."""
    kind = text_spec.get("type")
    context_length = text_spec.get("context_length")
    check_value(int, context_length, "text.context_length", where, {"min": 2})
    if kind == "checkpoint" or "weights_from" in text_spec:
        raise ConfigError(f"{where}: a checkpoint text tower reads its checkpoint's tokenizer: use "
                          "polymodal.interop.tower_tokenizer (runs do)")
    if kind == "hf_text":
        raise ConfigError(f"{where}: text.type 'hf_text' brings no tokenizer of its own: take the tower from its "
                          "checkpoint with text.type 'checkpoint' and text.path")
    if kind == "minilm":
        from polymodal.encoders.pretrained import minilm_tokenizer_file

        # The shipped file pads every text to 128; MiniLM masks padding and mean-pools real tokens, so padding
        # to the batch's longest text gives the same embeddings for a fraction of the work (a query: 5 tokens).
        return TextTokenizer.from_file(minilm_tokenizer_file(), context_length, pad_to_context=False)
    if "vocab_size" not in text_spec:
        raise ConfigError(f"{where}: missing key text.vocab_size")
    check_value(int, text_spec["vocab_size"], "text.vocab_size", where, {"min": 8})
    return TextTokenizer.train_bpe(corpus(), vocab_size=text_spec["vocab_size"], context_length=context_length)
