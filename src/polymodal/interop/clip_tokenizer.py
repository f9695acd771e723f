"""CLIP's byte-level BPE (OpenAI's, as HF's ``CLIPTokenizer`` and open_clip's ``SimpleTokenizer`` apply it) as a
polymodal :class:`~polymodal.data.tokenizers.TextTokenizer`, read from an HF directory or open_clip's bundled
merges, and written back as an HF tokenizer.

The result is an ordinary ``tokenizers.Tokenizer`` with the padding token recorded in it, so ``save_model`` /
``load_model`` carry it like any other polymodal tokenizer.
"""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

from tokenizers import Tokenizer, decoders

from polymodal.data.tokenizers import CLIP_BOS, CLIP_EOS, TextTokenizer
from polymodal.io import atomic_path, write_json

__all__ = ["open_clip_tokenizer", "read_hf_tokenizer", "write_hf_tokenizer", "write_tokenizer_json"]

# The end-of-word marker of CLIP's BPE vocabulary: "cat</w>" is the word "cat", "cat" a word's prefix.
END_OF_WORD = "</w>"
# OpenAI's merges file holds more merges than CLIP's vocabulary uses: 49152 tokens less the 256 bytes and the
# two specials give its 48894 merges (the first line is a version header).
OPEN_CLIP_MERGES = 49152 - 256 - 2


def _wrap(tokenizer: Tokenizer, context_length: int, pad_token: str) -> TextTokenizer:
    """``tokenizer`` with a decoder that turns end-of-word markers back into spaces (HF does this in Python,
    outside the ``tokenizers`` object, so its file lacks it)."""
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(END_OF_WORD, "Ġ"), decoders.ByteLevel(), decoders.Strip(" ", 0, 1)])
    return TextTokenizer(tokenizer, context_length, pad_token=pad_token)


def read_hf_tokenizer(directory: Path, context_length: int) -> TextTokenizer:
    """The ``CLIPTokenizer`` saved in an HF checkpoint directory (``tokenizer.json``, or ``vocab.json`` +
    ``merges.txt``), truncating to ``context_length`` and padding with its own pad token."""
    from transformers import CLIPTokenizer

    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise ValueError(f"{directory / 'tokenizer.json'}: missing; an HF CLIP checkpoint directory needs its "
                         "tokenizer (save it with CLIPTokenizer.save_pretrained)")
    hf_tokenizer = CLIPTokenizer.from_pretrained(str(directory))
    # A copy through its JSON form: the backend object carries settings of HF's own padding calls.
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return _wrap(backend, context_length, str(hf_tokenizer.pad_token))


@functools.cache
def _open_clip_bpe() -> str:
    """open_clip's BPE as ``tokenizers`` JSON, built once per process (over 48,894 merges it takes seconds)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:OPEN_CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    # OpenAI's vocabulary order: the 256 byte symbols, the same as word ends, one token per merge, the specials.
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [symbol + END_OF_WORD for symbol in symbols] + ["".join(merge) for merge in merges]
    vocab += [CLIP_BOS, CLIP_EOS]
    hf_tokenizer = CLIPTokenizer(vocab={token: index for index, token in enumerate(vocab)}, merges=merges)
    return hf_tokenizer.backend_tokenizer.to_str()


def open_clip_tokenizer(context_length: int, pad_id: int = 0) -> TextTokenizer:
    """open_clip's default tokenizer (OpenAI's BPE from the merges file open_clip ships), padding with
    ``pad_id`` as open_clip does (0)."""
    backend = Tokenizer.from_str(_open_clip_bpe())
    return _wrap(backend, context_length, backend.id_to_token(pad_id))


def write_tokenizer_json(tokenizer: TextTokenizer, directory: Path) -> Tokenizer:
    """Write ``directory/tokenizer.json`` as HF's tokenizer classes read it, and return what was written: a copy of
    ``tokenizer``'s backend without padding and truncation, which HF applies per call from its own arguments."""
    backend = Tokenizer.from_str(tokenizer.tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    with atomic_path(directory / "tokenizer.json") as tmp:
        backend.save(str(tmp))
    return backend


def write_hf_tokenizer(tokenizer: TextTokenizer, directory: Path) -> None:
    """Write ``tokenizer`` as HF's ``CLIPTokenizer`` reads it: ``tokenizer.json`` + ``tokenizer_config.json``."""
    backend = write_tokenizer_json(tokenizer, directory)
    eos_token = backend.id_to_token(tokenizer.eos_id)
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": backend.id_to_token(tokenizer.bos_id),
        "eos_token": eos_token,
        "pad_token": backend.id_to_token(tokenizer.pad_id),
        "unk_token": eos_token,  # CLIP's convention: its BPE covers every byte, so unknown never happens
        "model_max_length": tokenizer.context_length,
    })
