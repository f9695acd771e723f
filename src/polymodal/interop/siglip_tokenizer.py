"""SigLIP's SentencePiece tokenizer (HF ``SiglipTokenizer``, read from ``spiece.model``) as a polymodal
:class:`~polymodal.data.tokenizers.TextTokenizer`, and written back as an HF tokenizer.

HF's ``SiglipTokenizer`` is Python around SentencePiece: it canonicalises a text (lower case, ASCII punctuation
removed, runs of whitespace made one space, ends stripped), lets SentencePiece segment it and appends ``</s>``.
Here the same steps become an ordinary ``tokenizers.Tokenizer`` (the canonicalisation as normalizers in front
of the SentencePiece model transformers' converter builds), so it saves as ``tokenizer.json`` and runs without
sentencepiece once converted. Texts are padded to the context length, as SigLIP's text tower was trained.

One difference is left, for texts that spell a special token themselves (``"a</s>b"``): after such a token HF's
Python starts the next word without SentencePiece's word-start mark, and it adds no second ``</s>`` to a text
that ends in one; here both go as everywhere else in a text.
"""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, normalizers, processors

from polymodal.data.tokenizers import TextTokenizer
from polymodal.interop.clip_tokenizer import write_tokenizer_json
from polymodal.io import write_json

__all__ = ["read_siglip_tokenizer", "write_siglip_tokenizer"]

SENTENCEPIECE_FILE, FAST_FILE, CONFIG_FILE = "spiece.model", "tokenizer.json", "tokenizer_config.json"


def _canonicalizer(lower_case: bool) -> list[normalizers.Normalizer]:
    """``SiglipTokenizer.canonicalize_text`` as normalizers (big_vision's text cleaning)."""
    steps = [normalizers.Lowercase()] if lower_case else []
    return steps + [normalizers.Replace(Regex(f"[{re.escape(string.punctuation)}]"), ""),
                    normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]


def _from_sentencepiece(hf_tokenizer: Any, config_file: Path) -> Tokenizer:
    """The ``tokenizers`` twin of an HF ``SiglipTokenizer``."""
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    if not getattr(hf_tokenizer, "legacy", True):
        raise ValueError(f"{config_file}: legacy = false is not supported (SiglipTokenizer's default, true, is)")
    proto = import_protobuf().ModelProto.FromString(hf_tokenizer.sp_model.serialized_model_proto())
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, [(piece.piece, piece.score) for piece in proto.pieces])
    if backend is None:
        raise ValueError(f"{config_file.parent / SENTENCEPIECE_FILE}: a SentencePiece model polymodal cannot convert")
    backend.normalizer = normalizers.Sequence([*_canonicalizer(hf_tokenizer.do_lower_case), backend.normalizer])
    # Special tokens written in a text stay whole, never normalised, spaces around them dropped (as HF adds them).
    backend.add_special_tokens([AddedToken(token, lstrip=True, rstrip=True, normalized=False, special=True)
                                for token in hf_tokenizer.all_special_tokens])
    eos = str(hf_tokenizer.eos_token)
    backend.post_processor = processors.TemplateProcessing(single=f"$A {eos}",
                                                           special_tokens=[(eos, hf_tokenizer.eos_token_id)])
    return backend


def read_siglip_tokenizer(directory: Path, context_length: int) -> TextTokenizer:
    """The tokenizer saved in an HF SigLIP directory (``spiece.model``, or the ``tokenizer.json`` that
    :func:`write_siglip_tokenizer` writes), padding every text to ``context_length`` with its own pad token."""
    from transformers import AutoTokenizer, SiglipTokenizer

    if not any((directory / name).is_file() for name in (SENTENCEPIECE_FILE, FAST_FILE)):
        raise ValueError(f"{directory / SENTENCEPIECE_FILE}: missing (nor {FAST_FILE}); an HF SigLIP checkpoint "
                         "directory needs its tokenizer (save it with SiglipTokenizer.save_pretrained)")
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if isinstance(hf_tokenizer, SiglipTokenizer):
        backend = _from_sentencepiece(hf_tokenizer, directory / CONFIG_FILE)
    elif getattr(hf_tokenizer, "backend_tokenizer", None) is not None:
        backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()
    else:
        raise ValueError(f"{directory / CONFIG_FILE}: tokenizer_class {type(hf_tokenizer).__name__} is not supported "
                         "(SiglipTokenizer, or a tokenizer.json)")
    if hf_tokenizer.pad_token is None:
        raise ValueError(f"{directory / CONFIG_FILE}: no pad_token; SigLIP pads every text to its context length")
    return TextTokenizer(backend, context_length, pad_token=str(hf_tokenizer.pad_token), pad_to_context=True)


def write_siglip_tokenizer(tokenizer: TextTokenizer, directory: Path) -> None:
    """Write ``tokenizer`` as HF's ``AutoTokenizer`` (and so ``SiglipProcessor``) reads it: ``tokenizer.json`` +
    ``tokenizer_config.json`` naming the end and padding tokens and the context length."""
    backend = write_tokenizer_json(tokenizer, directory)
    write_json(directory / CONFIG_FILE, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": backend.id_to_token(tokenizer.eos_id),
        "pad_token": backend.id_to_token(tokenizer.pad_id),
        "model_max_length": tokenizer.context_length,
    })
