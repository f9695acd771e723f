"""Text → token ids, through HF ``tokenizers``.

One wrapper serves every case a user meets: a byte-level BPE trained on the training captions (from-scratch
text towers), a pretrained tower's own ``tokenizer.json`` (MiniLM's WordPiece) and an imported CLIP
checkpoint's BPE (``polymodal.interop``). Either way the tokenizer is saved as ``tokenizer.json`` beside the
checkpoint, so a checkpoint always carries the vocabulary it was trained on. The file also records the padding
token (the ``tokenizers`` library writes it), which is all that differs between these kinds at run time, so
reading one back needs no kind recorded beside it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from polymodal.io import atomic_path

PAD, BOS, EOS, UNK, MASK = "<pad>", "<bos>", "<eos>", "<unk>", "<mask>"
# OpenAI CLIP's start and end of text (its end token also pads in HF's CLIPTokenizer).
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# SentencePiece's end of text (T5's vocabulary, which SigLIP reads).
SPM_EOS = "</s>"


class TextTokenizer:
    """Tokenizes a batch into ``{"input_ids", "attention_mask"}`` tensors, truncated to ``context_length`` and
    right-padded to the batch's longest text (HF's ``padding="longest"``), or to ``context_length`` with
    ``pad_to_context``.

    Padding only to the longest text is exact: no real token attends to padding (every encoder masks it), and
    trailing padding shifts no position. It saves the text tower most of its work when captions are much
    shorter than the context (COCO captions average ~13 tokens against CLIP's 77).

    Args:
        tokenizer: an HF ``tokenizers.Tokenizer`` whose post-processor adds the special tokens the text tower
            expects (``<bos> … <eos>`` for our BPE, ``[CLS] … [SEP]`` for MiniLM).
        context_length: the longest a tokenized text may be; longer ones are truncated.
        pad_token: the token that pads; default: the one ``tokenizer`` already pads with (a saved file records
            it), else ``<pad>`` or ``[PAD]``.
        pad_to_context: pad every text to ``context_length`` (HF's ``padding="max_length"``), for a text tower
            that was trained so and pools a fixed position (SigLIP); default: what ``tokenizer`` already does
            (a saved file records it), else pad to the longest text.
    """

    def __init__(self, tokenizer: Tokenizer, context_length: int, pad_token: str | None = None,
                 pad_to_context: bool | None = None) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        self.tokenizer = tokenizer
        self.context_length = context_length
        if pad_token is None and tokenizer.padding is not None:
            pad_token = tokenizer.padding["pad_token"]
        if pad_to_context is None:
            pad_to_context = tokenizer.padding is not None and tokenizer.padding["length"] is not None
        self.pad_to_context = pad_to_context
        if pad_token is None:
            pad_token = PAD if tokenizer.token_to_id(PAD) is not None else "[PAD]"
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no padding token {pad_token!r} in its vocabulary")
        self.pad_id = pad_id
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right",
                                      length=context_length if pad_to_context else None)
        self.tokenizer.enable_truncation(max_length=context_length)

    @property
    def bos_id(self) -> int:
        """The id that starts a text (``<bos>``, BLIP's decoder start ``[DEC]`` (its BERT vocabulary also holds
        ``[CLS]``, which starts BLIP's encoder inputs, not captions), BERT's ``[CLS]`` or CLIP's
        ``<|startoftext|>``)."""
        return self._special_id(BOS, "[DEC]", "[CLS]", CLIP_BOS)

    @property
    def eos_id(self) -> int:
        """The id that ends a text (``<eos>``, BERT's ``[SEP]``, CLIP's ``<|endoftext|>`` or SentencePiece's
        ``</s>``)."""
        return self._special_id(EOS, "[SEP]", CLIP_EOS, SPM_EOS)

    def _special_id(self, *names: str) -> int:
        for name in names:
            if (token_id := self.tokenizer.token_to_id(name)) is not None:
                return token_id
        raise ValueError(f"the tokenizer has none of the special tokens {', '.join(names)}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, L)
        attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)  # (B, L)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @classmethod
    def train_bpe(
        cls, texts: Iterable[str], vocab_size: int = 4096, context_length: int = 32, min_frequency: int = 2
    ) -> "TextTokenizer":
        """Train a lower-cased byte-level BPE on ``texts`` (the training captions)."""
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[PAD, BOS, EOS, UNK, MASK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
        )
        return cls(tokenizer, context_length)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int | None = None,
                  pad_to_context: bool | None = None) -> "TextTokenizer":
        """Read a ``tokenizer.json``; ``context_length`` defaults to the length the file truncates to (a file
        :meth:`save` wrote records it), ``pad_to_context`` to the file's own padding."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises its own exception type for any malformed file
            raise ValueError(f"{path}: not a valid tokenizer.json ({error})") from None
        if context_length is None:
            if tokenizer.truncation is None:
                raise ValueError(f"{path} does not say how long a text may be: pass context_length")
            context_length = int(tokenizer.truncation["max_length"])
        return cls(tokenizer, context_length, pad_to_context=pad_to_context)

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` atomically (temp file + rename)."""
        with atomic_path(path) as tmp:
            self.tokenizer.save(str(tmp))
