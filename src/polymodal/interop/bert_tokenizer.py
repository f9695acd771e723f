"""BERT's word-piece tokenizer, as HF saves it beside a checkpoint (``tokenizer.json``, or only ``vocab.txt``), as a
polymodal :class:`~polymodal.data.tokenizers.TextTokenizer`.

The result is an ordinary ``tokenizers.Tokenizer`` (normaliser, word pieces, ``[CLS] … [SEP]`` framing, decoder)
with its padding token recorded, so ``save_model`` / ``load_model`` carry it like any other polymodal tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from polymodal.data.tokenizers import TextTokenizer

__all__ = ["read_bert_tokenizer"]


def read_bert_tokenizer(directory: Path, context_length: int, vocab_size: int) -> TextTokenizer:
    """The BERT tokenizer saved in an HF checkpoint directory, truncating to ``context_length`` (the text
    tower's position table) and padding with its own ``[PAD]``.

    Raises:
        ValueError: naming the file: no tokenizer saved, or more tokens than the model's ``vocab_size``.
    """
    from tokenizers import Tokenizer
    from transformers import BertTokenizer

    file = directory / "tokenizer.json"
    if not any((directory / name).is_file() for name in (file.name, "vocab.txt")):
        raise ValueError(f"{file}: missing (nor vocab.txt); the checkpoint directory needs its tokenizer (save it "
                         "with the processor's or tokenizer's save_pretrained)")
    hf_tokenizer = BertTokenizer.from_pretrained(str(directory))
    # A copy through its JSON form, without the padding and truncation HF sets per call.
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    tokenizer = TextTokenizer(backend, context_length, pad_token=str(hf_tokenizer.pad_token))
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"{file}: {tokenizer.vocab_size} tokens, more than config.json's vocab_size = {vocab_size}")
    return tokenizer
